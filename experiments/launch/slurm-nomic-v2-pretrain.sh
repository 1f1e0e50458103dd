#!/usr/bin/env bash
# Nomic Embed v2 pretraining on N nodes x 8 GPUs with Slurm. Lightning reads the Slurm environment
# (SLURM_NTASKS, SLURM_PROCID, ...) so every task runs the same command; keep trainer.num_nodes and
# the strategy's data_parallel_size (= nodes x GPUs) in the YAML consistent with the allocation.
#SBATCH --job-name=nomic-v2-pretrain
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=48:00:00
# The run folder is RUN_DIR (default: the recipe's default_root_dir), passed explicitly so that the
# launcher's own options do not give it an override suffix; set RUN_DIR when adding overrides.
set -euo pipefail
export LIT_NOMIC_DATA="${LIT_NOMIC_DATA:?set LIT_NOMIC_DATA to the folder holding nomic-pretrain/ and xlm_roberta_tokenizer/}"
NODES="${SLURM_JOB_NUM_NODES:-4}"
srun lit-nomic fit -c experiments/nomic-v2-pretrain.yaml \
  --trainer.default_root_dir "${RUN_DIR:-runs/nomic-v2-pretrain}" \
  --trainer.num_nodes "$NODES" \
  --trainer.strategy.init_args.data_parallel_size "$((NODES * 8))" "$@"
