"""launch/gpu/check.sh (benchmarks/gpu_check.py) on the CPU: what can be checked without a GPU.
Its argument handling, the refusal without a GPU, the loss comparison, and the CPU reference
run it compares a GPU against (here the "GPU" side is the CPU too, so the two agree exactly)."""

import os
import subprocess

import pytest

from tests.conftest import benchmark_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(REPO, "launch", "gpu", "check.sh")


def check(*args, timeout=300):
    return subprocess.run([CHECK, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_bad_arguments_and_no_gpu_exit_2():
    bad = check("--device-platform", "cpu", "--cases", "losses,nope")
    assert bad.returncode == 2
    assert "--cases: unknown ['nope']; choose from losses, bench, slice" in bad.stderr
    gpu = check("--device-platform", "cpu", "--gpu", "a100")
    assert gpu.returncode == 2
    assert "--gpu: unknown target 'a100'; known: h100-80gb, h200-141gb" in gpu.stderr
    if subprocess.run("command -v nvidia-smi", shell=True).returncode:
        none = check("--cases", "losses")
        assert none.returncode == 2
        assert none.stderr.startswith("error: no NVIDIA GPU visible")


def test_loss_comparison():
    gpu_check = benchmark_module("gpu_check")
    assert gpu_check.compare_losses([2.0, 1.0], [2.002, 1.0], 2e-3) == pytest.approx(1e-3)
    with pytest.raises(gpu_check.CheckError, match=r"^losses differ by 1\.00e-02 \(relative\) "
                       r"> 2e-03: \[2\.0, 1\.0\] vs \[2\.0, 1\.01\]$"):
        gpu_check.compare_losses([2.0, 1.0], [2.0, 1.01], 2e-3)
    with pytest.raises(gpu_check.CheckError, match="^2 reference losses against 1$"):
        gpu_check.compare_losses([2.0, 1.0], [2.0], 2e-3)


def test_the_cpu_reference_run(tmp_path):
    run = check("--device-platform", "cpu", "--cases", "losses", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    row = next(line for line in run.stdout.splitlines() if line.startswith("| losses"))
    cpu, other = row.split(" | ")[1:3]
    ref = [float(x) for x in cpu.removeprefix("CPU ").split(", ")]
    assert len(ref) == 4 and other == "cpu " + cpu.removeprefix("CPU ")
    assert ref[-1] < ref[0]  # three optimizer steps on one batch lower its loss
    assert row.endswith("max relative difference 0.0e+00: PASS |")
    assert open(tmp_path / "gpu_check.md").read().strip() == run.stdout.strip()


def test_peak_account_groups_the_buffers_live_at_the_peak(tmp_path):
    """benchmarks/peak_account.py on a two-file dump in XLA's formats."""
    prefix = tmp_path / "module_0001.jit_train_step.sm_9.0a_gpu_after_optimizations"
    (tmp_path / (prefix.name + "-live-range.txt")).write_text(
        "HloLiveRange (max 9):\n  Live ranges at 7 (peak):\n"
        "    param.1{}: 1073741824 bytes (cumulative: 1073741824 bytes)\n"
        "    param.2{}: 536870912 bytes (cumulative: 1610612736 bytes)\n"
        "    fusion.3.remat2{}: 268435456 bytes (cumulative: 1879048192 bytes)\n"
        "    add.4{}: 268435456 bytes (cumulative: 2147483648 bytes)\n"
        "  Stack trace breakdown for peak usage: 2147483648 bytes\n")
    (tmp_path / (prefix.name + ".txt")).write_text(
        '  %param.1 = f32[256,1024,1024]{2,1,0} parameter(0), metadata={op_name="state.params'
        "['w']\"}\n"
        '  %param.2 = f32[128,1024,1024]{2,1,0} parameter(1), metadata={op_name="state.'
        "opt_state[1][0].mu['w']\"}\n"
        "  %fusion.3.remat2 = f32[64,1024,1024]{2,1,0} fusion(%param.1), kind=kLoop\n"
        '  %add.4 = f32[64,1024,1024]{2,1,0} add(%fusion.3.remat2, %fusion.3.remat2), '
        'metadata={op_name="jit(train_step)/closed_call/layers_0/mlp/add"}\n')
    total, rows = benchmark_module("peak_account").account(str(tmp_path))
    assert total == 2**31
    assert [(what, size, count) for what, size, count, _ in rows] == [
        ("argument: parameters (fp32)", 2**30, 1),
        ("argument: optimizer state mu", 2**29, 1),
        ("fusion (no op_name: rematerialised fusion)", 2**28, 1),
        ("layers_0/mlp/add", 2**28, 1)]
