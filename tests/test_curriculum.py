"""The three-stage curriculum: each stage learns and starts from the previous stage's weights;
the stage files at the real model's size validate against 8 devices."""

import math
import os

import jax
import numpy as np
import pytest

from a1jax import curriculum, experiment, plot
from a1jax.data.tokenizer import TrajectoryEncoder, load_tokenizer
from a1jax.train import checkpoint as ckpt_lib
from a1jax.train import data as data_lib
from a1jax.train import metrics, runner


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("curriculum"))
    summaries = curriculum.run("tiny", workdir, smoke=True)
    return workdir, summaries


def _eval(workdir, k):
    return {r["step"]: r["loss"] for r in metrics.read(os.path.join(workdir, curriculum.STAGES[k]))
            if r["kind"] == "eval"}


def test_every_stage_runs_and_learns(smoke):
    workdir, summaries = smoke
    assert [s["stage"] for s in summaries] == list(curriculum.STAGES)
    assert all(s["status"] == "finished" and s["steps"] == 4 for s in summaries)
    for k in range(3):
        evals = _eval(workdir, k)
        assert evals[4] < evals[0] - 0.05, (curriculum.STAGES[k], evals)
    rows = curriculum.table(summaries)
    assert len(rows) == 4 and rows[1].startswith("stage1_foundation")
    assert [os.path.basename(p) for p in plot.plot(workdir)] == ["loss.png", "expert_load.png"]


def test_later_stages_start_from_the_previous_stage(smoke):
    workdir, _ = smoke
    configs = curriculum.configs("tiny", smoke=True, workdir=workdir)
    encoder = TrajectoryEncoder(load_tokenizer())
    for k in (1, 2):
        stage_dir = os.path.join(workdir, curriculum.STAGES[k])
        plan = runner.check(configs[k], stage_dir)
        assert plan.init_kind == "checkpoint" and plan.init_step == 4
        trainer = runner.build(plan)
        batches = data_lib.eval_batches(
            configs[k], data_lib.dataset_dir(os.path.join(stage_dir, "data", "tfds")), encoder)
        target = ckpt_lib.abstract_with_shardings(trainer.abstract_state().params,
                                                  trainer.state_sharding.params)
        previous = ckpt_lib.Checkpointer(
            os.path.join(workdir, curriculum.STAGES[k - 1], "checkpoints"), read_only=True)
        from_previous = runner._evaluate(trainer, previous.restore_params(target), batches)
        fresh = runner._evaluate(trainer, trainer.init(jax.random.key(0)).params, batches)
        step0 = _eval(workdir, k)[0]
        np.testing.assert_allclose(step0, from_previous, rtol=1e-6)
        assert abs(step0 - fresh) > 0.1


def test_rerun_skips_finished_stages(smoke):
    workdir, _ = smoke
    again = curriculum.run("tiny", workdir, smoke=True)
    assert [s["status"] for s in again] == ["already finished"] * 3


@pytest.mark.parametrize("stage", curriculum.STAGES)
def test_stage_files_validate_at_35b_on_8_devices(stage, tmp_path):
    config = curriculum.load_experiment(curriculum.stage_file(stage), "model=agents_a1_35b")
    plan = runner.check(config, str(tmp_path), num_devices=8, check_init=False)
    assert plan.model_config.num_experts == 256 and plan.spec.axes == (
        {"data": 1, "expert": 1, "sequence": 8} if stage == "stage3_frontier_hardening" else
        {"data": 1, "expert": 2, "sequence": 4})
    trainer = runner.build(plan)
    state = trainer.abstract_state()
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)) == 34_660_610_688
    # The decoder scanned over its ten repeats of the layer pattern (stacked parameters).
    assert plan.model_config.scan_layers and sorted(state.params["layers"]) == [
        "layers_0", "layers_1", "layers_2", "layers_3"]
    assert state.params["layers"]["layers_3"]["self_attn"]["q_proj"].shape[0] == 10
    # Every matrix is split over the 8 devices (FSDP + experts): none is replicated.
    shardings = jax.tree.leaves(trainer.state_sharding.params)
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                                      shardings):
        if leaf.ndim - (path[0].key == "layers") >= 2:  # not counting the stacked axis
            assert sharding.num_devices == 8 and not sharding.is_fully_replicated, path
    assert config.seq_len == {"stage1_foundation": 32_768, "stage2_trajectory_extension": 65_536,
                              "stage3_frontier_hardening": 131_072}[stage]
    assert experiment.optim_config(config).learning_rate == 1e-5
    # stage 3 compiles its step without the GPU's pipelined collectives (docs/planner.md)
    assert experiment.xla_options(config) == ({
        "xla_gpu_enable_pipelined_all_gather": False,
        "xla_gpu_enable_pipelined_reduce_scatter": False,
        "xla_gpu_enable_pipelined_all_reduce": False}
        if stage == "stage3_frontier_hardening" else {})


def test_xla_options_reach_the_compile_and_bad_ones_are_refused(tmp_path):
    config = curriculum.load_experiment(curriculum.stage_file(curriculum.STAGES[0]),
                                        "model=tiny,smoke=True")
    config.xla_options = ("xla_cpu_enable_fast_math=true, "
                          "xla_gpu_all_reduce_combine_threshold_bytes=8")
    assert experiment.xla_options(config) == {"xla_cpu_enable_fast_math": True,
                                              "xla_gpu_all_reduce_combine_threshold_bytes": 8}
    config.xla_options = "fast_math=true"
    with pytest.raises(experiment.ExperimentError) as e:
        experiment.validate(config)
    assert str(e.value) == "xla_options: expected xla_NAME=VALUE[,...], got 'fast_math=true'"
    # a name XLA does not know fails the step's compile: the options are passed to it
    config.xla_options = "xla_no_such_option=1"
    config.mesh.layout, config.mesh.axes = "", "data=1"
    trainer = runner.build(runner.check(config, str(tmp_path), num_devices=1))
    state = trainer.abstract_state()
    batch = {k: jax.ShapeDtypeStruct(trainer.batch_shape, np.int32) for k in
             ("tokens", "targets", "loss_mask", "segment_ids", "positions")}
    with pytest.raises(Exception, match="No such compile option: 'xla_no_such_option'"):
        trainer.lower(state, batch).compile()


def test_later_stage_alone_needs_init_from(tmp_path):
    config = curriculum.load_experiment(curriculum.stage_file(curriculum.STAGES[1]), "model=tiny")
    with pytest.raises(runner.RunError) as e:
        runner.check(config, str(tmp_path))
    assert str(e.value) == ("stage2_trajectory_extension starts from the previous stage's "
                            "weights: set --config.init_from to its workdir or checkpoint "
                            "(a1jax.curriculum sets it)")


def test_stage_longer_than_native_context_gets_yarn():
    config = curriculum.load_experiment(curriculum.stage_file(curriculum.STAGES[1]), "model=tiny")
    config.model.extra = "max_position_embeddings=1024"  # a model with a 1,024-token context
    model = experiment.model_config(config)
    assert (model.rope_type, model.rope_factor, model.rope_original_max_position_embeddings,
            model.max_position_embeddings) == ("yarn", 2.0, 1024, 2048)
    experiment.validate(config)
    config.model.rope_scaling = "none"
    with pytest.raises(experiment.ExperimentError) as e:
        experiment.validate(config)
    assert str(e.value) == ("seq_len 2048 exceeds the model's context max_position_embeddings="
                            "1024; set --config.model.rope_scaling=yarn to extend it")
