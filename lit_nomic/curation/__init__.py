"""Data curation as in Nomic Embed v2: consistency filtering of pairs and hard-negative mining.

* :mod:`lit_nomic.curation.filter` — ``lit-nomic filter``: keep a pair when an embedder ranks its own
  document in its query's top-k among the documents of its chunk.
* :mod:`lit_nomic.curation.mine` — ``lit-nomic mine``: teacher-retrieved negatives without known
  positives and below a margin of the positive's score.
* :mod:`lit_nomic.curation.common` — encoding (memory-mapped for large inputs), exact/IVF search on
  top of the evaluation package's, float64 re-scoring, resumable settings.

Both write outputs the training data module reads unchanged (see ``mixture.yaml`` in each output).
"""
