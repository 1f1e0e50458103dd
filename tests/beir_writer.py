"""Write a RetrievalDataset back out as a BEIR folder (tests that feed subsets to mteb or the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

from lit_nomic.evaluation.retrieval_data import RetrievalDataset


def write_beir(ds: RetrievalDataset, root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for d in ds.corpus.values():
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q, text in ds.queries.items():
            fh.write(json.dumps({"_id": q, "text": text}) + "\n")
    with open(root / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"{q}\t{d}\t{s}\n" for q, docs in ds.qrels.items() for d, s in docs.items())
    return root
