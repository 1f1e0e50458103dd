"""Old import path of :func:`encode_texts`, kept only for ``lit_nomic/curation`` (owned elsewhere).

The embedding cache lives in :mod:`lit_nomic.evaluation.encoders`. Delete this file once
``lit_nomic/curation/common.py`` and its tests import from there (issue 14).
"""

from lit_nomic.evaluation.encoders import EmbeddingCache, encode_texts

__all__ = ["EmbeddingCache", "encode_texts"]
