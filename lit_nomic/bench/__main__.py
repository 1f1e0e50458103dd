"""``python -m lit_nomic.bench``: see :mod:`lit_nomic.bench.cli`."""

from lit_nomic.bench.cli import main

raise SystemExit(main())
