"""``lit-nomic filter`` and ``lit-nomic mine``: thin command wrappers (heavy imports inside).

The options both commands take (how the data is read, searched and embedded, and how the work is
split over workers) are defined once, with their docs, as the fields of :class:`CurationOptions`.
Each command names its own options and takes the shared ones as ``**options``, which it passes to
``CurationOptions(**options)``; jsonargparse follows that call, so the shared options are plain flags
of both commands (``--batch_size``, ``--workers`` ...) and plain keys of their YAML configs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from lit_nomic.sweeps.launch import SlurmOptions

SearchChoice = Literal["auto", "faiss", "torch", "faiss-ivf"]


def _fail(command: str, err: Exception) -> SystemExit:
    print(f"lit-nomic {command}: error: {err}", file=sys.stderr)
    return SystemExit(2)


@dataclass(frozen=True, kw_only=True)
class CurationOptions:
    """The options that ``lit-nomic filter`` and ``lit-nomic mine`` share.

    Args:
        split: the BEIR qrels split whose positive pairs are filtered or mined for.
        source: with a mixture file, only these entries (an entry name selects its languages too).
        query_column: JSONL query column (default ``query``).
        document_column: JSONL document column (default ``document`` or ``pos``).
        on_error: for pair data: ``raise`` at the first bad line (naming file:line) or ``skip`` bad
            lines (counted per source in the report).
        data_root: the data root (default ``$LIT_NOMIC_DATA``).
        search: ``faiss`` or ``torch`` (exact, same result), ``auto`` (faiss when installed) or
            ``faiss-ivf`` (approximate; for very large chunks or corpora).
        ivf_nlist: IVF lists (faiss-ivf).
        ivf_nprobe: IVF lists probed (faiss-ivf).
        shard: ``i/n``: do only every n-th unit starting at i (n workers sharing one folder); the
            units are filter's chunks and mine's corpus shards (the mine worker that finds every
            shard embedded writes the triplets).
        batch_size: texts per forward pass (batches of similar lengths).
        max_length: truncate texts to this many tokens (default: the model's limit).
        query_prefix: override the model's query prefix.
        document_prefix: override the model's document prefix.
        in_memory_rows: embed larger units (chunks, corpus shards) block by block into
            memory-mapped files.
        workers: run the independent units (chunks / corpus shards) in this many worker processes
            sharing ``output`` (``--shard i/n`` each), then merge here; a re-run resumes.
        launcher: ``local`` (subprocesses here, threads split, one visible GPU each) or ``slurm``
            (a submitit job array of ``workers`` one-GPU tasks plus a merge job depending on it).
        slurm: partition, account, qos, time_min, gpus_per_node (0: CPU jobs, else 1 GPU per
            worker), cpus_per_task, mem_gb, constraint of the SLURM jobs.
        dry_run: print the workers' commands (local) or write runnable sbatch scripts to
            ``OUTPUT/workers/`` (slurm); nothing runs.
    """

    # how the data is read
    split: str = "train"
    source: list[str] | None = None
    query_column: str | None = None
    document_column: str | None = None
    on_error: Literal["raise", "skip"] = "raise"
    data_root: str | None = None
    # how it is searched, and which units this process does
    search: SearchChoice = "auto"
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    shard: str | None = None
    # how texts are embedded
    batch_size: int = 64
    max_length: int | None = None
    query_prefix: str | None = None
    document_prefix: str | None = None
    in_memory_rows: int = 200_000
    # how the units are run (lit_nomic.curation.launch.LAUNCH_ARGS: not in the workers' config)
    workers: int = 1
    launcher: Literal["local", "slurm"] = "local"
    slurm: SlurmOptions | None = None
    dry_run: bool = False

    def search_settings(self) -> dict[str, Any]:
        """The fields of :class:`~lit_nomic.curation.common.SearchSettings`."""
        return {
            "search": self.search,
            "ivf_nlist": self.ivf_nlist,
            "ivf_nprobe": self.ivf_nprobe,
            "shard": self.shard,
        }

    def pair_specs(self, data: str) -> list:
        """The sources that ``data`` names, read with these options."""
        from lit_nomic.curation.inputs import pair_specs

        return pair_specs(
            data,
            source=self.source,
            split=self.split,
            query_column=self.query_column,
            document_column=self.document_column,
            root=self.data_root,
        )

    def pair_sources(self, specs: list) -> list:
        from lit_nomic.curation.inputs import open_pair_sources

        return open_pair_sources(specs, self.data_root, self.on_error)

    def embedder(self, model: str) -> tuple[Any, dict]:
        """Load ``model``; return its encode settings and its identity (with the prefixes used)."""
        from lit_nomic.cli import load_any_model
        from lit_nomic.curation.common import EncodeSettings, encoder_identity

        embedder = load_any_model(model)
        if self.max_length:
            embedder.max_seq_length = self.max_length
        qp = embedder.query_prefix if self.query_prefix is None else self.query_prefix
        dp = embedder.document_prefix if self.document_prefix is None else self.document_prefix
        settings = EncodeSettings(
            embedder,
            qp,
            dp,
            batch_size=self.batch_size,
            in_memory_rows=self.in_memory_rows,
            show_progress=True,
        )
        return settings, encoder_identity(embedder, qp, dp)

    def launch(self, command: str, own: dict[str, Any]) -> bool:
        """Start ``workers`` shard workers when asked to; True when this process must now merge
        (or, with one local worker, simply do the work itself). ``own``: the command's own arguments."""
        if self.workers == 1 and self.launcher == "local":
            return True
        from lit_nomic.curation.common import CurationError
        from lit_nomic.curation.launch import launch_workers

        args = {**own, **{f.name: getattr(self, f.name) for f in fields(self)}}
        try:
            return launch_workers(command, args, self.workers, self.launcher, self.slurm, self.dry_run)
        except CurationError as err:
            raise _fail(command, err) from err


_BAD_INPUT = (ValueError, OSError)  # CurationError, DataFormatError, FileNotFoundError among them


def _finish(command: str, report: dict | None, unfinished: str, totals: Callable[[dict], str]) -> dict | None:
    """Print what the run left: ``unfinished`` (a shard worker's units done, no report yet) or the
    ``totals`` line of the report; return the report."""
    print(f"{command}: {unfinished if report is None else totals(report['total'])}")
    return report


def filter_pairs(
    model: str,
    data: str,
    output: str,
    top_k: int = 2,
    chunk_size: int = 1_000_000,
    histogram_depth: int = 10,
    **options: Any,
) -> dict | None:
    """Consistency filtering: keep a pair when its own document ranks in its query's top-k among the
    documents of its chunk (Nomic Embed v2: chunks of 1M pairs, top-2).

    Rank = 1 + distinct chunk documents scoring strictly higher than the pair's own document; other
    positives of the same query are not counted and ties count in the pair's favour. Writes kept
    pairs as JSONL shards in training format (``OUTPUT/chunks/<source>/chunk-*.jsonl``), per-pair
    ranks, ``report.json`` (kept/dropped per source and language, rank histogram, skipped bad input),
    ``kept_ids.txt`` and ``mixture.yaml`` (the kept data as a training mixture). A killed run resumes
    at the next unfinished chunk; a folder made with other settings is refused.

    Args:
        model: the embedder: our model folder, a packaged name (``all-minilm-l6-v2``), a
            sentence-transformers folder or a training checkpoint (read as data only).
        data: a mixture file (YAML/JSON; ``per_language`` entries expanded), a BEIR folder (its
            ``split`` qrels) or JSONL pairs (a file, folder of shards or glob), as given or under
            the data root.
        output: the output folder.
        top_k: keep pairs whose own document ranks <= top_k.
        chunk_size: pairs per chunk (each source is chunked on its own).
        histogram_depth: ranks up to this are reported one by one, deeper ones as ``>depth``.
        options: the options shared with ``lit-nomic mine`` (:class:`CurationOptions`).
    """
    own = {k: v for k, v in locals().items() if k != "options"}
    opts = CurationOptions(**options)
    if not opts.launch("filter", own):
        return None
    from lit_nomic.curation.filter import FilterSettings, consistency_filter

    try:
        settings = FilterSettings(
            top_k=top_k, chunk_size=chunk_size, histogram_depth=histogram_depth, **opts.search_settings()
        )
        settings.check()
        specs = opts.pair_specs(data)
        sources = opts.pair_sources(specs)
        enc, ident = opts.embedder(model)
        result = consistency_filter(specs, sources, enc, output, settings, model_identity=ident)
    except _BAD_INPUT as err:
        raise _fail("filter", err) from err
    return _finish(
        "filter",
        result.report,
        f"{result.done_chunks} of {result.total_chunks} chunks done in {output}",
        lambda t: (
            f"kept {t['kept']} of {t['pairs']} pairs ({t['dropped']} dropped, "
            f"{t['skipped_bad_input']} bad lines skipped) -> {output}/mixture.yaml"
        ),
    )


def mine(
    model: str,
    data: str,
    output: str,
    corpus: str | None = None,
    num_negatives: int = 7,
    min_negatives: int | None = None,
    candidates: int = 100,
    relative_margin: float | None = 0.95,
    absolute_margin: float | None = None,
    window: str | None = None,
    seed: int = 0,
    corpus_shard_size: int = 1_000_000,
    **options: Any,
) -> dict | None:
    """Hard-negative mining with a teacher: for each (query, positive), retrieve ``candidates``
    documents, drop every known positive of the query, drop those scoring above
    ``relative_margin x positive score`` (Nomic Embed v2: 0.95) or above ``positive - absolute_margin``,
    keep ``num_negatives`` (the top ones, or sampled from ``window``) and drop pairs left with fewer
    than ``min_negatives``. Writes ``OUTPUT/triplets.jsonl`` (query, pos, neg, teacher scores;
    readable by the training reader with ``num_negatives``), ``report.json`` and ``mixture.yaml``.

    Args:
        model: the teacher: our model folder, a packaged name, a sentence-transformers folder or a
            training checkpoint.
        data: a BEIR folder (pairs = positive qrels of ``split``; known positives = positive qrels of
            every split; corpus = its corpus.jsonl), or pair data as for ``lit-nomic filter``.
        output: the output folder.
        corpus: for pair data, a corpus JSONL (``_id``/``id``, ``text``, optional ``title``);
            default: the distinct positives of the pairs.
        num_negatives: negatives per pair.
        min_negatives: drop pairs with fewer (default: num_negatives).
        candidates: teacher search depth (after removing known positives).
        relative_margin: drop candidates scoring above this fraction of the positive's score (None: off).
        absolute_margin: drop candidates scoring above the positive's score minus this (None: off).
        window: ``a:b``: sample the negatives from ranks a..b (1-based) of the remaining candidates
            instead of taking the top ones.
        seed: seed of the window sampling.
        corpus_shard_size: documents per corpus embedding file (the unit of ``--shard``).
        options: the options shared with ``lit-nomic filter`` (:class:`CurationOptions`).
    """
    own = {k: v for k, v in locals().items() if k != "options"}
    opts = CurationOptions(**options)
    if not opts.launch("mine", own):
        return None
    from lit_nomic.curation.common import CurationError
    from lit_nomic.curation.inputs import _find
    from lit_nomic.curation.mine import MineSettings, beir_mine_input, mine_negatives, pairs_mine_input
    from lit_nomic.data.formats import is_beir_folder

    try:
        win = None
        if window:
            try:
                a, b = (int(x) for x in window.split(":"))
            except ValueError:
                raise CurationError(f"--window must be a:b (1-based ranks), got {window!r}") from None
            win = (a, b)
        settings = MineSettings(
            num_negatives=num_negatives,
            min_negatives=min_negatives,
            candidates=candidates,
            relative_margin=relative_margin,
            absolute_margin=absolute_margin,
            window=win,
            seed=seed,
            corpus_shard_size=corpus_shard_size,
            **opts.search_settings(),
        )
        settings.check()
        found = _find(data, opts.data_root)
        if found is not None and found.is_dir() and is_beir_folder(found) and not opts.source:
            if corpus is not None:
                raise CurationError("--corpus is for pair data; a BEIR folder brings its corpus.jsonl")
            inputs = beir_mine_input(found, opts.split)
        else:
            specs = opts.pair_specs(data)
            inputs = pairs_mine_input(specs, opts.pair_sources(specs), corpus)
        enc, ident = opts.embedder(model)
        result = mine_negatives(inputs, enc, output, settings, model_identity=ident)
    except _BAD_INPUT as err:
        raise _fail("mine", err) from err
    return _finish(
        "mine",
        result.report,
        f"{result.done_shards} of {result.total_shards} corpus shards embedded in {output}",
        lambda t: (
            f"wrote {t.get('written', 0)} triplets of {t['pairs']} pairs "
            f"({t.get('dropped_too_few_negatives', 0)} dropped with too few negatives) -> {output}/triplets.jsonl"
        ),
    )
