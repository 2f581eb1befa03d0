#!/usr/bin/env bash
# Is a1jax on this GPU what the plan says? One command, under 10 minutes on one H100/H200.
#
#   launch/gpu/check.sh [--gpu h200-141gb] [--cases losses,bench,slice] [--out DIR]
#
# Runs benchmarks/gpu_check.py (its docstring says what each case measures): tiny's losses on
# the GPU against this machine's CPU, then tokens/s, MFU and real peak memory of the `bench`
# step and of a 4-layer full-width slice of the 35B, each beside XLA:GPU's plan of the same
# program compiled without a GPU. Needs the pinned jax with its CUDA plugin (pip install
# "jax[cuda12]==0.10.2") and a1jax's dependencies; uses .venv if there is one. Exit 1 if a
# case failed, 2 on bad arguments or no GPU (--device-platform cpu runs without one).
set -euo pipefail
cd "$(dirname "$0")/../.."
for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0
  fi
done
cpu_only=0
for arg in "$@"; do [[ "$arg" == "cpu" || "$arg" == "--device-platform=cpu" ]] && cpu_only=1; done
if [[ "$cpu_only" == 0 ]] \
    && ! (command -v nvidia-smi > /dev/null && nvidia-smi -L | grep -q '^GPU'); then
  echo "error: no NVIDIA GPU visible (nvidia-smi -L); --device-platform cpu checks without one" >&2
  exit 2
fi
source launch/gpu/xla_flags.sh
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
