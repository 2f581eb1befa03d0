"""Runs tests/test_gpu_compile.py with .venv-gpu-aot's interpreter (.venv plus the CUDA compile
packages, launch/setup_gpu_aot.sh): compiling for H100s on this CPU. launch/test.sh makes that
environment and sets A1JAX_REQUIRE_GPU_AOT=1, so in CI this fails rather than skips."""

import os
import subprocess
import sys

import pytest

from a1jax import targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_compile_tests_under_the_cuda_plugin():
    python = targets.gpu_aot_python()
    if python is None:
        if os.environ.get("A1JAX_REQUIRE_GPU_AOT"):
            pytest.fail("no .venv-gpu-aot: launch/setup_gpu_aot.sh makes it")
        pytest.skip("no .venv-gpu-aot (launch/setup_gpu_aot.sh)")
    if python == sys.executable:
        pytest.skip("this interpreter has the plugin: test_gpu_compile.py runs here directly")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run([python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                          "no:xdist", "tests/test_gpu_compile.py"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
    # The one allowed skip: XLA's reference specs come from ../shared, which a checkout may lack.
    skips = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("is not in this checkout's shared/ data" in line for line in skips), skips
