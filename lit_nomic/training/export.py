"""``lit-nomic export``: turn a training checkpoint into a ``from_pretrained`` model folder.

A Lightning checkpoint holds the whole LightningModule (optimizer state, loss parameters, loops);
users want the embedder alone, in the folder format that ``Embedder.from_pretrained``,
``lit-nomic eval`` and ``encode`` read. The architecture comes from the metadata the module stores
in every checkpoint (``checkpoint["lit_nomic"]``: the final ``EncoderConfig``, tokenizer, name), so
export needs neither the weights the run started from nor the Hub; a training YAML (``config``) or
the saved hyper-parameters are the fallback for checkpoints without it.

Both layouts Lightning writes are read: a single ``.ckpt`` file (single process, DDP, FSDP2 with
``save_distributed_checkpoint=False``) and the sharded folder of ``ModelParallelStrategy`` (FSDP2:
``meta.pt`` plus torch.distributed.checkpoint shards), which is re-assembled in one process.

Checkpoints are read as data, never as code: ``lit-nomic eval``/``encode`` accept any path, and a
pickle can run arbitrary code when loaded. ``.ckpt`` files and ``meta.pt`` go through torch's
``weights_only`` unpickler with the module's allow-list (:data:`CHECKPOINT_SAFE_GLOBALS`, the one
resume uses); DCP's ``.metadata`` through an unpickler that can only build DCP's index classes.
Anything else is refused with an error naming the file.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_nomic.config import EncoderConfig
from lit_nomic.model.build import ModelSpec, build_embedder, target_config
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder
from lit_nomic.training.module import CHECKPOINT_KEY, CHECKPOINT_SAFE_GLOBALS

log = logging.getLogger(__name__)

ENCODER_PREFIX = "embedder.encoder."
SHARDED_METADATA = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME


def load_checkpoint_embedder(checkpoint: str, config: str | None = None) -> Embedder:
    """The embedder of a training checkpoint (a ``.ckpt`` file or a sharded FSDP2 folder), in eval mode.

    Args:
        checkpoint: a Lightning checkpoint written by ``lit-nomic fit``.
        config: a training YAML whose ``model:`` block describes the model; needed only for
            checkpoints that carry neither our metadata nor the module's hyper-parameters.
    """
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    meta = _read_metadata(path)
    spec = _model_spec(meta, path, config)
    lit_meta = meta.get(CHECKPOINT_KEY) or {}
    if lit_meta.get("encoder_config") is not None and config is None:
        encoder_config = EncoderConfig.from_dict(dict(lit_meta["encoder_config"]))
    elif spec is not None:
        encoder_config = _architecture(spec)
    else:
        raise ValueError(
            f"{path}: the checkpoint has no '{CHECKPOINT_KEY}' metadata and no hyper-parameters; pass "
            "config=<the training YAML> to describe the model"
        )
    encoder = Encoder(encoder_config)
    template = {ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()}
    state = _read_sharded_state(path, template) if path.is_dir() else _encoder_state(meta, path)
    _load_encoder(encoder, state, path)
    tokenizer = _tokenizer(lit_meta, spec, path)
    name = lit_meta.get("name") or (spec.name if spec is not None else None) or path.stem
    return Embedder(encoder, tokenizer, name, lit_meta.get("max_seq_length")).eval()


def export_checkpoint(checkpoint: str, output: str, config: str | None = None) -> Path:
    """Write the embedder of ``checkpoint`` (a ``.ckpt`` file or a sharded FSDP2 folder) to ``output``.

    Args:
        checkpoint: a Lightning checkpoint written by ``lit-nomic fit``.
        output: the folder to write (config.json, model.safetensors, tokenizer files).
        config: see :func:`load_checkpoint_embedder`.

    Returns:
        the output folder.
    """
    embedder = load_checkpoint_embedder(checkpoint, config)
    target = embedder.save_pretrained(Path(output).expanduser())
    log.info("exported %s -> %s", checkpoint, target)
    return target


# ----------------------------------------------------------------------------- reading
def _refusal(path: Path, err: BaseException) -> ValueError:
    """One line for a pickle the allow-listing unpickler refused (torch's message is a page long)."""
    text = str(err)
    match = re.search(
        r"(Unsupported global: [^\n]*|Unsupported operand[^\n]*|WeightsUnpickler error: [^\n]*)", text
    )
    reason = match.group(1) if match else (text.splitlines()[0] if text else type(err).__name__)
    return ValueError(
        f"{path}: refusing to load: it holds pickled objects outside the allow-list of lit_nomic checkpoints "
        f"({reason.removeprefix('WeightsUnpickler error: ')}); checkpoints are read as data only, never run as code"
    )


def _torch_load(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint (or a sharded checkpoint's ``meta.pt``) as data, never as code.

    ``weights_only=True`` plus the module's allow-list (the config dataclasses Lightning pickles in
    ``hyper_parameters``; the same list resume uses): a crafted pickle that would run code on load
    is refused with an error naming the file, since ``lit-nomic eval``/``encode`` take any path.
    """
    try:
        # Not the ``safe_globals`` context manager: its exit removes the classes from torch's process-wide
        # allow-list, which module.py registered for resume, and a later resume in the same process fails.
        torch.serialization.add_safe_globals(CHECKPOINT_SAFE_GLOBALS)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a Lightning checkpoint (a dict), got {type(obj).__name__}")
    return obj


def _read_metadata(path: Path) -> dict[str, Any]:
    if path.is_dir():
        meta_path = path / SHARDED_METADATA
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{path}: a folder but not a sharded Lightning checkpoint (no {SHARDED_METADATA})"
            )
        return _torch_load(meta_path)
    return _torch_load(path)


def _encoder_state(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no 'state_dict' in the checkpoint (keys: {sorted(checkpoint)})")
    return state


def _read_sharded_state(path: Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Assemble full tensors from the DCP shards of every rank, in this one process."""
    import torch.distributed.checkpoint as dcp

    state = {k: torch.empty_like(v) for k, v in template.items()}
    reader = _SafeFileSystemReader(str(path))
    reader.read_metadata()  # refuses a crafted .metadata before DCP touches anything else
    try:
        # no_dist: export reads every shard in this one process, even inside a distributed job.
        dcp.load({"state_dict": state}, storage_reader=reader, no_dist=True)
    except Exception as err:  # noqa: BLE001 - DCP raises CheckpointException wrapping per-rank errors
        raise ValueError(
            f"{path}: cannot read the encoder weights from the sharded checkpoint ({type(err).__name__}: {err})"
        ) from err
    return state


_DCP_METADATA_GLOBALS = frozenset(
    [("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    )]
    + [
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("collections", "OrderedDict"),
    ]
)  # fmt: skip


class _DCPMetadataUnpickler(pickle.Unpickler):
    """Unpickles a torch.distributed.checkpoint ``.metadata`` and nothing else.

    Only the classes such an index is made of (plus torch dtypes) may be looked up, so a crafted
    pickle cannot reach ``os.system`` or any other callable (the standard ``find_class``
    restriction; torch's own ``weights_only`` unpickler cannot read DCP's protocol-5 pickles).
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _DCP_METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        )
        if not allowed:
            raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")
        return super().find_class(module, name)


def _safe_reader_class() -> type:
    import torch.distributed.checkpoint as dcp

    class SafeFileSystemReader(dcp.FileSystemReader):
        """DCP's reader, but ``.metadata`` goes through :class:`_DCPMetadataUnpickler`.

        The stock reader calls ``pickle.load`` on it: a crafted ``.metadata`` in a folder given to
        ``lit-nomic eval``/``encode`` would run code.
        """

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

            path = Path(str(self.path)) / ".metadata"
            try:
                with open(path, "rb") as fh:
                    meta = _DCPMetadataUnpickler(fh).load()
            except pickle.UnpicklingError as err:
                raise _refusal(path, err) from None
            except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
                raise ValueError(
                    f"{path}: not a readable checkpoint index ({type(err).__name__}: {err})"
                ) from None
            if not isinstance(meta, Metadata):
                raise ValueError(f"{path}: not a checkpoint index (a {type(meta).__name__})")
            if getattr(meta, "storage_meta", None) is None:
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    return SafeFileSystemReader


def _SafeFileSystemReader(path: str) -> Any:  # noqa: N802 - builds the class lazily (DCP import is slow)
    return _safe_reader_class()(path)


def _load_encoder(encoder: Encoder, state: dict[str, torch.Tensor], path: Path) -> None:
    weights = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    expected = set(encoder.state_dict())
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: encoder weights do not match the architecture: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in weights.items():
        want = encoder.state_dict()[name].shape
        if tensor.shape != want:
            raise ValueError(
                f"{path}: {ENCODER_PREFIX}{name} has shape {tuple(tensor.shape)}, expected {tuple(want)}"
            )
    encoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})


# ----------------------------------------------------------------------------- the model description
def _model_spec(meta: dict[str, Any], path: Path, config: str | None) -> ModelSpec | None:
    if config is not None:
        return _spec_from_yaml(Path(config).expanduser())
    hparams = meta.get("hyper_parameters") or {}
    spec = hparams.get("model")
    if spec is None:
        return None
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, dict):
        return _spec_from_dict(spec, f"{path}: hyper_parameters.model")
    raise ValueError(f"{path}: hyper_parameters.model is a {type(spec).__name__}, expected a ModelSpec")


def _spec_from_yaml(path: Path) -> ModelSpec:
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML ({err})") from None
    block = (doc or {}).get("model", {}) if isinstance(doc, dict) else {}
    spec = block.get("model") if isinstance(block, dict) else None
    if not isinstance(spec, dict):
        raise ValueError(
            f"{path}: no 'model.model' block (the ModelSpec: preset, init_from, overrides, tokenizer)"
        )
    return _spec_from_dict(spec, f"{path}: model.model")


def _spec_from_dict(values: dict[str, Any], where: str) -> ModelSpec:
    try:
        return ModelSpec(**values)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def _architecture(spec: ModelSpec) -> EncoderConfig:
    if spec.preset is not None:
        return target_config(spec, None)
    # No preset: the architecture is the init_from checkpoint's plus overrides (loads that checkpoint).
    return build_embedder(spec).config


def _tokenizer(lit_meta: dict[str, Any], spec: ModelSpec | None, path: Path) -> Any:
    from lit_nomic.data.tokenizer import load_tokenizer, resolve_tokenizer

    candidates = [lit_meta.get("tokenizer")]
    if spec is not None:
        candidates += [spec.tokenizer, spec.init_from]
    tried: list[str] = []
    for ref in candidates:
        if not ref:
            continue
        folder = resolve_tokenizer(str(ref))
        tried.append(folder)
        if not os.path.isdir(folder):
            continue
        try:
            return load_tokenizer(folder)
        except (OSError, ValueError) as err:
            log.warning("tokenizer %s could not be loaded: %s", folder, err)
    raise FileNotFoundError(
        f"{path}: no loadable tokenizer among {tried or ['(none recorded)']}; pass config=<training YAML> "
        "whose model.model.tokenizer points at a local tokenizer folder"
    )
