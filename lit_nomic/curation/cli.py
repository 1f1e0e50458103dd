"""``lit-nomic filter`` and ``lit-nomic mine``: thin command wrappers (heavy imports inside)."""

from __future__ import annotations

import sys
from typing import Any, Literal

from lit_nomic.sweeps.launch import SlurmOptions

SearchChoice = Literal["auto", "faiss", "torch", "faiss-ivf"]


def _embedder(
    model: str, batch_size: int, max_length: int | None, query_prefix, document_prefix, progress=True
):
    from lit_nomic.cli import load_any_model
    from lit_nomic.curation.common import EncodeSettings, encoder_identity

    embedder = load_any_model(model)
    if max_length:
        embedder.max_seq_length = max_length
    qp = embedder.query_prefix if query_prefix is None else query_prefix
    dp = embedder.document_prefix if document_prefix is None else document_prefix
    settings = EncodeSettings(embedder, qp, dp, batch_size=batch_size, show_progress=progress)
    return settings, encoder_identity(embedder, qp, dp)


def _search(search: str, ivf_nlist: int, ivf_nprobe: int, shard: str | None) -> dict:
    """The options of :class:`~lit_nomic.curation.common.SearchSettings`, shared by both commands."""
    return {"search": search, "ivf_nlist": ivf_nlist, "ivf_nprobe": ivf_nprobe, "shard": shard}


def _fail(command: str, err: Exception) -> SystemExit:
    print(f"lit-nomic {command}: error: {err}", file=sys.stderr)
    return SystemExit(2)


def _launch(command: str, args: dict[str, Any]) -> bool:
    """Start ``args["workers"]`` shard workers when asked to; True when this process must now merge
    (or, with one local worker, simply do the work itself)."""
    if args["workers"] == 1 and args["launcher"] == "local":
        return True
    from lit_nomic.curation.common import CurationError
    from lit_nomic.curation.launch import launch_workers

    try:
        return launch_workers(
            command, args, args["workers"], args["launcher"], args["slurm"], args["dry_run"]
        )
    except CurationError as err:
        raise _fail(command, err) from err


_LAUNCH_DOC = """
        workers: run the independent units (chunks / corpus shards) in this many worker processes
            sharing ``output`` (``--shard i/n`` each), then merge here; a re-run resumes.
        launcher: ``local`` (subprocesses here, threads split, one visible GPU each) or ``slurm``
            (a submitit job array of ``workers`` one-GPU tasks plus a merge job depending on it).
        slurm: partition, account, qos, time_min, gpus_per_node (0: CPU jobs, else 1 GPU per
            worker), cpus_per_task, mem_gb, constraint of the SLURM jobs.
        dry_run: print the workers' commands (local) or write runnable sbatch scripts to
            ``OUTPUT/workers/`` (slurm); nothing runs.
"""


def filter_pairs(
    model: str,
    data: str,
    output: str,
    source: list[str] | None = None,
    split: str = "train",
    query_column: str | None = None,
    document_column: str | None = None,
    top_k: int = 2,
    chunk_size: int = 1_000_000,
    histogram_depth: int = 10,
    search: SearchChoice = "auto",
    ivf_nlist: int = 1024,
    ivf_nprobe: int = 32,
    shard: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    in_memory_rows: int = 200_000,
    on_error: Literal["raise", "skip"] = "raise",
    data_root: str | None = None,
    workers: int = 1,
    launcher: Literal["local", "slurm"] = "local",
    slurm: SlurmOptions | None = None,
    dry_run: bool = False,
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
        source: with a mixture file, only these entries (an entry name selects its languages too).
        split: the BEIR qrels split.
        query_column: JSONL query column (default ``query``).
        document_column: JSONL document column (default ``document`` or ``pos``).
        top_k: keep pairs whose own document ranks <= top_k.
        chunk_size: pairs per chunk (each source is chunked on its own).
        histogram_depth: ranks up to this are reported one by one, deeper ones as ``>depth``.
        search: ``faiss`` or ``torch`` (exact, same result), ``auto`` (faiss when installed) or
            ``faiss-ivf`` (approximate; for very large chunks).
        ivf_nlist: IVF lists (faiss-ivf).
        ivf_nprobe: IVF lists probed (faiss-ivf).
        shard: ``i/n``: process only every n-th chunk starting at i (n workers, one folder).
        batch_size: texts per forward pass (batches of similar lengths).
        max_length: truncate texts to this many tokens (default: the model's limit).
        query_prefix: override the model's query prefix.
        document_prefix: override the model's document prefix.
        in_memory_rows: embed larger chunks block by block into memory-mapped files.
        on_error: ``raise`` at the first bad line (naming file:line) or ``skip`` bad lines (counted
            per source in the report).
        data_root: the data root (default ``$LIT_NOMIC_DATA``).
    """  # the launch options' docs are appended below
    if not _launch("filter", dict(locals())):
        return None
    from lit_nomic.curation.common import CurationError
    from lit_nomic.curation.filter import FilterSettings, consistency_filter
    from lit_nomic.curation.inputs import open_pair_sources, pair_specs
    from lit_nomic.data.records import DataFormatError

    try:
        settings = FilterSettings(
            top_k=top_k,
            chunk_size=chunk_size,
            histogram_depth=histogram_depth,
            **_search(search, ivf_nlist, ivf_nprobe, shard),
        )
        settings.check()
        specs = pair_specs(
            data,
            source=source,
            split=split,
            query_column=query_column,
            document_column=document_column,
            root=data_root,
        )
        sources = open_pair_sources(specs, data_root, on_error)
        enc, ident = _embedder(model, batch_size, max_length, query_prefix, document_prefix)
        enc.in_memory_rows = in_memory_rows
        result = consistency_filter(specs, sources, enc, output, settings, model_identity=ident)
    except (CurationError, DataFormatError, ValueError, FileNotFoundError, OSError) as err:
        raise _fail("filter", err) from err
    if result.report is None:
        print(f"filter: {result.done_chunks} of {result.total_chunks} chunks done in {output}")
        return None
    t = result.report["total"]
    print(
        f"filter: kept {t['kept']} of {t['pairs']} pairs ({t['dropped']} dropped, "
        f"{t['skipped_bad_input']} bad lines skipped) -> {output}/mixture.yaml"
    )
    return result.report


def mine(
    model: str,
    data: str,
    output: str,
    corpus: str | None = None,
    split: str = "train",
    source: list[str] | None = None,
    query_column: str | None = None,
    document_column: str | None = None,
    num_negatives: int = 7,
    min_negatives: int | None = None,
    candidates: int = 100,
    relative_margin: float | None = 0.95,
    absolute_margin: float | None = None,
    window: str | None = None,
    seed: int = 0,
    corpus_shard_size: int = 1_000_000,
    search: SearchChoice = "auto",
    ivf_nlist: int = 1024,
    ivf_nprobe: int = 32,
    shard: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    in_memory_rows: int = 200_000,
    on_error: Literal["raise", "skip"] = "raise",
    data_root: str | None = None,
    workers: int = 1,
    launcher: Literal["local", "slurm"] = "local",
    slurm: SlurmOptions | None = None,
    dry_run: bool = False,
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
        split: the BEIR qrels split to mine for.
        source: with a mixture file, only these entries.
        query_column: JSONL query column.
        document_column: JSONL document column.
        num_negatives: negatives per pair.
        min_negatives: drop pairs with fewer (default: num_negatives).
        candidates: teacher search depth (after removing known positives).
        relative_margin: drop candidates scoring above this fraction of the positive's score (None: off).
        absolute_margin: drop candidates scoring above the positive's score minus this (None: off).
        window: ``a:b``: sample the negatives from ranks a..b (1-based) of the remaining candidates
            instead of taking the top ones.
        seed: seed of the window sampling.
        corpus_shard_size: documents per corpus embedding file (the unit of ``--shard``).
        search: ``faiss`` / ``torch`` (exact, same result), ``auto`` or ``faiss-ivf`` (approximate).
        ivf_nlist: IVF lists (faiss-ivf).
        ivf_nprobe: IVF lists probed (faiss-ivf).
        shard: ``i/n``: embed only every n-th corpus shard (n workers, one folder); the worker that
            finds all shards embedded writes the triplets.
        batch_size: texts per forward pass.
        max_length: truncate texts to this many tokens.
        query_prefix: override the teacher's query prefix.
        document_prefix: override the teacher's document prefix.
        in_memory_rows: embed larger corpus shards block by block into memory-mapped files.
        on_error: for pair data: ``raise`` at the first bad line or ``skip`` (counted).
        data_root: the data root (default ``$LIT_NOMIC_DATA``).
    """  # the launch options' docs are appended below
    if not _launch("mine", dict(locals())):
        return None
    from lit_nomic.curation.common import CurationError
    from lit_nomic.curation.inputs import _find, open_pair_sources, pair_specs
    from lit_nomic.curation.mine import MineSettings, beir_mine_input, mine_negatives, pairs_mine_input
    from lit_nomic.data.formats import is_beir_folder
    from lit_nomic.data.records import DataFormatError

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
            **_search(search, ivf_nlist, ivf_nprobe, shard),
        )
        settings.check()
        found = _find(data, data_root)
        if found is not None and found.is_dir() and is_beir_folder(found) and not source:
            if corpus is not None:
                raise CurationError("--corpus is for pair data; a BEIR folder brings its corpus.jsonl")
            inputs = beir_mine_input(found, split)
        else:
            specs = pair_specs(
                data,
                source=source,
                split=split,
                query_column=query_column,
                document_column=document_column,
                root=data_root,
            )
            inputs = pairs_mine_input(specs, open_pair_sources(specs, data_root, on_error), corpus)
        enc, ident = _embedder(model, batch_size, max_length, query_prefix, document_prefix)
        enc.in_memory_rows = in_memory_rows
        result = mine_negatives(inputs, enc, output, settings, model_identity=ident)
    except (CurationError, DataFormatError, ValueError, FileNotFoundError, OSError) as err:
        raise _fail("mine", err) from err
    if result.report is None:
        print(f"mine: {result.done_shards} of {result.total_shards} corpus shards embedded in {output}")
        return None
    t = result.report["total"]
    print(
        f"mine: wrote {t.get('written', 0)} triplets of {t['pairs']} pairs "
        f"({t.get('dropped_too_few_negatives', 0)} dropped with too few negatives) -> {output}/triplets.jsonl"
    )
    return result.report


filter_pairs.__doc__ = (filter_pairs.__doc__ or "").rstrip() + _LAUNCH_DOC
mine.__doc__ = (mine.__doc__ or "").rstrip() + _LAUNCH_DOC
