"""Evaluation of text encoders: BEIR/MIRACL/XQuAD-R retrieval, STS, bitext mining, tables and plots.

Everything is written against :class:`~lit_nomic.evaluation.encoders.TextEncoder`, so our MoE
encoder and any sentence-transformers checkpoint are evaluated by the same code, and everything
runs through one pipeline, :func:`evaluate` (``lit-nomic eval`` and the training callbacks call it).
Heavy optional modules (``report``: tables and plots; ``mteb_adapter``) are not imported here.

One job per module:

* ``encoders``: the ``TextEncoder`` protocol, fingerprints, sentence-transformers and memoising
  encoders, Matryoshka truncation, the embedding cache (:func:`encode_texts`);
* ``retrieval_data`` / ``beir`` / ``multilingual``: the in-memory retrieval task and its loaders
  (BEIR folders; MIRACL and XQuAD-R); ``pairs``: STS and Tatoeba bitext (loading and scoring);
* ``retrieval``: exact search and scoring of one retrieval task; ``metrics``: trec_eval-compatible
  ranking metrics;
* ``suites``: a ``data`` argument -> task specs; ``run``: :func:`evaluate`; ``results``: the result
  JSON schema; ``report``: tables and figures; ``mteb_adapter``: mteb's own evaluators on our encoders.

Typical use::

    from lit_nomic.evaluation import evaluate, format_table
    from lit_nomic.evaluation.encoders import SentenceTransformerEncoder

    enc = SentenceTransformerEncoder(path, name="all-MiniLM-L6-v2")
    results = evaluate(enc, "scifact", output_dir="runs/eval", cache_dir="runs/emb_cache")
    print(format_table(results))

    from lit_nomic.evaluation.report import write_report
    write_report("runs/eval", "runs/report", command="lit-nomic report runs/eval runs/report")
"""

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.encoders import TextEncoder, encoder_fingerprint, module_hash
from lit_nomic.evaluation.metrics import DEFAULT_METRICS, evaluate_run
from lit_nomic.evaluation.results import load_results
from lit_nomic.evaluation.retrieval_data import RetrievalDataset, probe_subset
from lit_nomic.evaluation.run import evaluate, format_table
from lit_nomic.evaluation.suites import TaskSpec, resolve_data

__all__ = [
    "DEFAULT_METRICS",
    "RetrievalDataset",
    "TaskSpec",
    "TextEncoder",
    "encoder_fingerprint",
    "evaluate",
    "evaluate_run",
    "format_table",
    "load_beir",
    "load_results",
    "module_hash",
    "probe_subset",
    "resolve_data",
]
