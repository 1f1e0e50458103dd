"""lit_nomic: sparse Mixture-of-Experts text-embedding models, trained and benchmarked with Lightning.

The public API is importable from the package root, lazily, so ``import lit_nomic`` stays light
(no torch, no Lightning until a name is used)::

    from lit_nomic import Embedder

    model = Embedder.from_pretrained("all-minilm-l6-v2")
    queries = model.encode(["what is a mixture of experts?"], prompt_name="query")
    docs = model.encode(["Sparse experts route each token to k of E FFNs."], prompt_name="document")
    print(model.similarity(queries, docs))

    from lit_nomic import evaluate  # the evaluation pipeline behind `lit-nomic eval`

    results = evaluate(model, "scifact", output_dir="runs/eval")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    # the model
    "Embedder": "lit_nomic.model.embedder",
    "EncoderConfig": "lit_nomic.config",
    "ModelSpec": "lit_nomic.model.build",
    # training: the LightningModule, its data and its config dataclasses
    "ContrastiveModule": "lit_nomic.training.module",
    "ContrastiveDataModule": "lit_nomic.data.datamodule",
    "LossConfig": "lit_nomic.training.module",
    "ParallelConfig": "lit_nomic.training.module",
    "OptimConfig": "lit_nomic.training.optim",
    "DistillConfig": "lit_nomic.training.distill",
    # evaluation: the one pipeline, its encoder protocol, result files and reports
    "evaluate": "lit_nomic.evaluation.run",
    "TextEncoder": "lit_nomic.evaluation.encoders",
    "load_results": "lit_nomic.evaluation.results",
    "write_report": "lit_nomic.evaluation.report",
}

__all__ = [
    "ContrastiveDataModule",
    "ContrastiveModule",
    "DistillConfig",
    "Embedder",
    "EncoderConfig",
    "LossConfig",
    "ModelSpec",
    "OptimConfig",
    "ParallelConfig",
    "TextEncoder",
    "__version__",
    "evaluate",
    "load_results",
    "write_report",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lit_nomic.config import EncoderConfig
    from lit_nomic.data.datamodule import ContrastiveDataModule
    from lit_nomic.evaluation.encoders import TextEncoder
    from lit_nomic.evaluation.report import write_report
    from lit_nomic.evaluation.results import load_results
    from lit_nomic.evaluation.run import evaluate
    from lit_nomic.model.build import ModelSpec
    from lit_nomic.model.embedder import Embedder
    from lit_nomic.training.distill import DistillConfig
    from lit_nomic.training.module import ContrastiveModule, LossConfig, ParallelConfig
    from lit_nomic.training.optim import OptimConfig


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lit_nomic' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
