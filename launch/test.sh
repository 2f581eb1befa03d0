#!/usr/bin/env bash
# Runs the test suite on 8 simulated CPU devices, creating .venv first if needed.
#   launch/test.sh                 # everything (what CI runs)
#   launch/test.sh -m "not slow"   # skip the slow tests
#   launch/test.sh tests/model -k parity
#   A1JAX_TEST_WORKERS=0 launch/test.sh   # in this process, one test at a time
# Tests run on A1JAX_TEST_WORKERS pytest-xdist workers (default 2), a file to a worker: most of a
# test's time is XLA compiling, which uses one core, so two workers keep a 2-core machine busy.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_venv.sh
# .venv-gpu-aot: tests/test_gpu_compile.py compiles for H100s on this CPU there, and must not
# skip for want of it (tests/test_gpu_aot.py runs it).
bash launch/setup_gpu_aot.sh
export A1JAX_REQUIRE_GPU_AOT=1
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
workers="${A1JAX_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  python -m pytest "$@"
else
  python -m pytest -n "$workers" --dist loadfile "$@"
fi
