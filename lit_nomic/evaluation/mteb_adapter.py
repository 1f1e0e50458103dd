"""Run mteb's own evaluators on our encoders, offline, from the shared data folders.

Two pieces: :class:`MtebEncoder` implements mteb 2.x's encoder protocol (``AbsEncoder``) over
any :class:`TextEncoder`, mapping mteb's prompt types to our query/document prefixes and task-type
prompts; and ``offline_*_task`` build mteb task objects (SciFact, STSBenchmarkMultilingualSTS,
Tatoeba) whose ``load_data`` reads local files instead of the Hugging Face Hub. Results go to
mteb's own result-folder layout via ``ResultCache``; ``overwrite_strategy="always"`` by default
so that a stale cached result can never be reported as a fresh number.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.encoders import TextEncoder, encoder_fingerprint
from lit_nomic.evaluation.pairs import load_stsb_multi_mt, load_tatoeba

try:
    import mteb
    from datasets import Dataset
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ScoringFunction
    from mteb.types import PromptType
except ImportError as e:  # pragma: no cover - exercised only without the eval extra
    raise ImportError("lit_nomic.evaluation.mteb_adapter needs `pip install mteb` (the [eval] extra)") from e


class MtebEncoder(AbsEncoder):
    """mteb ``EncoderProtocol`` over a lit_nomic :class:`TextEncoder`.

    Prefix resolution mirrors how Nomic models are registered in mteb: ``PromptType.query`` ->
    ``query_prefix``, ``PromptType.document`` -> ``document_prefix``, otherwise the encoder's
    ``prompts`` entry for the task name or task type (``"STS"``, ``"BitextMining"``), else none.
    """

    def __init__(self, encoder: TextEncoder, *, name: str | None = None, revision: str | None = None) -> None:
        self.encoder = encoder
        self.model = encoder
        model_name = name or (encoder.name if "/" in encoder.name else f"lit-nomic/{encoder.name}")
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": model_name,
                "revision": revision or encoder_fingerprint(encoder)[:12],
                "framework": ["PyTorch"],
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": False,
            }
        )

    def prefix_for(self, task_name: str, task_type: str, prompt_type: PromptType | None) -> str:
        if prompt_type == PromptType.query:
            return self.encoder.query_prefix
        if prompt_type == PromptType.document:
            return self.encoder.document_prefix
        prompts = getattr(self.encoder, "prompts", None) or {}
        return str(prompts.get(task_name, prompts.get(task_type, "")))

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        prefix = self.prefix_for(task_metadata.name, task_metadata.type, prompt_type)
        batch_size = int(kwargs.get("batch_size", 32))
        emb = self.encoder.encode(texts, prefix=prefix, batch_size=batch_size, show_progress=False)
        return emb.detach().cpu().float().numpy()


def _files_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode("utf-8"))
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _offline_task(
    task_name: str,
    loader: Any,
    *,
    eval_splits: Sequence[str],
    hf_subsets: Sequence[str] | None,
    files: Sequence[Path],
) -> Any:
    """Instantiate mteb's task class with ``load_data`` replaced by ``loader``.

    The task's recorded dataset path/revision become the local folder and a digest of the files
    read, so mteb's result JSON does not claim a Hub revision that was never loaded.
    """
    base = type(mteb.get_task(task_name))

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = loader()
        self.data_loaded = True

    cls = type(f"Offline{base.__name__}", (base,), {"load_data": load_data})
    task = cls()
    local = {"path": str(files[0].parent), "revision": f"local-{_files_digest(files)}"}
    task.metadata = task.metadata.model_copy(update={"dataset": local})
    task.filter_eval_splits(eval_splits=list(eval_splits))
    if hf_subsets is not None:
        task = task.filter_languages(None, None, hf_subsets=list(hf_subsets))
    return task


def offline_retrieval_task(folder: str | os.PathLike, split: str = "test", task_name: str = "SciFact") -> Any:
    """A BEIR folder served to mteb as the named retrieval task (raw title/text: mteb joins them)."""

    def loader() -> dict[str, Any]:
        ds = load_beir(Path(folder), split)
        corpus = Dataset.from_dict(
            {
                "id": list(ds.corpus),
                "title": [d.title for d in ds.corpus.values()],
                "text": [d.text for d in ds.corpus.values()],
            }
        )
        queries = Dataset.from_dict({"id": ds.query_ids, "text": ds.query_texts})
        return {
            "default": {
                split: {"corpus": corpus, "queries": queries, "relevant_docs": ds.qrels, "top_ranked": None}
            }
        }

    base = Path(folder)
    files = [base / "corpus.jsonl", base / "queries.jsonl", base / "qrels" / f"{split}.tsv"]
    return _offline_task(task_name, loader, eval_splits=[split], hf_subsets=None, files=files)


def offline_sts_task(folder: str | os.PathLike, languages: Sequence[str], split: str = "test") -> Any:
    """STSBenchmarkMultilingualSTS from ``stsb-<lang>-<split>.csv`` files (mteb has no ``ja``)."""

    def loader() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lang in languages:
            pairs = load_stsb_multi_mt(folder, lang, split)
            out[lang] = {
                split: Dataset.from_dict(
                    {
                        "sentence1": pairs.sentences1,
                        "sentence2": pairs.sentences2,
                        "score": pairs.scores.tolist(),
                    }
                )
            }
        return out

    files = [Path(folder) / f"stsb-{lang}-{split}.csv" for lang in languages]
    return _offline_task(
        "STSBenchmarkMultilingualSTS", loader, eval_splits=[split], hf_subsets=languages, files=files
    )


def offline_tatoeba_task(folder: str | os.PathLike, languages: Sequence[str]) -> Any:
    """Tatoeba subsets ``<xxx>-eng``: sentence1 = the non-English side, sentence2 = English."""

    def loader() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lang in languages:
            pairs = load_tatoeba(folder, lang)
            out[f"{lang}-eng"] = {
                "test": Dataset.from_dict({"sentence1": pairs.source, "sentence2": pairs.target})
            }
        return out

    files = [Path(folder) / f"tatoeba.{lang}-eng.{side}" for lang in languages for side in (lang, "eng")]
    subsets = [f"{lang}-eng" for lang in languages]
    return _offline_task("Tatoeba", loader, eval_splits=["test"], hf_subsets=subsets, files=files)


def run_mteb(
    encoder: TextEncoder,
    tasks: Sequence[Any],
    output_folder: str | os.PathLike,
    *,
    batch_size: int = 32,
    overwrite_strategy: str = "always",
) -> Any:
    """Evaluate with ``mteb.evaluate``; results land in ``<output_folder>/results/<model>/<rev>/``."""
    from mteb.cache import ResultCache

    return mteb.evaluate(
        MtebEncoder(encoder),
        list(tasks),
        cache=ResultCache(cache_path=Path(output_folder)),
        overwrite_strategy=overwrite_strategy,
        encode_kwargs={"batch_size": batch_size},
        show_progress_bar=False,
    )


def main_scores(model_result: Any) -> dict[str, dict[str, float]]:
    """``{task name: {subset: main score}}`` from an mteb ``ModelResult``."""
    out: dict[str, dict[str, float]] = {}
    for task_result in model_result.task_results:
        for split_scores in task_result.scores.values():
            for subset_scores in split_scores:
                out.setdefault(task_result.task_name, {})[subset_scores["hf_subset"]] = float(
                    subset_scores["main_score"]
                )
    return out
