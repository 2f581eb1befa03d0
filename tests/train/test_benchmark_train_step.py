"""benchmarks/train_step.py, the layout-ablation tool: rule overrides change what each device
holds and not the numbers, and a layout that cannot work is an error before compiling."""

import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import benchmark_module
from tests.train.runner_helpers import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "train_step.py")
BASE = ["--model", "tiny", "--layers", "2", "--batch", "2", "--seq", "64", "--steps", "1",
        "--mesh", "data=2", "--devices", "2"]


def bench(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="")  # the script sets its own device count
    return subprocess.run([sys.executable, SCRIPT, *BASE, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def state_mib(out: str) -> float:
    return float(re.search(r"optimizer state ([\d,.]+) MiB on the first device", out)
                 .group(1).replace(",", ""))


def first_loss(out: str) -> float:
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"a1jax tokens_per_s=\d+ mfu=[\d.]+ first_loss=([\d.]+) "
                        r"losses=\1(,[\d.]+)+ peak_bytes=\d+", last), last
    return float(re.search(r"first_loss=([\d.]+)", last).group(1))


def test_rules_replicate_the_state_and_leave_the_loss():
    fsdp = bench()
    replicated = bench("--rules", "embed=;vocab=;linear_conv=")
    assert fsdp.returncode == 0 and replicated.returncode == 0, fsdp.stderr + replicated.stderr
    assert ", rules embed=;vocab=;linear_conv=" in replicated.stdout
    # FSDP (the default rules) splits nearly all of the state over data=2; replicated keeps it all.
    assert state_mib(replicated.stdout) > 1.9 * state_mib(fsdp.stdout)
    assert first_loss(replicated.stdout) == pytest.approx(first_loss(fsdp.stdout), rel=1e-6)
    # What benchmarks/compare_transformers.py reads from it; the first loss near ln(vocab), as
    # the transformers benchmark's is (tests/train/test_compare_transformers.py).
    run = benchmark_module("compare_transformers").parse_a1jax(fsdp.stdout)
    assert run.tokens_per_s > 0 and 0.1 < run.peak_gib < 8
    from a1jax.model import get_preset
    assert run.first_loss == pytest.approx(math.log(get_preset("tiny").vocab_size), abs=0.05)


def test_bad_rules_fail_before_compiling():
    result = bench("--rules", "embed=model")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: rules override maps 'embed' to unknown mesh axis 'model'")
    assert "compiled" not in result.stdout


def test_rules_text_as_experiment_files_write_it():
    from a1jax.experiment import ExperimentError, parse_rules
    assert parse_rules("embed=;act_seq=sequence, exp=data+expert") == [
        ("embed", None), ("act_seq", "sequence"), ("exp", ("data", "expert"))]
    with pytest.raises(ExperimentError) as e:
        parse_rules("embed", "--rules")
    assert str(e.value) == "--rules: 'embed' is not name=value"
