"""The CPU step's temporary buffer is reused from one run to the next (a1jax/host_memory.py):
no page faults on the second run, where JAX and glibc's defaults fault every page in again."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from a1jax import host_memory

PROBE = textwrap.dedent("""
    import json, resource
    import a1jax  # applies the settings (unless A1JAX_KEEP_HEAP=0)
    import jax, jax.numpy as jnp
    x = jnp.ones((2048, 4096), jnp.float32)
    compiled = jax.jit(lambda x: jnp.sum(jnp.cumsum(x, axis=0) * x)).lower(x).compile()
    compiled(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    compiled(x).block_until_ready()
    print(json.dumps({"temp_pages": compiled.memory_analysis().temp_size_in_bytes // 4096,
                      "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                      "applied": a1jax.host_memory.applied}))
""")


def _probe(keep: str) -> dict:
    env = dict(os.environ, A1JAX_KEEP_HEAP=keep, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_second_run_reuses_the_temporary_buffer():
    kept = _probe("1")
    assert kept["applied"] is True
    assert kept["temp_pages"] > 16_000  # a 64 MiB cumsum: above glibc's largest mmap threshold
    assert kept["faults"] < kept["temp_pages"] // 20
    default = _probe("0")
    assert default["applied"] is False
    assert default["faults"] > default["temp_pages"] // 2


@pytest.mark.parametrize("platforms, expected", [
    ("cpu", True), ("cpu,cuda", True), ("cuda", False), ("tpu", False), ("cuda,cpu", False)])
def test_cpu_backend_expected_follows_jax_platforms(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert host_memory.cpu_backend_expected() is expected


def test_opt_out_changes_nothing(monkeypatch):
    monkeypatch.setenv("A1JAX_KEEP_HEAP", "0")
    assert host_memory.configure() is False
