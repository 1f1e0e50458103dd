"""Benchmarks that print ratios measured side by side: ``python -m lit_nomic.bench --help``.

``timing`` (interleaved repetitions, machine facts), ``results`` (JSON files), one module per
benchmark (``moe``, ``encoder``, ``train``, ``export``), ``report`` (markdown), ``profile``
(hotspots), ``allocator`` (opt-in glibc malloc tuning, ``--tune-malloc``), ``cli`` (jsonargparse).
"""
