"""The loss computed a chunk of tokens at a time equals the loss over full logits, on one device
and with the time axis split over devices."""

import jax
import jax.numpy as jnp
import numpy as np

from a1jax.sharding import MeshSpec
from a1jax.train.optim import OptimConfig
from a1jax.train.sharded import build_trainer
from a1jax.train.step import chunked_cross_entropy_sum, cross_entropy_sum
from tests.conftest import tiny_two_layers
from tests.train.helpers import make_batch


def test_chunked_cross_entropy_equals_full_logits():
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 96, 16), jnp.float32)
    w = jnp.asarray(rng.randn(16, 50) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.randint(0, 50, (2, 96)), jnp.int32)
    mask = jnp.asarray(rng.rand(2, 96) > 0.3, jnp.float32)

    def full(x, w):
        return cross_entropy_sum(jnp.einsum("btd,dx->btx", x, w), targets, mask)

    def chunked(x, w):
        return chunked_cross_entropy_sum(x, w, targets, mask, chunk=16)

    np.testing.assert_allclose(chunked(x, w), full(x, w), rtol=1e-6)
    for ours, theirs in zip(jax.grad(chunked, (0, 1))(x, w), jax.grad(full, (0, 1))(x, w)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # The compiled chunked loss never holds the whole [2, 96, 50] logits.
    hlo = jax.jit(jax.grad(chunked, (0, 1))).lower(x, w).compile().as_text()
    assert "f32[2,96,50]" not in hlo and "f32[2,16,50]" in hlo


def test_train_step_loss_chunked_on_a_sequence_mesh():
    config = tiny_two_layers().replace(moe_dispatch="dropless")
    batch = make_batch(config.vocab_size, batch=2, seq=256, seed=3, segments=2)
    losses = []
    for chunk, axes, devices in ((0, {"data": 1}, 1), (64, {"sequence": 4, "data": 2}, 8)):
        model = config.replace(loss_chunk_size=chunk)
        trainer = build_trainer(model, OptimConfig(total_steps=2),
                                MeshSpec.create(axes=axes, num_devices=devices),
                                batch=2, seq=256, devices=jax.devices()[:devices])
        _, metrics = trainer.step(trainer.init(jax.random.key(0)), trainer.put_batch(batch))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
