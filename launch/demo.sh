#!/usr/bin/env bash
# The main job, small, on the CPU: creates .venv if needed, then runs the a1jax demo (the
# three-stage curriculum of the tiny model on 8 simulated devices, then export to transformers).
#   launch/demo.sh [WORKDIR] [--smoke]   (default runs/demo; rerunning resumes where it stopped)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_venv.sh
# WORKDIR and flags (--smoke) in any order.
workdir="runs/demo"
flags=()
for arg in "$@"; do
  case "$arg" in
    -*) flags+=("$arg") ;;
    *) workdir="$arg" ;;
  esac
done
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
# Compiled steps are cached on disk: a rerun (resuming an interrupted demo) skips compiling.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$workdir/.jax_cache}"
python -m a1jax.demo --workdir "$workdir" ${flags[@]+"${flags[@]}"}
