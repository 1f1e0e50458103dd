"""Old import path of the encoder fingerprints, kept only for ``lit_nomic/curation`` (owned elsewhere).

The :class:`TextEncoder` protocol lives in :mod:`lit_nomic.evaluation.encoders`. Delete this file once
``lit_nomic/curation/common.py`` imports from there (issue 14).
"""

from lit_nomic.evaluation.encoders import encoder_fingerprint, encoder_max_length

__all__ = ["encoder_fingerprint", "encoder_max_length"]
