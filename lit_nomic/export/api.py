"""``export_model``: the one entry point behind ``lit-nomic export``."""

from __future__ import annotations

from pathlib import Path

from lit_nomic.export.source import load_export_source

__all__ = ["FORMATS", "export_model"]

FORMATS = ("sentence-transformers", "nomic", "onnx")


def export_model(model: str, format: str, output: str, quantize: str | None = None) -> Path:  # noqa: A002
    """Export ``model`` (model folder, packaged name, checkpoint or run folder) as ``format`` to ``output``.

    Raises ``ValueError`` (one line) for a format the model cannot be written in; nothing is
    written then.
    """
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if quantize is not None and format != "onnx":
        raise ValueError("--quantize applies to --format onnx only")
    source = load_export_source(model)
    from lit_nomic.export.model_card import model_card

    card = model_card(source.embedder, source.run_dir, format, model)
    if format == "sentence-transformers":
        from lit_nomic.export.sentence_transformers import export_sentence_transformers

        return export_sentence_transformers(source.embedder, output, card=card)
    if format == "nomic":
        from lit_nomic.export.nomic import export_nomic

        return export_nomic(source.embedder, output, card=card)
    from lit_nomic.export.onnx import export_onnx

    return export_onnx(source.embedder, output, quantize=quantize, card=card)
