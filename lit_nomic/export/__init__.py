"""Exporters: trained models as sentence-transformers folders, the released NomicBERT layout and ONNX.

``lit-nomic export --model PATH --format sentence-transformers|nomic|onnx --output DIR`` (see
:func:`lit_nomic.export.api.export_model`). Submodules import their heavy dependencies lazily.
"""
