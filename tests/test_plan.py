"""a1jax.plan: state bytes per device equal the analytic count for every layout, the collectives
follow the layout, the layer extrapolation matches a full compile, and bad requests fail early."""

import os
import subprocess
import sys

import jax
import pytest

from a1jax import curriculum, plan
from a1jax.model_info import count_params
from a1jax.train import runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(REPO, "experiments", "curriculum", "stage1_foundation.py")


def config(model: str, *sets: str):
    c = curriculum.load_experiment(STAGE1, f"model={model},smoke=True")
    for s in sets:
        curriculum.override(c, s)
    return c


def replicated_params(m) -> int:
    """Vectors with no dimension a layout splits: DeltaNet's A_log, dt_bias and output norm, and
    attention's q/k norms. Every other tensor has an embed, vocab, exp or conv dimension, which
    the rules split over all 8 devices in every 8-device layout."""
    linear = m.layer_types.count("linear_attention")
    full = m.layer_types.count("full_attention")
    return (linear * (2 * m.linear_num_value_heads + m.linear_value_head_dim)
            + full * 2 * m.head_dim)


@pytest.mark.parametrize("model", ["tiny", "bench"])
def test_state_bytes_equal_the_analytic_count(model, devices):
    c = config(model)
    m = runner.check(c, os.devnull, num_devices=8, check_init=False).model_config
    total, rep = count_params(m)["total"], replicated_params(m)
    expected_params = 4 * ((total - rep) // 8 + rep)  # float32 master weights
    for layout in plan.default_layouts(8):
        trainer = runner.build(plan.layout_plan(c, layout, 8))
        params, optimizer = plan.state_bytes(trainer)
        assert params == expected_params, layout
        # AdamW's two moments like the parameters, plus two replicated int32 step counters
        # (Adam's bias correction and the learning-rate schedule's).
        assert optimizer == 2 * expected_params + 2 * 4, layout


def test_collectives_follow_the_layout(devices):
    """Expert parallel moves tokens with all-to-all inside the dispatch; pure FSDP with dropless
    experts has no all-to-all at all (each device dispatches its own tokens), and gathers its
    sharded weights instead."""
    two = "model.extra=num_hidden_layers=2,layer_types=null"  # depth does not matter here
    c = config("tiny", two, "model.moe_dispatch=dropless")
    fsdp = plan.compile_step(plan.layout_plan(c, "fsdp", 8), devices)[1].as_text()
    c = config("tiny", two, "model.moe_dispatch=expert_parallel")
    expert = plan.compile_step(plan.layout_plan(c, "expert", 8), devices)[1].as_text()
    dispatch = lambda hlo: plan.collectives(hlo, where="all_to_all")["all-to-all"][0]
    assert plan.collectives(fsdp)["all-to-all"][0] == 0  # none at all: tokens never move
    assert dispatch(expert) >= 2 * 2  # there and back, in each of the 2 layers (plus backward)
    assert plan.collectives(fsdp)["all-gather"][0] > 0


def test_extrapolation_matches_a_full_compile(devices):
    """tiny at 6 layers (period 2): compiled at 2 and 4 layers and extrapolated, against the
    whole 6-layer compile; and the same model planned with scan_layers."""
    sets = ("model.extra=num_hidden_layers=6,layer_types=null", "batch_size=8", "seq_len=256")
    c = config("tiny", *sets)
    full = plan.plan_layout(c, "expert_sequence", 8, layers="full")
    line = plan.plan_layout(c, "expert_sequence", 8, layers="2,4")
    assert full.layers == "6" and line.layers == "2,4->6", (full.error, line.error)
    assert (line.params, line.optimizer) == (full.params, full.optimizer)
    assert line.peak == pytest.approx(full.peak, rel=0.05)
    assert line.flops == pytest.approx(full.flops, rel=0.02)
    for op, (count, size) in full.collectives.items():
        assert line.collectives[op][0] == pytest.approx(count, abs=2), op
        assert line.collectives[op][1] == pytest.approx(size, rel=0.05, abs=1024), op

    # Under scan_layers the layer loop's body counts once in XLA's cost analysis: the row's
    # FLOPs and collectives are this layer-by-layer extrapolation, its memory the scanned
    # program's own (compiled whole).
    scanned = plan.plan_layout(config("tiny", *sets, "model.scan_layers=True"),
                               "expert_sequence", 8, layers="2,4")
    assert scanned.layers == "6 (scanned; FLOPs and collectives 2,4->6)", scanned.error
    assert (scanned.params, scanned.optimizer) == (line.params, line.optimizer)
    assert (scanned.flops, scanned.collectives) == (line.flops, line.collectives)
    assert scanned.temp not in (line.temp, full.temp) and scanned.peak > scanned.temp


def test_collectives_parse_async_and_tuples():
    hlo = """
  %a = f32[8,64]{1,0} all-gather(f32[1,64]{1,0} %p), replica_groups={}
  %b = (bf16[16]{0}, bf16[16]{0}) all-reduce(bf16[16]{0} %x, bf16[16]{0} %y), to_apply=%add
  %c = (f32[4]{0}, f32[32]{0}) all-gather-start(f32[4]{0} %q)
  %d = f32[32]{0} all-gather-done((f32[4]{0}, f32[32]{0}) %c)
  %e = s32[2,3]{1,0} all-to-all(s32[2,3]{1,0} %r), dimensions={0}
"""
    got = plan.collectives(hlo)
    assert got["all-gather"] == (2, 8 * 64 * 4 + 32 * 4)
    assert got["all-reduce"] == (1, 2 * 16 * 2)
    assert got["all-to-all"] == (1, 24)
    assert got["reduce-scatter"] == (0, 0)


@pytest.mark.parametrize("name", ["teacher_grpo", "opd_multi_teacher"])
def test_plans_the_rl_learners_update_with_its_second_model(name, devices):
    """An RL experiment plans the learner's update (its batch: log-probabilities, advantages or
    the teacher's top-k), with the reference policy or the teacher resident in its peak."""
    path = os.path.join(REPO, "experiments", "paper", f"{name}.py")
    c = curriculum.load_experiment(path, "model=tiny,smoke=True")
    curriculum.override(c, "model.extra=num_hidden_layers=2,layer_types=null")
    row = plan.plan_layout(c, "fsdp", 8)
    assert not row.error, row.error
    assert row.resident == row.params > 0 and row.peak > row.temp + row.resident
    if name == "teacher_grpo":
        curriculum.override(c, "rl.kl_coef=0.0")
        without = plan.plan_layout(c, "fsdp", 8)
        assert without.resident == 0 and without.peak < row.peak


def test_cli_errors_before_compiling(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "a1jax.plan", "--config",
                                     f"{STAGE1}:model=tiny,smoke=True", "--backend", "cpu",
                                     *a], cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
    bad = run("--devices", "8", "--layouts", "fsdp,nope")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: unknown layout 'nope'")
    # the GPU backend (the default) without the CUDA plugin: says where to get it
    gpu = subprocess.run([sys.executable, "-m", "a1jax.plan", "--config",
                          f"{STAGE1}:model=tiny,smoke=True", "--layouts", "fsdp"], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, A1JAX_GPU_AOT_VENV="/nonexistent"))
    if not plan.targets.plugin_installed():
        assert gpu.returncode == 2
        assert gpu.stderr.strip().splitlines()[-1].startswith(
            "error: cannot compile for h200-141gb here: ")
        assert "launch/setup_gpu_aot.sh makes .venv-gpu-aot" in gpu.stderr
    odd = run("--devices", "6", "--layouts", "data_expert_sequence")
    assert odd.returncode == 2
    assert "cannot run: mesh axes" in odd.stdout and "cannot fill 6 devices" in odd.stdout
