"""Reading Hugging Face directories: every layout in the wild, and clear errors for bad ones."""

import subprocess
import sys

import numpy as np
import pytest

from a1jax.convert.hf_load import LoadError, load_params
from a1jax.convert.mapping import to_hf_tensors
from a1jax.model import get_preset
from tests.conftest import random_params
from tests.convert.helpers import per_expert, write_hf_dir

TINY = get_preset("tiny")


def _write_dir(path, tensors, config=TINY, shards=1, vl=False):
    hf_config = config.to_hf_dict()
    if vl:
        hf_config = {"model_type": "qwen3_5_moe", "architectures": [
            "Qwen3_5MoeForConditionalGeneration"], "text_config": hf_config}
    write_hf_dir(path, tensors, hf_config, shards=shards)


def _assert_same(a, b):
    flat_a = {k: v for k, v in _flatten(a)}
    flat_b = {k: v for k, v in _flatten(b)}
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + k + "/")
        else:
            yield prefix + k, np.asarray(v)


def test_fused_sharded_roundtrip(tmp_path):
    params = random_params(TINY)
    _write_dir(tmp_path, to_hf_tensors(params, TINY), shards=3)
    config, loaded, report = load_params(str(tmp_path))
    assert config.to_hf_dict() == TINY.to_hf_dict()
    assert (report.prefix, report.expert_layout, report.not_imported) == ("model.", "fused", [])
    _assert_same(loaded, params)


def test_per_expert_layout(tmp_path):
    params = random_params(TINY)
    tensors = per_expert(to_hf_tensors(params, TINY), TINY)
    _write_dir(tmp_path, tensors)
    _, loaded, report = load_params(str(tmp_path))
    assert report.expert_layout == "per_expert"
    _assert_same(loaded, params)


def test_vision_language_layout_reports_visual_and_mtp(tmp_path):
    params = random_params(TINY)
    tensors = {("lm_head.weight" if n == "lm_head.weight" else "model.language_model." + n[6:]): v
               for n, v in to_hf_tensors(params, TINY).items()}
    tensors["model.visual.patch_embed.proj.weight"] = np.zeros((4, 3), np.float32)
    tensors["mtp.fc.weight"] = np.zeros((2, 2), np.float32)
    _write_dir(tmp_path, tensors, vl=True, shards=2)
    config, loaded, report = load_params(str(tmp_path))
    assert config.to_hf_dict() == TINY.to_hf_dict()
    assert report.prefix == "model.language_model."
    assert report.not_imported == ["model.visual.patch_embed.proj.weight", "mtp.fc.weight"]
    _assert_same(loaded, params)


def test_bfloat16_weights_load(tmp_path):
    import ml_dtypes

    params = random_params(TINY)
    tensors = {n: v.astype(ml_dtypes.bfloat16) for n, v in to_hf_tensors(params, TINY).items()}
    _write_dir(tmp_path, tensors)
    _, loaded, _ = load_params(str(tmp_path))
    expected = np.asarray(params["norm"]["weight"]).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(loaded["norm"]["weight"], expected)
    assert loaded["norm"]["weight"].dtype == np.float32


def test_shape_mismatch_names_the_tensor(tmp_path):
    tensors = to_hf_tensors(random_params(TINY), TINY)
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    _write_dir(tmp_path, tensors)
    with pytest.raises(LoadError) as info:
        load_params(str(tmp_path))
    assert str(info.value) == (f"{tmp_path}: tensor model.layers.1.self_attn.k_proj.weight has "
                               "shape [16, 64] but the config gives it [64, 64]")


def test_missing_and_unknown_tensors(tmp_path):
    tensors = to_hf_tensors(random_params(TINY), TINY)
    del tensors["model.norm.weight"]
    _write_dir(tmp_path / "missing", tensors)
    with pytest.raises(LoadError, match=r"tensor model.norm.weight is missing$"):
        load_params(str(tmp_path / "missing"))
    tensors = to_hf_tensors(random_params(TINY), TINY)
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    _write_dir(tmp_path / "unknown", tensors)
    with pytest.raises(LoadError, match=r"unknown tensor model.layers.0.extra.weight: not part"):
        load_params(str(tmp_path / "unknown"))


def test_index_naming_missing_shard(tmp_path):
    _write_dir(tmp_path, to_hf_tensors(random_params(TINY), TINY), shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(LoadError) as info:
        load_params(str(tmp_path))
    assert str(info.value) == (f"{tmp_path}: model.safetensors.index.json names "
                               "model-00002-of-00002.safetensors, which does not exist")


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=300)


def test_score_cli_errors_are_one_line(tmp_path):
    """Missing directory, shape mismatch, token id out of range, ragged token lists."""
    tensors = to_hf_tensors(random_params(TINY), TINY)
    _write_dir(tmp_path / "good", tensors)
    tensors["model.norm.weight"] = np.zeros(3, np.float32)
    _write_dir(tmp_path / "bad", tensors)
    (tmp_path / "ok.json").write_text("[[1, 2, 3]]")
    (tmp_path / "range.json").write_text("[[1, 2, 512]]")
    (tmp_path / "ragged.json").write_text("[[1, 2, 3], [4, 5]]")
    out = str(tmp_path / "out.npz")
    cases = {
        "missing": (["--model", str(tmp_path / "nope"), "--tokens", str(tmp_path / "ok.json")],
                    f"error: {tmp_path / 'nope'}: no such directory"),
        "shape": (["--model", str(tmp_path / "bad"), "--tokens", str(tmp_path / "ok.json")],
                  f"error: {tmp_path / 'bad'}: tensor model.norm.weight has shape [3] but the "
                  "config gives it [64]"),
        "range": (["--model", str(tmp_path / "good"), "--tokens", str(tmp_path / "range.json")],
                  f"error: {tmp_path / 'range.json'}: row 0, position 2: token id 512 is out of "
                  "range [0, 512)"),
        "ragged": (["--model", str(tmp_path / "good"), "--tokens", str(tmp_path / "ragged.json")],
                   f"error: {tmp_path / 'ragged.json'}: token lists have different lengths "
                   "(2, 3); pad them to one length"),
    }
    for name, (args, message) in cases.items():
        result = _run("a1jax.score", *args, "--out", out)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.strip() == message, name
    assert not (tmp_path / "out.npz").exists()


def test_run_starts_from_a_hugging_face_directory(tmp_path):
    """`init_from` a Hugging Face directory: the run's state holds exactly its weights, sharded
    as the layout says, at step 0 with a fresh optimizer state."""
    import jax

    from a1jax import experiment
    from a1jax.model.transformer import unstack_layers
    from a1jax.train import runner
    from tests.train.runner_helpers import stage1

    config = experiment.model_config(stage1())
    params = random_params(config, seed=5)
    _write_dir(tmp_path / "hf", to_hf_tensors(params, config), config)
    plan = runner.check(stage1(f"init_from={tmp_path / 'hf'}"), str(tmp_path / "run"))
    assert plan.init_kind == "hf"
    trainer = runner.build(plan)
    messages = []
    state = runner._init_state(plan, trainer, messages.append)
    assert messages == [f"initialising from Hugging Face checkpoint {tmp_path / 'hf'}"]
    assert int(state.step) == 0
    _assert_same(jax.tree.map(np.asarray, state.params), params)
    for leaf, sharding in zip(jax.tree.leaves(state.params),
                              jax.tree.leaves(trainer.state_sharding.params)):
        assert leaf.sharding == sharding
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert len(moments) == 2 * len(jax.tree.leaves(params))
    assert all(not np.asarray(x).any() for x in moments)

    # With scan_layers the same weights arrive stacked, in the stacked layout.
    plan = runner.check(stage1(f"init_from={tmp_path / 'hf'}", "model.scan_layers=True"),
                        str(tmp_path / "scanned"))
    trainer = runner.build(plan)
    state = runner._init_state(plan, trainer, messages.append)
    stacked = jax.tree.map(np.asarray, state.params)
    _assert_same(unstack_layers(stacked, plan.model_config), params)
    for leaf, sharding in zip(jax.tree.leaves(state.params),
                              jax.tree.leaves(trainer.state_sharding.params)):
        assert leaf.sharding == sharding
