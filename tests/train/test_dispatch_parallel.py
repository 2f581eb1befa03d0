"""dense, dropless and expert_parallel: same loss and gradients on an expert mesh; the
expert-parallel step really moves tokens with all-to-all; capacity drops are counted."""

import dataclasses

import jax
import numpy as np
import pytest

from a1jax.model import get_preset
from a1jax.sharding import MeshSpec
from tests.conftest import random_params, tiny_two_layers
from tests.train.helpers import make_batch, sharded_grads

TINY = get_preset("tiny")
SHALLOW = tiny_two_layers()  # for the compile-only checks


def test_dispatch_strategies_agree_on_expert_mesh(devices):
    params = random_params(TINY, seed=4)
    batch = make_batch(TINY.vocab_size, 8, 32, seed=4)
    spec = MeshSpec.create(axes={"data": 2, "expert": 4})
    results = {}
    for dispatch in ("dense", "dropless", "expert_parallel"):
        config = dataclasses.replace(TINY, moe_dispatch=dispatch)
        loss, grads, _, trainer = sharded_grads(config, spec, params, batch)
        results[dispatch] = (loss, jax.tree.map(np.asarray, grads))
    ref_loss, ref_grads = results["dense"]
    for dispatch in ("dropless", "expert_parallel"):
        loss, grads = results[dispatch]
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(a, b, atol=1e-4 * (np.abs(b).max() + 1e-9), rtol=1e-4)


def _compiled_step_text(config, spec, batch_size=8, seq=32):
    from a1jax.train.optim import OptimConfig
    from a1jax.train.sharded import build_trainer

    trainer = build_trainer(config, OptimConfig(), spec, batch=batch_size, seq=seq)
    state = trainer.abstract_state()
    batch = {k: jax.ShapeDtypeStruct((batch_size, seq), np.int32) for k in
             ("tokens", "targets", "loss_mask", "segment_ids", "positions")}
    return trainer.lower(state, batch).compile().as_text()


def test_expert_parallel_step_contains_all_to_all(devices):
    spec = MeshSpec.create(axes={"expert": 8})
    ep = _compiled_step_text(dataclasses.replace(SHALLOW, moe_dispatch="expert_parallel"), spec)
    local = _compiled_step_text(dataclasses.replace(SHALLOW, moe_dispatch="dropless"), spec)
    assert ep.count("all-to-all(") >= 4 * SHALLOW.num_hidden_layers  # two each way, fwd and bwd
    assert "all-to-all(" not in local


def test_capacity_drops_are_counted(devices):
    """A capacity below the worst case drops assignments; the count is exact and reported."""
    import jax.numpy as jnp
    import flax.linen as nn

    from a1jax.model.expert_parallel import expert_parallel
    from a1jax.sharding import make_mesh

    spec = MeshSpec.create(axes={"expert": 8})
    mesh = make_mesh(spec)
    t, d, f, e, k = 64, 8, 4, 8, 2
    x = jnp.ones((t, d))
    experts = jnp.zeros((t, k), jnp.int32).at[:, 1].set(1)  # everyone wants experts 0 and 1
    weights = jnp.full((t, k), 0.5)
    w = [jnp.ones((e, d, f)) * 0.1, jnp.ones((e, d, f)) * 0.1, jnp.ones((e, f, d)) * 0.1]
    with jax.set_mesh(mesh), nn.logical_axis_rules(spec.rules):
        out, dropped = jax.jit(lambda *a: expert_parallel(*a, capacity_factor=2.0))(
            x, weights, experts, *w)
        full, none_dropped = jax.jit(expert_parallel)(x, weights, experts, *w)
    # Each of 8 devices holds 8 tokens = 16 assignments: 8 for expert 0 (on expert shard 0) and 8
    # for expert 1 (on shard 1); capacity = ceil(16 * 2.0 / 8) = 4 per shard, so each device
    # keeps the first 4 tokens' assignments to each shard and drops the other 8.
    assert int(dropped) == 8 * 8
    assert int(none_dropped) == 0
    out, full = np.asarray(out).reshape(8, 8, d), np.asarray(full).reshape(8, 8, d)
    np.testing.assert_allclose(out[:, :4], full[:, :4], rtol=1e-6)
    np.testing.assert_array_equal(out[:, 4:], 0.0)
    assert np.all(np.abs(full).sum(-1) > 0)


@pytest.mark.parametrize("dispatch", ["dropless", "expert_parallel"])
def test_no_device_handles_every_token_when_time_is_split(dispatch):
    """On `sequence` 8 (expert axis 1) each device routes its own 2 x 320 / 8 tokens: no array in
    the compiled step has a dimension of all 2 x 320 x 2 assignments (a global sort would)."""
    import re

    from a1jax.train.optim import OptimConfig
    from a1jax.train.sharded import build_trainer
    from a1jax.train.step import BATCH_KEYS

    config = dataclasses.replace(SHALLOW, moe_dispatch=dispatch)
    trainer = build_trainer(config, OptimConfig(), MeshSpec.create(axes={"sequence": 8}),
                            batch=2, seq=320)
    shapes = {k: jax.ShapeDtypeStruct((2, 320), np.int32) for k in BATCH_KEYS}
    hlo = trainer.lower(trainer.abstract_state(), shapes).compile().as_text()
    dims = {int(d) for shape in re.findall(r"\w+\[([\d,]+)\]", hlo) for d in shape.split(",")}
    assert 2 * 320 * 2 not in dims and 2 * 320 * 2 // 8 in dims
