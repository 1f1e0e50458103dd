"""Evaluation of text encoders: BEIR/MIRACL/XQuAD-R retrieval, STS, bitext mining, tables and plots.

Everything is written against :class:`~lit_nomic.evaluation.protocol.TextEncoder`, so our MoE
encoder and any sentence-transformers checkpoint are evaluated by the same code. Heavy optional
modules (plots, reports, the mteb adapter) are not imported here.

Typical use::

    from lit_nomic.evaluation import evaluate, format_table
    from lit_nomic.evaluation.st_encoder import SentenceTransformerEncoder

    enc = SentenceTransformerEncoder(path, name="all-MiniLM-L6-v2")
    results = evaluate(enc, "scifact", output_dir="runs/eval", cache_dir="runs/emb_cache")
    print(format_table(results))

    from lit_nomic.evaluation.report import write_report
    write_report("runs/eval", "runs/report", command="lit-nomic report runs/eval runs/report")
"""

from lit_nomic.evaluation.metrics import DEFAULT_METRICS, evaluate_run
from lit_nomic.evaluation.protocol import TextEncoder, encoder_fingerprint, module_hash
from lit_nomic.evaluation.results import load_results
from lit_nomic.evaluation.run import evaluate, format_table

__all__ = [
    "DEFAULT_METRICS",
    "TextEncoder",
    "encoder_fingerprint",
    "evaluate",
    "evaluate_run",
    "format_table",
    "load_results",
    "module_hash",
]
