#!/usr/bin/env bash
# Without Slurm: run this on every node with NODE_RANK=0..NNODES-1 and MASTER_ADDR set to node 0.
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 bash experiments/launch/torchrun-nomic-v2.sh pretrain
set -euo pipefail
recipe="${1:-pretrain}"; shift || true
NNODES="${NNODES:-1}" GPUS="${GPUS:-8}"
torchrun --nnodes "$NNODES" --nproc-per-node "$GPUS" --node-rank "${NODE_RANK:-0}" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  "$(command -v lit-nomic)" fit -c "experiments/nomic-v2-${recipe}.yaml" \
  --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" \
  --trainer.strategy.init_args.data_parallel_size "$((NNODES * GPUS))" "$@"
