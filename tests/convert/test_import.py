r"""`python -m a1jax.convert from-hf`: sharded Orbax checkpoints read straight from safetensors."""

import functools
import os

import jax
import numpy as np
import pytest

from a1jax.convert import hf_import, orbax_io
from a1jax.convert.mapping import entries, read_block, to_hf_tensors
from a1jax.model import get_preset
from a1jax.sharding.mesh import MeshSpec, make_mesh, param_shardings
from a1jax.train.step import init_params
from tests.conftest import random_params
from tests.convert.helpers import flat, per_expert, vl_dir, write_hf_dir

TINY = get_preset("tiny")


@pytest.mark.parametrize("per_expert", [False, True])
def test_read_block_is_a_block_of_the_full_conversion(per_expert):
    """Every entry, random boxes (sharded dims outermost or not): the same elements as converting
    the whole tensor and slicing it."""
    rng = np.random.RandomState(0)
    hf = {}
    for e in entries(TINY, per_expert):
        for name, shape in zip(e.hf_names, e.hf_shapes):
            hf.setdefault(name, rng.randn(*shape).astype(np.float32))
    for e in entries(TINY, per_expert):
        full = e.to_a1(*[hf[n] for n in e.hf_names])
        assert full.shape == e.shape, e.path
        for _ in range(8):
            box = []
            for n in e.shape:
                lo = rng.randint(0, n)
                box.append(slice(lo, rng.randint(lo + 1, n + 1)) if rng.rand() < .7 else slice(None))
            np.testing.assert_array_equal(read_block(e, tuple(box), lambda n, b: hf[n][b]),
                                          full[tuple(box)], err_msg=str(e.path))


@pytest.mark.parametrize("layout", ["fsdp", "expert_sequence"])
def test_arrays_are_created_sharded_and_each_byte_is_read_once(tmp_path, monkeypatch, layout):
    params = random_params(TINY)
    src = write_hf_dir(tmp_path / "hf", to_hf_tensors(params, TINY), TINY.to_hf_dict(), shards=3)
    saved = {}
    real = orbax_io.write_params_checkpoint

    def spy(root, step, tree, meta):
        saved["params"] = tree
        return real(root, step, tree, meta)

    monkeypatch.setattr(orbax_io, "write_params_checkpoint", spy)
    result = hf_import.import_hf(str(src), str(tmp_path / "ckpt"), model="tiny", layout=layout)
    # Replicated blocks are read once per process, sharded ones once per shard: the model's bytes.
    assert result.bytes_read == sum(v.nbytes for v in flat(params).values())
    spec = MeshSpec.create(layout)
    boxed = jax.eval_shape(functools.partial(init_params, model_config=TINY), jax.random.key(0))
    expected = flat(param_shardings(boxed, make_mesh(spec), spec.rules))
    for path, array in jax.tree_util.tree_flatten_with_path(saved["params"])[0]:
        path = tuple(k.key for k in path)
        assert array.sharding.spec == expected[path].spec, path
        assert dict(array.sharding.mesh.shape) == spec.axes
    embed = saved["params"]["embed_tokens"]
    assert isinstance(embed, orbax_io.LazyArray)  # made when written: one leaf held at a time
    assert not embed.sharding.is_fully_replicated
    if layout == "expert_sequence":
        experts = saved["params"]["layers_0"]["mlp"]["experts_gate_proj"].make()
        assert experts.sharding.spec[0] == "expert"
        assert {s.data.shape[0] for s in experts.addressable_shards} == {TINY.num_experts // 2}

    step = orbax_io.resolve_step_dir(tmp_path / "ckpt")
    assert step.name == "0" and sorted(p.name for p in step.iterdir() if p.is_dir()) == \
        ["meta", "params"]
    restored = dict(orbax_io.iter_params(step))
    expected_flat = flat(params)
    assert restored.keys() == expected_flat.keys()
    for k, v in expected_flat.items():
        np.testing.assert_array_equal(restored[k], v, err_msg=str(k))
    meta = orbax_io.read_meta(step)
    assert meta["model_config"] == TINY.to_json_dict()
    assert meta["hf_source"] == {"path": str(src), "not_imported": []}


def test_vision_language_and_per_expert_layouts(tmp_path):
    src = vl_dir(tmp_path / "vl", TINY)
    result = hf_import.import_hf(str(src), str(tmp_path / "ckpt"))
    meta = orbax_io.read_meta(result.step_dir)
    assert meta["hf_source"]["not_imported"] == [
        "model.visual.blocks.0.norm1.weight", "model.visual.patch_embed.proj.weight",
        "mtp.fc.weight", "mtp.layers.0.mlp.experts.gate_up_proj"]

    params = random_params(TINY)
    tensors = per_expert(to_hf_tensors(params, TINY), TINY)
    src = write_hf_dir(tmp_path / "per_expert", tensors, TINY.to_hf_dict(), shards=2)
    result = hf_import.import_hf(str(src), str(tmp_path / "ckpt2"), layout="expert")
    assert result.report.expert_layout == "per_expert"
    restored = dict(orbax_io.iter_params(result.step_dir))
    for k, v in flat(params).items():
        np.testing.assert_array_equal(restored[k], v, err_msg=str(k))


def test_resolve_step_dir_forms(tmp_path, monkeypatch):
    params = random_params(TINY)
    root = tmp_path / "run" / "checkpoints"
    for step in (5, 10):
        orbax_io.write_params_checkpoint(root, step, params, {"model_config": TINY.to_json_dict()})
    (root / "20.orbax-checkpoint-tmp-123").mkdir()  # an interrupted save: never picked
    for path in (root, tmp_path / "run", root / "10"):
        assert orbax_io.resolve_step_dir(path) == root / "10"
    assert orbax_io.resolve_step_dir(root / "5") == root / "5"
    with pytest.raises(orbax_io.CheckpointError, match="not an a1jax checkpoint"):
        orbax_io.resolve_step_dir(tmp_path)
    # A path relative to the working directory (`a1jax.eval --model runs/x`): Orbax reads
    # only absolute ones.
    monkeypatch.chdir(tmp_path)
    step = orbax_io.resolve_step_dir(os.path.join("run", "checkpoints"))
    assert step == root / "10"
    restored = dict(orbax_io.iter_params(step))
    np.testing.assert_array_equal(restored[("embed_tokens",)], params["embed_tokens"])
