#!/usr/bin/env bash
# Runs the test suite on 8 simulated CPU devices, creating .venv first if needed.
#   launch/test.sh                 # everything (what CI runs)
#   launch/test.sh -m "not slow"   # skip the slow tests
#   launch/test.sh tests/model -k parity
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_venv.sh
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
python -m pytest "$@"
