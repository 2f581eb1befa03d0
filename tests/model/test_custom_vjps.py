"""Hand-written backward passes equal autodiff of the plain forward they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.model.base import project, project_many
from a1jax.model.deltanet import causal_conv, conv_silu


def _grads(f, *args):
    loss = lambda *a: jnp.sum(jnp.sin(f(*a)) * jnp.arange(f(*a).size).reshape(f(*a).shape))
    return jax.grad(loss, argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("n_in, x_shape, w_shape", [
    (1, (2, 5, 6), (6, 7)),        # btd,dc->btc
    (1, (2, 5, 6), (6, 3, 4)),     # btd,dhv->bthv
    (2, (2, 5, 3, 4), (3, 4, 6)),  # bthv,hvd->btd
])
def test_project_equals_tensordot(n_in, x_shape, w_shape):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, w_shape)
    ref = lambda x, w: jnp.tensordot(x, w, axes=n_in)
    np.testing.assert_allclose(project(x, w, n_in), ref(x, w), rtol=1e-6, atol=1e-6)
    for got, want in zip(_grads(lambda x, w: project(x, w, n_in), x, w), _grads(ref, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_project_many_equals_separate_projections():
    """Weights of several widths and ranks side by side (as the DeltaNet's qkv, z, beta and
    decay projections): each output, and every gradient, as its own projection gives it."""
    keys = jax.random.split(jax.random.key(1), 5)
    x = jax.random.normal(keys[0], (2, 5, 6))
    ws = [jax.random.normal(k, s) for k, s in zip(keys[1:], [(6, 7), (6, 3, 4), (6, 1), (6, 2)])]
    together = project_many(x, ws)
    assert [o.shape for o in together] == [(2, 5, 7), (2, 5, 3, 4), (2, 5, 1), (2, 5, 2)]
    for got, w in zip(together, ws):
        np.testing.assert_allclose(got, jnp.tensordot(x, w, axes=1), rtol=1e-6, atol=1e-6)
    # One loss over all outputs (each weighted differently), so a mixed-up slice shows.
    combine = lambda outs: sum(jnp.sum(jnp.sin(o) * (i + 1)) for i, o in enumerate(outs))
    ours = jax.grad(lambda x, *ws: combine(project_many(x, ws)), argnums=(0, 1, 2, 3, 4))(x, *ws)
    theirs = jax.grad(lambda x, *ws: combine([jnp.tensordot(x, w, axes=1) for w in ws]),
                      argnums=(0, 1, 2, 3, 4))(x, *ws)
    for got, want in zip(ours, theirs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_silu_equals_autodiff_with_segment_starts():
    """Packed segments (a start mid-row and one inside the window) and a segment of one
    token: the backward must not leak gradient across a start, in either direction."""
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 11, 3))
    w = jax.random.normal(kw, (4, 3))
    segments = np.array([[0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2],
                         [0, 1, 1, 1, 1, 1, 1, 1, 3, 4, 4]])
    runs = jnp.asarray(np.cumsum(np.diff(segments, prepend=segments[:, :1], axis=1) != 0,
                                 axis=1), jnp.int32)
    ref = lambda x, w: jax.nn.silu(causal_conv(x, w, runs))
    got = lambda x, w: conv_silu(x, w, runs)
    np.testing.assert_allclose(got(x, w), ref(x, w), rtol=1e-6, atol=1e-6)
    dx, dw = _grads(got, x, w)
    dx_ref, dw_ref = _grads(ref, x, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)
