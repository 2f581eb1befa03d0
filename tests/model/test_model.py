"""Whole-model properties: causality, packing, the two DeltaNet forms, the dispatch strategies."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.model import ConfigError, Transformer, get_preset
from a1jax.model import dispatch
from tests.conftest import random_params

TINY = get_preset("tiny")


def _logits(config, params, tokens, segment_ids=None, positions=None):
    apply = jax.jit(Transformer(config).apply)
    return np.asarray(apply({"params": params}, tokens, segment_ids, positions).logits_btx)


def _tokens(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, TINY.vocab_size, shape), jnp.int32)


def test_recurrent_and_chunked_models_agree():
    params = random_params(TINY)
    tokens = _tokens((2, 40))
    chunked = _logits(TINY, params, tokens)
    recurrent = _logits(dataclasses.replace(TINY, deltanet_impl="recurrent"), params, tokens)
    np.testing.assert_allclose(chunked, recurrent, atol=1e-5, rtol=0)


def test_causal():
    params = random_params(TINY)
    tokens = _tokens((1, 40))
    changed = tokens.at[0, 25].set((tokens[0, 25] + 1) % TINY.vocab_size)
    a, b = _logits(TINY, params, tokens), _logits(TINY, params, changed)
    np.testing.assert_array_equal(a[:, :25], b[:, :25])
    assert np.abs(a[:, 25:] - b[:, 25:]).max() > 1e-3


def test_packed_row_equals_segments_run_separately():
    params = random_params(TINY)
    lengths = (7, 20, 13)  # boundaries inside and across DeltaNet chunks of 16
    tokens = _tokens((1, sum(lengths)))
    segment_ids = jnp.asarray([np.repeat(np.arange(1, 4), lengths)], jnp.int32)
    positions = jnp.asarray([np.concatenate([np.arange(n) for n in lengths])], jnp.int32)
    packed = _logits(TINY, params, tokens, segment_ids, positions)
    start = 0
    for n in lengths:
        alone = _logits(TINY, params, tokens[:, start:start + n])
        np.testing.assert_allclose(packed[:, start:start + n], alone, atol=1e-5, rtol=0)
        start += n


def test_dispatch_strategies_agree_in_outputs_and_gradients():
    t, d, f, e, k = 50, 16, 8, 6, 2
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (t, d))
    probs = jax.nn.softmax(jax.random.normal(keys[1], (t, e)))
    top, experts = jax.lax.top_k(probs, k)
    weights = top / top.sum(-1, keepdims=True)
    w = [0.3 * jax.random.normal(kk, s) for kk, s in
         zip(keys[2:], [(e, d, f), (e, d, f), (e, f, d)])]

    def loss(fn, x, *w):
        return jnp.sum(jnp.sin(fn(x, weights, experts, *w)[0]))

    ref, ref_grads = jax.value_and_grad(lambda *a: loss(dispatch.dense, *a), argnums=(0, 1, 2, 3))(x, *w)
    for block, impl in ((1, "blocks"), (4, "blocks"), (64, "blocks"), (0, "ragged")):
        fn = lambda *a, block=block, impl=impl: (
            dispatch.grouped_swiglu(*a, block=block, impl=impl), 0)
        out, grads = jax.value_and_grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2, 3))(x, *w)
        np.testing.assert_allclose(out, ref, rtol=1e-5)
        for g, rg in zip(grads, ref_grads):
            np.testing.assert_allclose(g, rg, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("skewed", [False, True])
def test_batched_dispatch_equals_dense_whatever_the_load(skewed):
    """Decoding's dispatch: expert slots, further rounds for an expert past its capacity."""
    t, d, f, e, k = 24, 16, 8, 6, 2
    keys = jax.random.split(jax.random.key(1), 5)
    x = jax.random.normal(keys[0], (t, d))
    logits = jax.random.normal(keys[1], (t, e))
    if skewed:  # every token's first choice is expert 3: 24 assignments for 8 slots
        logits = logits.at[:, 3].set(10.0)
    top, experts = jax.lax.top_k(jax.nn.softmax(logits), k)
    weights = top / top.sum(-1, keepdims=True)
    w = [0.3 * jax.random.normal(kk, s) for kk, s in
         zip(keys[2:], [(e, d, f), (e, d, f), (e, f, d)])]
    ref = dispatch.dense(x, weights, experts, *w)[0]
    for factor in (2.0, 0.5):  # 16 or 4 slots per expert
        out = jax.jit(dispatch.batched, static_argnums=(6,))(x, weights, experts, *w, factor)[0]
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_stays_close_to_float32():
    params = random_params(TINY)
    tokens = _tokens((1, 24))
    f32 = _logits(TINY, params, tokens)
    bf16 = _logits(dataclasses.replace(TINY, dtype="bfloat16"), params, tokens)
    assert bf16.dtype == np.float32  # logits come out in fp32 whatever the compute dtype
    # Relative RMS, not max: a near-tie in the router may pick another expert for one token.
    # The residual stream is bf16 too (as in transformers' bf16 models): a few % after 4 layers.
    rms = lambda x: np.sqrt(np.mean(np.square(x)))
    assert rms(bf16 - f32) < 0.08 * rms(f32)
    assert rms(bf16 - f32) > 1e-4 * rms(f32)  # bf16 was really used


@pytest.mark.parametrize("change, message", [
    (dict(num_attention_heads=6, num_key_value_heads=4),
     "num_attention_heads (6) must be a multiple of num_key_value_heads (4)"),
    (dict(layer_types=("full_attention",)),
     "layer_types has 1 entries but num_hidden_layers is 4"),
    (dict(num_experts_per_tok=9), "num_experts_per_tok (9) exceeds num_experts (8)"),
    (dict(moe_dispatch="magic"), "moe_dispatch must be one of ('dense', 'dropless', 'batched', 'expert_parallel'), got 'magic'"),
])
def test_bad_config_is_a_clear_error(change, message):
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(TINY, **change)
    assert str(info.value) == message
