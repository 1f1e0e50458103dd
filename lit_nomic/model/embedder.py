"""The user-facing embedding model: an :class:`Encoder` plus its tokenizer, ``encode`` and save/load.

``encode`` is what evaluation and benchmarks call. It tokenises everything once, sorts texts by
length and batches neighbours, so a batch carries almost no padding (and the encoder drops what
is left before every FFN), then restores the caller's order.

``from_pretrained`` reads our own folders and, converting on the fly, Hugging Face BERT,
sentence-transformers, RoBERTa/XLM-R and NomicBERT folders; sentence-transformers metadata
(``sentence_bert_config.json`` max_seq_length, pooling mode, Normalize module, prompts) is
respected so that a converted model embeds exactly as the original.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_nomic.config import EncoderConfig
from lit_nomic.fileio import FILE_MODE, FOLDER_MODE, atomic_folder, atomic_write_bytes, atomic_write_text
from lit_nomic.model.encoder import Encoder, EncoderOutput
from lit_nomic.model.sources import resolve_model_path
from lit_nomic.model.weights import (
    ConversionError,
    config_from_hf,
    convert_state_dict,
    load_checkpoint_tensors,
    load_into,
    state_dict_hash,
    upcycle_encoder,
)

__all__ = ["FORMAT_KEY", "FORMAT_VERSION", "Embedder", "check_finite_tensors", "save_tokenizer"]

# config.json of our folders = EncoderConfig.to_dict() plus this one key.
FORMAT_KEY = "_lit_nomic"
FORMAT_VERSION = 1
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)


class Embedder(nn.Module):
    """An encoder that turns texts into L2-normalised embeddings.

    The evaluation protocol: ``encode(texts, prefix="", batch_size=64, show_progress=False)`` and the
    attributes ``name``, ``query_prefix``, ``document_prefix``.
    """

    def __init__(
        self,
        encoder: Encoder,
        tokenizer: Any = None,
        name: str = "lit-nomic",
        max_seq_length: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer  # a HF tokenizer; a plain attribute, not a module
        self.name = name
        limit = encoder.config.max_position_embeddings
        self.max_seq_length = min(max_seq_length, limit) if max_seq_length else limit

    # ------------------------------------------------------------------ attributes
    @property
    def config(self) -> EncoderConfig:
        return self.encoder.config

    @property
    def query_prefix(self) -> str:
        return self.config.query_prefix

    @property
    def document_prefix(self) -> str:
        return self.config.document_prefix

    @property
    def embedding_dim(self) -> int:
        return self.config.hidden_size

    @property
    def model_hash(self) -> str:
        """Short stable hash of config + weights; evaluation caches key on it."""
        return state_dict_hash(self.encoder.state_dict(), self.config)

    def forward(self, *args: Any, **kwargs: Any) -> EncoderOutput:
        return self.encoder(*args, **kwargs)

    # ------------------------------------------------------------------ tokenisation
    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError(
                f"embedder {self.name!r} has no tokenizer; pass tokenizer= to Embedder/from_pretrained"
            )
        return self.tokenizer

    def tokenize(self, texts: list[str], prefix: str = "", max_length: int | None = None) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated to max_length), unpadded."""
        tokenizer = self._require_tokenizer()
        limit = min(max_length or self.max_seq_length, self.max_seq_length)
        encoded = tokenizer(
            [prefix + t for t in texts],
            add_special_tokens=True,
            truncation=True,
            max_length=limit,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

    def collate(
        self, ids: list[list[int]], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id lists to (input_ids, attention_mask) [B, longest]."""
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.bool)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = True
        return input_ids.to(device), mask.to(device)

    # ------------------------------------------------------------------ encode
    @property
    def prompts(self) -> dict[str, str]:
        """sentence-transformers style prompts: ``{"query": ..., "document": ...}``."""
        return {"query": self.query_prefix, "document": self.document_prefix}

    def get_sentence_embedding_dimension(self) -> int:
        """The embedding width (sentence-transformers' name for :attr:`embedding_dim`)."""
        return self.embedding_dim

    def encode(
        self,
        texts: list[str],
        prefix: str | None = None,
        batch_size: int = 64,
        show_progress: bool | None = None,
        max_length: int | None = None,
        matryoshka_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool | None = None,
        convert_to_numpy: bool | None = None,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        truncate_dim: int | None = None,
    ) -> Any:
        """Embed ``texts`` into L2-normalised float32 rows, in input order.

        Two calling styles share this method:

        * sentence-transformers style (``encode(texts, prompt_name="query")``): returns a numpy
          array ``[N, D]`` by default (``convert_to_tensor=True`` or ``convert_to_numpy=False``: a
          CPU tensor). ``prompt_name`` is ``"query"`` or ``"document"`` (the model's prefixes, see
          :attr:`prompts`), ``prompt`` an explicit string; ``show_progress_bar``,
          ``normalize_embeddings`` (embeddings are normalised anyway unless the model has no
          normalisation and this is False) and ``truncate_dim`` (Matryoshka) as in
          sentence-transformers.
        * the evaluation protocol (``encode(texts, prefix=..., batch_size=..., show_progress=...)``,
          and ``max_length``/``matryoshka_dim``/``dtype``): returns a float32 CPU tensor, as every
          evaluator and benchmark of this project expects. Any of those keywords selects it.

        ``device`` moves the model there (as sentence-transformers does); ``dtype`` (bf16/fp16)
        runs the forward under autocast while weights keep their dtype (load with
        ``from_pretrained(dtype=...)`` to store them in half precision instead).
        """
        legacy = any(v is not None for v in (prefix, show_progress, max_length, matryoshka_dim, dtype))
        if convert_to_tensor or convert_to_numpy is False:
            as_numpy = False
        elif convert_to_numpy:
            as_numpy = True
        else:
            as_numpy = not legacy
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, got a single str (wrap it: [text])")
        text_prefix = self._resolve_prompt(prefix, prompt_name, prompt)
        progress = bool(show_progress if show_progress is not None else show_progress_bar)
        dim_arg = matryoshka_dim if matryoshka_dim is not None else truncate_dim
        emb = self._encode(
            list(texts),
            text_prefix,
            batch_size,
            progress,
            max_length,
            dim_arg,
            device,
            dtype,
            normalize=normalize_embeddings is not False,
        )
        return emb.numpy() if as_numpy else emb

    def _resolve_prompt(self, prefix: str | None, prompt_name: str | None, prompt: str | None) -> str:
        given = [
            name
            for name, v in (("prefix", prefix), ("prompt", prompt), ("prompt_name", prompt_name))
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(f"encode: give one of prefix, prompt, prompt_name; got {', '.join(given)}")
        if prompt_name is not None:
            aliases = {"passage": "document", "corpus": "document", "doc": "document"}
            key = aliases.get(prompt_name, prompt_name)
            if key not in self.prompts:
                raise ValueError(
                    f"encode: unknown prompt_name {prompt_name!r}; this model has {sorted(self.prompts)}"
                )
            return self.prompts[key]
        return prompt if prompt is not None else (prefix or "")

    def _encode(
        self,
        texts: list[str],
        prefix: str,
        batch_size: int,
        show_progress: bool,
        max_length: int | None,
        matryoshka_dim: int | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        normalize: bool = True,
    ) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from tqdm.auto import tqdm

        dim = matryoshka_dim or self.embedding_dim
        if not 1 <= dim <= self.embedding_dim:
            raise ValueError(f"matryoshka_dim {matryoshka_dim} is outside [1, {self.embedding_dim}]")
        out = torch.empty(len(texts), dim, dtype=torch.float32)
        if not texts:
            return out
        if device is not None:
            self.to(device)
        run_device = next(self.parameters()).device
        ids = self.tokenize(list(texts), prefix, max_length)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up at once
        autocast = dtype is not None and dtype in (torch.float16, torch.bfloat16)
        was_training = self.training
        self.eval()
        try:
            with (
                torch.inference_mode(),
                torch.autocast(run_device.type, dtype=dtype or torch.bfloat16, enabled=autocast),
                tqdm(
                    total=len(ids), disable=not show_progress, desc=f"encode {self.name}", unit="text"
                ) as bar,
            ):
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    input_ids, mask = self.collate([ids[i] for i in rows], run_device)
                    emb = self.encoder(input_ids, mask, matryoshka_dim=matryoshka_dim).embeddings
                    if not self.config.normalize and normalize:
                        emb = F.normalize(emb.float(), dim=-1)
                    out[torch.tensor(rows)] = emb.float().cpu()
                    bar.update(len(rows))
        finally:
            self.train(was_training)
        return out

    def similarity(self, a: Any, b: Any) -> torch.Tensor:
        """Cosine similarity matrix ``[len(a), len(b)]`` of two sets of embeddings (numpy or torch),
        as sentence-transformers' ``similarity`` (a float32 tensor; 1-D inputs count as one row)."""
        ta, tb = (torch.as_tensor(x, dtype=torch.float32) for x in (a, b))
        ta, tb = (x.unsqueeze(0) if x.dim() == 1 else x for x in (ta, tb))
        return F.normalize(ta, dim=-1) @ F.normalize(tb, dim=-1).T

    def encode_query(self, texts: list[str], **kwargs: Any) -> Any:
        """sentence-transformers' ``encode_query``: ``encode(texts, prompt_name="query")`` (numpy)."""
        return self.encode(texts, prompt_name="query", **kwargs)

    def encode_document(self, texts: list[str], **kwargs: Any) -> Any:
        """sentence-transformers' ``encode_document``: ``encode(texts, prompt_name="document")`` (numpy)."""
        return self.encode(texts, prompt_name="document", **kwargs)

    def encode_queries(self, texts: list[str], **kwargs: Any) -> torch.Tensor:
        return self.encode(texts, prefix=self.query_prefix, **kwargs)

    def encode_documents(self, texts: list[str], **kwargs: Any) -> torch.Tensor:
        return self.encode(texts, prefix=self.document_prefix, **kwargs)

    # ------------------------------------------------------------------ upcycling
    def upcycled(self, moe_config: EncoderConfig, name: str | None = None, **kwargs: Any) -> Embedder:
        """A new MoE embedder upcycled from this one (same tokenizer); kwargs go to ``upcycle``."""
        moe = upcycle_encoder(self.encoder, moe_config, **kwargs)
        return Embedder(moe, self.tokenizer, name or f"{self.name}-moe", self.max_seq_length)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json (EncoderConfig + format marker), model.safetensors and the tokenizer.

        The folder is written beside ``directory`` and renamed into place as a whole
        (:func:`lit_nomic.fileio.atomic_folder`): a run killed mid-export leaves the previous export
        intact, never weights of one model beside the config of another. An existing folder is
        replaced only if it holds nothing but files an export writes (never a user's other files).
        Files are world-readable (0644), like every result this project writes. Non-finite weights
        (a diverged run) are refused before anything is written.
        """
        directory = Path(directory)
        self._check_finite(f"{directory}: refusing to export")
        with atomic_folder(directory, replaceable=_only_export_files) as tmp:
            self.write_model_files(tmp)
        return directory

    def _check_finite(self, context: str) -> dict[str, torch.Tensor]:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.encoder.state_dict().items()}
        check_finite_tensors(tensors, context)
        return tensors

    def write_model_files(self, folder: str | os.PathLike) -> None:
        """Write config.json, model.safetensors and the tokenizer into an existing ``folder``.

        Each file is written atomically and made world-readable (0644); the folder as a whole is not
        (that is :meth:`save_pretrained`'s job). Exporters that assemble a larger folder (the
        sentence-transformers layout) call this inside their own :func:`~lit_nomic.fileio.atomic_folder`.
        """
        from safetensors.torch import save

        folder = Path(folder)
        tensors = self._check_finite(f"{folder}: refusing to export")
        config = self.config.to_dict()
        config[FORMAT_KEY] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "max_seq_length": self.max_seq_length,
        }
        atomic_write_bytes(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
        save_tokenizer(self.tokenizer, folder)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        tokenizer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> Embedder:
        """Load our folder, or convert a HF BERT / sentence-transformers / XLM-R / NomicBERT folder.

        ``path`` may also be a packaged checkpoint name (e.g. ``all-minilm-l6-v2``).
        """
        root = resolve_model_path(path)
        config_path = root / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{root}: no config.json")
        raw = _read_json(config_path)
        if FORMAT_KEY in raw:
            embedder = cls._load_ours(root, raw, tokenizer)
        else:
            embedder = cls._load_foreign(root, tokenizer)
        if name is not None:
            embedder.name = name
        elif not Path(path).expanduser().exists():  # a packaged name or Hub id: name it as the user did
            embedder.name = str(path).rsplit("/", 1)[-1]
        if dtype is not None:
            embedder.to(dtype=dtype)
        if device is not None:
            embedder.to(device)
        return embedder.eval()

    @classmethod
    def _load_ours(cls, root: Path, raw: dict[str, Any], tokenizer: Any) -> Embedder:
        meta = raw.pop(FORMAT_KEY)
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version != FORMAT_VERSION:
            raise ConversionError(
                f"{root / 'config.json'}: {FORMAT_KEY}.format_version={version!r}, expected {FORMAT_VERSION}"
            )
        config = EncoderConfig.from_dict(raw, source=root / "config.json")
        encoder = Encoder(config)
        load_into(encoder, load_checkpoint_tensors(root), str(root))
        return cls(
            encoder,
            tokenizer or _load_tokenizer(root),
            meta.get("name") or root.name,
            meta.get("max_seq_length"),
        )

    @classmethod
    def _load_foreign(cls, root: Path, tokenizer: Any) -> Embedder:
        st = _sentence_transformers_metadata(root)
        model_dir = st.get("model_dir", root)
        hf = _read_json(model_dir / "config.json")
        config, family = config_from_hf(hf, str(model_dir / "config.json"))
        tok = tokenizer or _load_tokenizer(model_dir) or _load_tokenizer(root)
        changes = {k: st[k] for k in ("pooling", "normalize", "query_prefix", "document_prefix") if k in st}
        if (
            family == "nomic"
            and hf.get("pad_token_id") is None
            and getattr(tok, "pad_token_id", None) is not None
        ):
            # GPT2-style NomicBERT configs may omit it; a wrong padding_idx would freeze a real row.
            changes["pad_token_id"] = int(tok.pad_token_id)
        if changes:
            config = replace(config, **changes)
        encoder = Encoder(config)
        tensors = convert_state_dict(family, load_checkpoint_tensors(model_dir), config)
        load_into(encoder, tensors, str(model_dir))
        max_len = st.get("max_seq_length") or _tokenizer_limit(tok)
        return cls(encoder, tok, root.name, max_len)


# ----------------------------------------------------------------------------- helpers
# Everything save_pretrained (and the tokenizers we ship) may write: an existing folder holding
# only these is a previous export and may be replaced as a whole.
EXPORT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        *_TOKENIZER_FILES,
    }
)


def _only_export_files(folder: Path) -> bool:
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_FILES or not p.is_file())
    if others:
        raise FileExistsError(
            f"{folder}: refusing to replace a folder that holds files an export does not write "
            f"({', '.join(others[:5])}{' ...' if len(others) > 5 else ''}); choose a new or empty folder"
        )
    return True


def save_tokenizer(tokenizer: Any, folder: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(folder)`` (if any), its files made world-readable (they follow the umask)."""
    if tokenizer is None:
        return
    before = {p for p in Path(folder).rglob("*")}
    tokenizer.save_pretrained(str(folder))
    for entry in Path(folder).rglob("*"):
        if entry not in before:
            os.chmod(entry, FOLDER_MODE if entry.is_dir() else FILE_MODE)


def check_finite_tensors(tensors: dict[str, torch.Tensor], context: str) -> None:
    """Raise ``ValueError`` (one line, prefixed by ``context``) if any floating tensor holds NaN/inf.

    A diverged run's weights embed everything as NaN; exporting them would only move the failure
    to whoever loads the model, far from its cause.
    """
    bad = []
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append((name, int((~torch.isfinite(tensor)).sum()), tensor.numel()))
    if bad:
        name, count, total = bad[0]
        raise ValueError(
            f"{context}: non-finite weights (NaN/inf) in {len(bad)} tensor(s), first {name} "
            f"({count} of {total} values); the run diverged"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def _load_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in a model folder, or None: a sentence-transformers folder may keep it elsewhere."""
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from lit_nomic.data.tokenizer import load_tokenizer

    return load_tokenizer(folder)


def _tokenizer_limit(tokenizer: Any) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def _sentence_transformers_metadata(root: Path) -> dict[str, Any]:
    """What a sentence-transformers folder says about length, pooling, normalisation and prompts."""
    meta: dict[str, Any] = {}
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return meta
    try:
        modules = json.loads(modules_path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{modules_path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    types = [str(m.get("type", "")) for m in modules]
    meta["normalize"] = any(t.endswith(".Normalize") for t in types)
    for module in modules:
        kind, sub = str(module.get("type", "")), root / str(module.get("path", ""))
        if kind.endswith(".Transformer"):
            meta["model_dir"] = sub
            cfg = sub / "sentence_bert_config.json"
            if cfg.is_file() and _read_json(cfg).get("max_seq_length"):
                meta["max_seq_length"] = int(_read_json(cfg)["max_seq_length"])
        elif kind.endswith(".Pooling"):
            pooling_path = sub / "config.json"
            pooling = _read_json(pooling_path) if pooling_path.is_file() else {}
            if pooling.get("pooling_mode_cls_token"):
                meta["pooling"] = "cls"
            elif pooling.get("pooling_mode_mean_tokens", True):
                meta["pooling"] = "mean"
            else:
                modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
                raise ConversionError(
                    f"{pooling_path}: pooling modes {modes} are not supported (mean or cls only)"
                )
    prompts_path = root / "config_sentence_transformers.json"
    prompts = _read_json(prompts_path).get("prompts") or {} if prompts_path.is_file() else {}
    if "query" in prompts:
        meta["query_prefix"] = prompts["query"]
    for key in ("document", "passage", "corpus"):
        if key in prompts:
            meta["document_prefix"] = prompts[key]
            break
    return meta
