"""One training step on 8 simulated devices equals one device, whatever the layout."""

import dataclasses

import jax
import numpy as np
import pytest

from a1jax.model import get_preset
from a1jax.model.transformer import stack_layers, unstack_layers
from a1jax.sharding import MeshSpec
from a1jax.train.optim import OptimConfig
from a1jax.train.sharded import build_trainer
from tests.conftest import random_params
from tests.train.helpers import make_batch, sharded_grads

TINY = get_preset("tiny")
B, T = 8, 32

# (mesh axes, dispatch, expected per-device shard shapes of three parameters:
#  embed_tokens [512, 64], layers_0 experts_gate_proj [8, 64, 32], layers_1 q_proj [64, 4, 64])
LAYOUTS = {
    "data8": ({"data": 8}, "dropless", (512, 8), (8, 8, 32), (8, 4, 64)),
    "expert8": ({"expert": 8}, "expert_parallel", (512, 8), (1, 64, 32), (8, 4, 64)),
    "sequence8": ({"sequence": 8}, "dropless", (512, 8), (8, 8, 32), (8, 4, 64)),
    "d2e2s2": ({"data": 2, "expert": 2, "sequence": 2}, "expert_parallel", (512, 8),
               (4, 16, 32), (8, 4, 64)),
    "d2e4": ({"data": 2, "expert": 4}, "expert_parallel", (512, 8), (2, 32, 32), (8, 4, 64)),
    "e2s4": ({"expert": 2, "sequence": 4}, "expert_parallel", (512, 8), (4, 16, 32), (8, 4, 64)),
}


@pytest.fixture(scope="module")
def reference():
    params = random_params(TINY)
    batch = make_batch(TINY.vocab_size, B, T, segments=2)
    spec = MeshSpec.create(axes={"data": 1}, num_devices=1)
    loss, grads, _, _ = sharded_grads(TINY, spec, params, batch, devices=jax.devices()[:1])
    return params, batch, loss, jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_device(name, reference, devices):
    axes, dispatch, embed_shard, expert_shard, q_shard = LAYOUTS[name]
    params, batch, ref_loss, ref_grads = reference
    config = dataclasses.replace(TINY, moe_dispatch=dispatch)
    loss, grads, placed, _ = sharded_grads(config, MeshSpec.create(axes=axes), params, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    flat_ref = jax.tree_util.tree_flatten_with_path(ref_grads)[0]
    for (path, ref), got in zip(flat_ref, jax.tree.leaves(grads)):
        scale = np.abs(ref).max() + 1e-12
        np.testing.assert_allclose(np.asarray(got) / scale, ref / scale, atol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    shard = lambda x: x.addressable_shards[0].data.shape
    assert shard(placed["embed_tokens"]) == embed_shard
    assert shard(placed["layers_0"]["mlp"]["experts_gate_proj"]) == expert_shard
    assert shard(placed["layers_1"]["self_attn"]["q_proj"]) == q_shard
    # Nothing is replicated over the whole mesh: every matrix is split 8 ways somehow.
    for leaf in jax.tree.leaves(placed):
        if leaf.ndim >= 2:
            assert np.prod(leaf.shape) == 8 * np.prod(shard(leaf)), leaf.sharding


def test_scanned_layers_match_single_device(reference, devices):
    """The decoder scanned over its layer pattern, every layer rematerialised, on data 2 x
    expert 2 x sequence 2 (expert-parallel dispatch and context-parallel layers inside the
    scan), against the reference."""
    params, batch, ref_loss, ref_grads = reference
    config = dataclasses.replace(TINY, moe_dispatch="expert_parallel", scan_layers=True,
                                 remat="full")
    axes = {"data": 2, "expert": 2, "sequence": 2}
    loss, grads, placed, _ = sharded_grads(config, MeshSpec.create(axes=axes),
                                           stack_layers(params, config), batch)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    grads = unstack_layers(jax.tree.map(np.asarray, grads), config)
    flat_ref = jax.tree_util.tree_flatten_with_path(ref_grads)[0]
    for (path, ref), got in zip(flat_ref, jax.tree.leaves(grads)):
        scale = np.abs(ref).max() + 1e-12
        np.testing.assert_allclose(got / scale, ref / scale, atol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    # Each stacked leaf is split as its layers are, whole along the stacked axis.
    _, _, embed_shard, expert_shard, q_shard = LAYOUTS["d2e2s2"]
    shard = lambda x: x.addressable_shards[0].data.shape  # noqa: E731
    stacked = placed["layers"]
    assert shard(placed["embed_tokens"]) == embed_shard
    assert shard(stacked["layers_0"]["mlp"]["experts_gate_proj"]) == (2,) + expert_shard
    assert shard(stacked["layers_1"]["self_attn"]["q_proj"]) == (2,) + q_shard
    # Back to layer by layer (a stacked checkpoint restored into a run without scan_layers):
    # the same values, laid out as that run's trainer lays them.
    loop = build_trainer(dataclasses.replace(config, scan_layers=False, remat="none"),
                         OptimConfig(),
                         MeshSpec.create(axes=axes), batch=B, seq=T)
    unstacked = loop.to_layer_form(placed)
    jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), want),
                 unstacked, params)
    for got, want in zip(jax.tree.leaves(unstacked), jax.tree.leaves(loop.state_sharding.params)):
        assert got.sharding.is_equivalent_to(want, got.ndim)
