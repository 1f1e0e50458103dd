#!/usr/bin/env bash
# Nomic Embed v2 fine-tuning on one node x 8 GPUs with Slurm (see slurm-nomic-v2-pretrain.sh).
#SBATCH --job-name=nomic-v2-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=12:00:00
# The run folder is RUN_DIR (default: the recipe's default_root_dir), passed explicitly so that the
# launcher's own options do not give it an override suffix; set RUN_DIR when adding overrides.
set -euo pipefail
export LIT_NOMIC_DATA="${LIT_NOMIC_DATA:?set LIT_NOMIC_DATA to the folder holding nomic-finetune/ and xlm_roberta_tokenizer/}"
srun lit-nomic fit -c experiments/nomic-v2-finetune.yaml \
  --trainer.default_root_dir "${RUN_DIR:-runs/nomic-v2-finetune}" "$@"
