"""The loss is normalised by the global number of trained tokens: one batch or four
accumulated microbatches, packed or not, give the same loss and the same update."""

import dataclasses

import jax
import numpy as np
import pytest

from a1jax.sharding import MeshSpec
from a1jax.train.optim import OptimConfig
from a1jax.train.sharded import build_trainer
from tests.conftest import random_params, tiny_two_layers
from tests.train.helpers import make_batch

# The load-balancing loss is computed per microbatch (as in transformers and MaxText), so it is
# not invariant to accumulation; it is switched off here to compare the normalisation exactly.
TINY = dataclasses.replace(tiny_two_layers(), router_aux_loss_coef=0.0)
# Adam's first update is lr * g / (|g| + eps), a sign for |g| >> eps: a large eps keeps the
# update proportional to the gradient, so that comparing updates compares gradients: where
# |g| << eps a gradient 1e-6 apart moves the update by lr / eps * 1e-6 = 1e-5, twice the bound
# below (summation order alone moved one element of 32,768 by 1.1e-6).
OPTIM = OptimConfig(learning_rate=1e-2, warmup_fraction=0.0, total_steps=10, eps=1e-3)


def _step(batch, microbatches, spec=None):
    b, t = batch["tokens"].shape
    spec = spec or MeshSpec.create(axes={"data": 1}, num_devices=1)
    trainer = build_trainer(TINY, OPTIM, spec, batch=b, seq=t, microbatches=microbatches,
                            devices=jax.devices()[:spec.axes["data"] * spec.axes["expert"]
                                                  * spec.axes["sequence"]])
    state = trainer.state_from_params(jax.device_put(random_params(TINY, seed=7),
                                                     trainer.state_sharding.params))
    new_state, metrics = trainer.step(state, trainer.put_batch(batch))
    return float(metrics["loss"]), jax.tree.map(np.asarray, new_state.params), metrics


def _unpack(packed):
    """Rows of two segments -> rows of one segment each (the same tokens and targets)."""
    half = packed["tokens"].shape[1] // 2
    out = {k: np.concatenate([v[:, :half], v[:, half:]], axis=0) for k, v in packed.items()}
    out["segment_ids"] = np.ones_like(out["segment_ids"])
    return out


def test_accumulation_and_packing_leave_loss_and_update_unchanged():
    packed = make_batch(TINY.vocab_size, 8, 32, seed=1, segments=2)
    unpacked = _unpack(packed)
    assert unpacked["tokens"].shape == (16, 16)
    np.testing.assert_array_equal(unpacked["positions"][0], np.arange(16))
    ref_loss, ref_params, ref_metrics = _step(packed, 1)
    assert float(ref_metrics["trained_tokens"]) == packed["loss_mask"].sum()
    for batch, micro in ((packed, 4), (unpacked, 1), (unpacked, 4)):
        loss, params, metrics = _step(batch, micro)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert float(metrics["trained_tokens"]) == float(ref_metrics["trained_tokens"])
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(a, b, atol=5e-6, rtol=0)


def test_update_moves_parameters():
    """Guards the test above: the update it compares is not zero."""
    batch = make_batch(TINY.vocab_size, 8, 32, seed=1, segments=2)
    _, params, metrics = _step(batch, 1)
    start = random_params(TINY, seed=7)
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(params), jax.tree.leaves(start)))
    assert moved > 1e-3
    assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
