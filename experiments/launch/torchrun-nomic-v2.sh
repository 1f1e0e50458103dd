#!/usr/bin/env bash
# Without Slurm: run this on every node with NODE_RANK=0..NNODES-1 and MASTER_ADDR set to node 0.
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 bash experiments/launch/torchrun-nomic-v2.sh pretrain
# The run folder is RUN_DIR (default: the recipe's default_root_dir), passed explicitly so that the
# launcher's own options do not give it an override suffix; set RUN_DIR when adding overrides.
set -euo pipefail
recipe="${1:-pretrain}"; shift || true
NNODES="${NNODES:-1}" GPUS="${GPUS:-8}"
torchrun --nnodes "$NNODES" --nproc-per-node "$GPUS" --node-rank "${NODE_RANK:-0}" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  "$(command -v lit-nomic)" fit -c "experiments/nomic-v2-${recipe}.yaml" \
  --trainer.default_root_dir "${RUN_DIR:-runs/nomic-v2-${recipe}}" \
  --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" \
  --trainer.strategy.init_args.data_parallel_size "$((NNODES * GPUS))" "$@"
