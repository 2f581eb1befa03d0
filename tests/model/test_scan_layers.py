"""`scan_layers`: the decoder as a scan over repeats of its layer pattern computes what the
layer-by-layer decoder computes, from the same (stacked) parameters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.model import ConfigError, Transformer, get_preset
from a1jax.model.blockwise import blockwise_attention
from a1jax.model.transformer import stack_layers, unstack_layers
from a1jax.train.step import init_params
from tests.conftest import random_params

TINY = get_preset("tiny")  # 4 layers: (linear, full) twice


def test_scanned_decoder_equals_the_layer_loop():
    """Logits and router statistics from the same parameters, stacked; the gradients are
    checked on a mesh, with remat, in tests/train/test_layouts.py."""
    scanned = TINY.replace(scan_layers=True)
    params = random_params(TINY)
    stacked = stack_layers(params, scanned)
    # The stacked form is exactly the tree the scanned model declares.
    tokens = np.random.RandomState(0).randint(0, TINY.vocab_size, (2, 48)).astype(np.int32)
    declared = jax.eval_shape(lambda: init_params(jax.random.key(0), scanned))
    assert jax.tree.structure(jax.tree.map(lambda x: x.value.shape, declared, is_leaf=_boxed)) \
        == jax.tree.structure(jax.tree.map(np.shape, stacked))
    assert stacked["layers"]["layers_1"]["self_attn"]["q_proj"].shape == (2, 64, 4, 64)
    np.testing.assert_array_equal(stacked["layers"]["layers_1"]["self_attn"]["q_proj"][1],
                                  params["layers_3"]["self_attn"]["q_proj"])
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked, scanned), params)

    ref = jax.jit(lambda p: Transformer(TINY).apply({"params": p}, tokens))(params)
    out = jax.jit(lambda p: Transformer(scanned).apply({"params": p}, tokens))(stacked)
    np.testing.assert_allclose(out.logits_btx, ref.logits_btx, rtol=1e-5, atol=1e-5)
    for a, b in zip(out.router, ref.router):  # [layers, ...], in layer order
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scanned_init_is_the_unscanned_init_stacked():
    key = jax.random.key(3)
    init = lambda c: jax.jit(functools.partial(init_params, model_config=c))(key)  # noqa: E731
    boxed = init(TINY.replace(scan_layers=True))
    q = boxed["layers"]["layers_1"]["self_attn"]["q_proj"]
    assert q.names == ("layers", "embed", "heads", "head_dim")  # the stacked axis is named
    flat = jax.tree.map(np.asarray, jax.tree.map(lambda x: x.value, init(TINY),
                                                 is_leaf=_boxed))
    got = jax.tree.map(np.asarray, jax.tree.map(lambda x: x.value, boxed, is_leaf=_boxed))
    jax.tree.map(np.testing.assert_array_equal, got, stack_layers(flat, TINY))


def test_scan_layers_needs_a_repeating_pattern():
    with pytest.raises(ConfigError) as e:
        TINY.replace(layer_types=("linear_attention", "linear_attention", "full_attention",
                                  "linear_attention"), scan_layers=True)
    assert str(e.value) == ("scan_layers needs a layer pattern that repeats; layer_types "
                            "l,l,f,l (f: full, l: linear) does not")
    with pytest.raises(ConfigError, match="^scan_layers must be true or false, got 'False'$"):
        TINY.replace(scan_layers="False")
    assert TINY.layer_period == 2 and get_preset("agents_a1_35b").layer_period == 4


def _boxed(x):
    return hasattr(x, "names") and hasattr(x, "value")


def _grad_temp(fn, *args) -> int:
    return jax.jit(jax.grad(fn)).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_attention_keeps_only_its_own_residuals_inside_a_scan():
    """Inside a scan (the decoder's, under scan_layers) the blockwise attention keeps what its
    hand-written backward needs, as outside one. With its loops as static-bound fori_loops, JAX
    linearised them too and stacked every tile's intermediates: this gradient took 709 MiB
    inside a scan of 2 against 5 MiB alone (the 35B at 131K tokens: 320 GiB per device)."""
    t, h, n, k = 4096, 4, 2, 16
    q = jax.ShapeDtypeStruct((1, t, h, k), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, n, k), jnp.float32)
    runs = jnp.ones((1, t), jnp.int32)

    def attention(q, k, v):
        return jnp.sum(blockwise_attention(q, k, v, runs, runs, block_size=128))

    alone = _grad_temp(attention, q, kv, kv)
    assert _grad_temp(_in_scan(attention), q, kv, kv) < 4 * alone + 2**20


def _in_scan(fn):
    def scanned(first, *rest):
        def body(carry, shift):
            return carry + fn(first + shift, *rest), None
        return jax.lax.scan(body, 0.0, jnp.arange(2.0))[0]
    return scanned
