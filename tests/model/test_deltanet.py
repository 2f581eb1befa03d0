"""Chunked and recurrent delta rules agree; segments reset the state and the conv window."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from a1jax.model.base import run_ids
from a1jax.model.deltanet import causal_conv, chunked_delta_rule, recurrent_delta_rule


def _inputs(b=2, t=45, hk=2, hv=4, dk=16, dv=8, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, t, hk, dk))
    k = jax.random.normal(ks[1], (b, t, hk, dk))
    v = jax.random.normal(ks[2], (b, t, hv, dv))
    g = -jax.nn.softplus(jax.random.normal(ks[3], (b, t, hv)))  # log decay <= 0
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, hv)))
    return q, k, v, g, beta


@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
def test_chunked_equals_recurrent(chunk):
    q, k, v, g, beta = _inputs()
    runs = jnp.zeros(q.shape[:2], jnp.int32)
    o_rec, s_rec = recurrent_delta_rule(q, k, v, g, beta, runs)
    o_chk, s_chk = chunked_delta_rule(q, k, v, g, beta, runs, chunk)
    assert np.abs(np.asarray(o_rec)).max() > 0.1
    np.testing.assert_allclose(o_chk, o_rec, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s_chk, s_rec, atol=1e-5, rtol=0)


def test_initial_state_is_carried():
    """Splitting a sequence in two and passing the state equals running it whole."""
    q, k, v, g, beta = _inputs(t=40)
    runs = jnp.zeros(q.shape[:2], jnp.int32)
    whole, s_whole = chunked_delta_rule(q, k, v, g, beta, runs, 16)
    cut = lambda a, sl: a[:, sl]
    first, s1 = chunked_delta_rule(*(cut(a, slice(0, 23)) for a in (q, k, v, g, beta)),
                                   runs[:, :23], 16)
    second, s2 = chunked_delta_rule(*(cut(a, slice(23, None)) for a in (q, k, v, g, beta)),
                                    runs[:, 23:], 16, initial_state_bhkv=s1)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s2, s_whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [8, 16])
def test_segments_reset_state(chunk):
    """A packed row equals its segments run separately; boundaries inside and at chunk edges."""
    q, k, v, g, beta = _inputs(b=1, t=45)
    segment_ids = jnp.asarray([[1] * 5 + [2] * 11 + [3] * 16 + [4] * 13], jnp.int32)
    runs = run_ids(segment_ids)
    packed, _ = chunked_delta_rule(q, k, v, g, beta, runs, chunk)
    packed_rec, _ = recurrent_delta_rule(q, k, v, g, beta, runs)
    start = 0
    for length in (5, 11, 16, 13):
        sl = slice(start, start + length)
        alone, _ = recurrent_delta_rule(*(a[:, sl] for a in (q, k, v, g, beta)),
                                        jnp.zeros((1, length), jnp.int32))
        np.testing.assert_allclose(packed[:, sl], alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(packed_rec[:, sl], alone, atol=1e-5, rtol=0)
        start += length


def test_conv_window_resets_at_segment_start():
    x = jnp.arange(1.0, 9.0).reshape(1, 8, 1)
    w = jnp.asarray([[1000.0], [100.0], [10.0], [1.0]])  # oldest ... current
    runs = run_ids(jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 2]]))
    out = np.asarray(causal_conv(x, w, runs))[0, :, 0]
    # token 3 (x=4) starts a segment: it sees only itself; token 6 sees x=4..7.
    np.testing.assert_array_equal(out, [1, 12, 123, 4, 45, 456, 4567, 5678])


@pytest.mark.parametrize("c", [16, 48, 64, 40])
def test_unit_lower_inverse_and_its_gradient(c):
    """Inverse and gradient against jnp.linalg.inv: one diagonal block (16), three and four
    blocks solved block row by block row (48, 64), and a size that is not a multiple of the
    block (40: substitution throughout)."""
    from a1jax.model.deltanet import unit_lower_inverse

    lower = jnp.tril(0.3 * jax.random.normal(jax.random.key(0), (3, c, c)), -1)
    inv = unit_lower_inverse(lower)
    eye = np.broadcast_to(np.eye(c), (3, c, c))
    np.testing.assert_allclose(np.asarray(inv) @ (np.asarray(lower) + eye), eye, atol=1e-5)
    probe = jax.random.normal(jax.random.key(1), (3, c, c))
    loss = lambda l: jnp.sum(jnp.sin(unit_lower_inverse(l) * probe))
    reference = lambda l: jnp.sum(jnp.sin(jnp.linalg.inv(l + jnp.eye(c)) * probe))
    got = np.tril(jax.grad(loss)(lower), -1)
    want = np.tril(jax.grad(reference)(lower), -1)
    # Relative to the whole gradient: for c = 64 its entries reach hundreds, and fp32
    # jnp.linalg.inv rounds as much as the kernel does.
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
