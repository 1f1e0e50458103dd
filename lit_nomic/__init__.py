"""lit_nomic: sparse Mixture-of-Experts text-embedding models, trained and benchmarked with Lightning."""

__version__ = "0.1.0"
