"""Ablation sweeps: sweep YAMLs -> runs (local or SLURM via submitit) -> tables with seeds and p-values."""
