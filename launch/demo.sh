#!/usr/bin/env bash
# The main job, small, on the CPU: creates .venv if needed, then runs the a1jax demo.
#   launch/demo.sh [WORKDIR]     (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_venv.sh
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu TRANSFORMERS_VERBOSITY=error
python -m a1jax.demo --workdir "${1:-runs/demo}"
