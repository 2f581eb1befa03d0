#!/usr/bin/env bash
# One 8-GPU node, one process driving all its GPUs.
#
#   launch/gpu/node.sh EXPERIMENT[:args] WORKDIR [--config.KEY=VALUE ...]
#   launch/gpu/node.sh experiments/curriculum/stage1_foundation.py:model=agents_a1_35b \
#       /ckpt/a1/stage1_foundation --config.init_from=/models/Qwen3.5-35B-A3B
#
# The XLA flags are in launch/gpu/xla_flags.sh. Plan first: python -m a1jax.plan --config ...
# A layout that does not fit the GPUs found is refused before anything compiles (exit 2).
# A1JAX_GPUS (default 8) is the GPU count the run expects; fewer or more visible GPUs is an error.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $# -lt 2 ]]; then
  echo "usage: launch/gpu/node.sh EXPERIMENT[:args] WORKDIR [--config.KEY=VALUE ...]" >&2; exit 2
fi
EXPERIMENT="$1"; WORKDIR="$2"; shift 2
EXPECTED="${A1JAX_GPUS:-8}"
if command -v nvidia-smi > /dev/null; then
  FOUND=$(nvidia-smi -L | grep -c '^GPU' || true)
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    FOUND=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)
  fi
  if (( FOUND != EXPECTED )); then
    echo "error: $FOUND GPUs visible, the run expects $EXPECTED (set A1JAX_GPUS, or" \
         "CUDA_VISIBLE_DEVICES, and a layout for that many)" >&2
    exit 2
  fi
fi
source launch/gpu/xla_flags.sh
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}"
exec "$PYTHON" -m a1jax.train --config "$EXPERIMENT" --workdir "$WORKDIR" "$@"
