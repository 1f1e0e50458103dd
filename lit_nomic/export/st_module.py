"""The sentence-transformers input module for lit_nomic encoders that are not plain BERT (MoE, RoPE, pre-LN).

A sentence-transformers folder lists its modules in ``modules.json``; each ``type`` is an import
path. Folders exported by ``lit-nomic export --format sentence-transformers`` for such models list
``lit_nomic.export.st_module.LitNomicTransformer`` first, then the stock ``Pooling`` and
``Normalize``. The class comes from the installed ``lit_nomic`` package: nothing is downloaded and no
code is read from the model folder. sentence-transformers >= 6 still asks for
``trust_remote_code=True`` before importing any class outside its own namespace::

    SentenceTransformer(folder, trust_remote_code=True)

The module reads the folder as ``Embedder.from_pretrained`` does (``config.json`` with our format
marker + ``model.safetensors`` + the tokenizer, in the folder root), runs the unpadded encoder, and
hands ``token_embeddings`` (zeros at padding) and ``attention_mask`` to ``Pooling``, which then
computes exactly our mean / first-token pooling.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_nomic.fileio import atomic_write_text
from lit_nomic.model.embedder import Embedder

try:  # sentence-transformers >= 6
    from sentence_transformers.base.modules import InputModule as _Base
except ImportError:  # pragma: no cover - older sentence-transformers
    try:
        from sentence_transformers.models import InputModule as _Base  # 5.x
    except ImportError:
        _Base = nn.Module  # 3.x / 4.x: duck-typed module

__all__ = ["CONFIG_NAME", "LitNomicTransformer"]

CONFIG_NAME = "lit_nomic_module.json"


class LitNomicTransformer(_Base):  # type: ignore[misc, valid-type]
    """Tokenise (with the prompt), encode with a lit_nomic :class:`Encoder`, return token embeddings."""

    config_keys = ["max_seq_length"]
    config_file_name = CONFIG_NAME
    save_in_root = True

    def __init__(
        self, model_name_or_path: str | os.PathLike, max_seq_length: int | None = None, **_: Any
    ) -> None:
        super().__init__()
        self.embedder = Embedder.from_pretrained(Path(model_name_or_path)).eval()
        self.tokenizer = self.embedder.tokenizer
        self.max_seq_length = int(max_seq_length or self.embedder.max_seq_length)

    # ------------------------------------------------------------------ sentence-transformers API
    def preprocess(
        self, inputs: list[Any], prompt: str | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in inputs]
        if prompt:
            texts = [prompt + t for t in texts]
        ids = self.embedder.tokenize(texts, "", self.max_seq_length)
        input_ids, mask = self.embedder.collate(ids)
        return {"input_ids": input_ids, "attention_mask": mask.long()}

    def tokenize(self, texts: list[Any], **kwargs: Any) -> dict[str, torch.Tensor]:
        """sentence-transformers < 6 calls ``tokenize`` (prompts already prepended)."""
        return self.preprocess(texts)

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        out = self.embedder.encoder(
            features["input_ids"], features["attention_mask"].bool(), output_token_embeddings=True
        )
        features["token_embeddings"] = out.token_embeddings
        return features

    def get_word_embedding_dimension(self) -> int:
        return self.embedder.embedding_dim

    def get_max_seq_length(self) -> int:
        return self.max_seq_length

    def get_config_dict(self) -> dict[str, Any]:
        return {"max_seq_length": self.max_seq_length}

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        folder = Path(output_path)
        folder.mkdir(parents=True, exist_ok=True)
        self.embedder.write_model_files(folder)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.get_config_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> LitNomicTransformer:
        folder = Path(model_name_or_path) / subfolder
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: LitNomicTransformer loads local folders only (export the model with "
                "lit-nomic export and pass its folder)"
            )
        config_path = folder / CONFIG_NAME
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(folder, max_seq_length=config.get("max_seq_length"))
