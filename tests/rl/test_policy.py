"""GRPO on the model: chunked log-probabilities equal the dense ones, the chunked loss and its
gradients equal `grpo_loss` on full logits, and they are the same in 4 microbatches and on
data=2 x expert=2 x sequence=2 (the token mean is the batch's)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax.model import Transformer, get_preset
from a1jax.rl import grpo_loss
from a1jax.rl.policy import grpo_grads, token_logprobs
from a1jax.sharding import MeshSpec
from a1jax.train.optim import OptimConfig
from a1jax.train.sharded import build_trainer
from tests.conftest import random_params
from tests.train.helpers import make_batch

CONFIG = get_preset("tiny").replace(loss_chunk_size=8, router_aux_loss_coef=0.0)
OPTIONS = dict(clip=(0.2, 0.28), kl_coef=0.05, entropy_coef=1e-2, importance_cap=2.0)


def _dense_logprobs(params, batch):
    logits = Transformer(CONFIG).apply({"params": params}, batch["tokens"], batch["segment_ids"],
                                       batch["positions"]).logits_btx
    logp = jax.nn.log_softmax(logits, -1)
    picked = jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    return picked, -(jnp.exp(logp) * logp).sum(-1)


def same_grads(got, want):
    """To 1e-4 of each tensor's largest entry: fp32 sums in another order move the DeltaNet
    decay gradients (sums of cancelling terms) by 2e-5; a normalisation per shard or
    microbatch would be off by a factor."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = np.abs(np.asarray(b)).max() + 1e-12
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-4)


@pytest.fixture(scope="module")
def setup():
    policy, old, ref = (random_params(CONFIG, seed=s) for s in (0, 1, 2))
    batch = make_batch(CONFIG.vocab_size, 8, 32, seed=5)
    lp = jax.jit(functools.partial(token_logprobs, model_config=CONFIG))
    rng = np.random.RandomState(0)
    # The old policy a little off the trained one, so that ratios leave the clip range.
    batch.update(old_logprobs=np.asarray(lp(old, batch)), ref_logprobs=np.asarray(lp(ref, batch)),
                 sampler_logprobs=np.asarray(lp(old, batch)) + 0.05 * rng.randn(8, 32),
                 advantages=rng.randn(8).astype(np.float32))
    batch["sampler_logprobs"] = batch["sampler_logprobs"].astype(np.float32)
    grads, metrics = jax.jit(functools.partial(grpo_grads, model_config=CONFIG, **OPTIONS))(
        policy, batch)
    return policy, old, batch, grads, metrics


def test_chunked_logprobs_and_loss_equal_the_dense_ones(setup):
    policy, old, batch, grads, metrics = setup
    dense_old, _ = _dense_logprobs(old, batch)
    np.testing.assert_allclose(batch["old_logprobs"], np.asarray(dense_old), atol=1e-5)

    def f(p):
        logprobs, entropy = _dense_logprobs(p, batch)
        return grpo_loss(logprobs, batch["old_logprobs"], batch["advantages"], batch["loss_mask"],
                         ref_logprobs=batch["ref_logprobs"], entropy=entropy,
                         sampler_logprobs=batch["sampler_logprobs"], **OPTIONS)

    (loss, dense_metrics), dense_grads = jax.value_and_grad(f, has_aux=True)(policy)
    np.testing.assert_allclose(float(metrics["grpo_loss"]), float(loss), rtol=1e-5)
    for name in ("policy_loss", "clip_fraction", "entropy", "kl", "importance_weight"):
        np.testing.assert_allclose(float(metrics[name]), float(dense_metrics[name]), rtol=1e-5)
    assert 0 < float(metrics["clip_fraction"]) < 1  # both branches of the clip are exercised
    same_grads(grads, dense_grads)


def test_the_same_on_a_mesh_and_in_microbatches(setup, devices):
    policy, _, batch, grads, metrics = setup

    def same(got):
        np.testing.assert_allclose(float(got[1]["grpo_loss"]), float(metrics["grpo_loss"]),
                                   rtol=1e-5)
        same_grads(got[0], grads)

    same(jax.jit(functools.partial(grpo_grads, model_config=CONFIG, microbatches=4, **OPTIONS))(
        policy, batch))
    config = CONFIG.replace(moe_dispatch="expert_parallel")
    trainer = build_trainer(config, OptimConfig(),
                            MeshSpec.create(axes={"data": 2, "expert": 2, "sequence": 2}),
                            batch=8, seq=32)
    place = lambda v: jax.device_put(v, NamedSharding(  # noqa: E731
        trainer.mesh, P(("data", "expert"), *(["sequence"] if v.ndim == 2 else []))))
    placed = {k: place(v) for k, v in batch.items()}
    with trainer.context():
        same(jax.jit(functools.partial(grpo_grads, model_config=config, **OPTIONS))(
            jax.device_put(policy, trainer.state_sharding.params), placed))
