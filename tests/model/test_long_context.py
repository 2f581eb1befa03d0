r"""Long context: the blockwise kernel equals the dense reference; context-parallel attention and
DeltaNet (time split over the `sequence` mesh axis, zigzag order) equal the unsharded layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.model import get_preset
from a1jax.model.attention import context_parallel_attention, reference_attention
from a1jax.model.base import run_ids
from a1jax.model.blockwise import FULL, MASKED, SKIP, _tile_kinds, blockwise_attention
from a1jax.model.context import sequence_shards, to_zigzag, zigzag_index
from a1jax.model.deltanet import conv_delta_rule
from a1jax.model.deltanet_cp import context_parallel_deltanet
from a1jax.sharding import MeshSpec, make_mesh

TINY = get_preset("tiny")
# 96 tokens cut into 2P chunks for P = 2, 4, 8; every boundary but the first falls inside a
# shard (a segment starts mid-shard), the long ones cross shard boundaries, and a 1-token
# segment and trailing padding (id 0) are in there too.
LENGTHS = (5, 30, 1, 22, 17, 15, 6)
SEGMENT_IDS = np.repeat([1, 2, 3, 4, 5, 6, 0], LENGTHS)


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32)


@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_blockwise_equals_reference(ratio):
    """Length 45 with blocks of 8 (neither a multiple), packed rows with padding, GQA 1/2/4."""
    b, t, n, k = 2, 45, 2, 8
    ks = jax.random.split(jax.random.key(ratio), 4)
    q, kk, v = _normal(ks[0], (b, t, n * ratio, k)), _normal(ks[1], (b, t, n, k)), \
        _normal(ks[2], (b, t, n, k))
    segments = np.stack([np.repeat([1, 2, 3, 0], [10, 17, 12, 6]), np.repeat([1, 2], [30, 15])])
    runs = run_ids(jnp.asarray(segments))
    probe = _normal(ks[3], q.shape)
    blockwise = lambda q, kk, v: blockwise_attention(q, kk, v, runs, runs, block_size=8)
    reference = lambda q, kk, v: reference_attention(q, kk, v, runs)
    out, grads = _value_and_grads(blockwise, (q, kk, v), probe)
    ref, ref_grads = _value_and_grads(reference, (q, kk, v), probe)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    for a, w in zip(grads, ref_grads):
        np.testing.assert_allclose(a, w, atol=1e-5, rtol=0)


def test_blockwise_full_tiles_skip_the_mask():
    """Tiles where every pair may attend run without the mask, and give the same numbers: one
    row of 40 tokens in blocks of 8, segments 20 + 20 (a boundary inside block 2)."""
    t = 40
    runs = run_ids(jnp.asarray(np.repeat([1, 2], [20, 20]))[None])
    index = jnp.arange(t, dtype=jnp.int32)[None]
    S, M, F = SKIP, MASKED, FULL
    np.testing.assert_array_equal(_tile_kinds(runs, index, runs, index, 8, 8), [
        [M, S, S, S, S],
        [F, M, S, S, S],
        [M, M, M, S, S],   # block 2 holds both segments
        [S, S, M, M, S],   # segment 2's queries: keys of block 2 partly, block 3 on the diagonal
        [S, S, M, F, M]])
    ks = jax.random.split(jax.random.key(5), 4)
    q, kk, v = _normal(ks[0], (1, t, 4, 8)), _normal(ks[1], (1, t, 2, 8)), \
        _normal(ks[2], (1, t, 2, 8))
    probe = _normal(ks[3], q.shape)
    out, grads = _value_and_grads(
        lambda q, kk, v: blockwise_attention(q, kk, v, runs, runs, block_size=8), (q, kk, v), probe)
    ref, ref_grads = _value_and_grads(
        lambda q, kk, v: reference_attention(q, kk, v, runs), (q, kk, v), probe)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    for a, w in zip(grads, ref_grads):
        np.testing.assert_allclose(a, w, atol=1e-5, rtol=0)


def _on_sequence_mesh(size, fn):
    """fn(shards) with a `sequence`=size mesh and the default rules active."""
    spec = MeshSpec.create(axes={"sequence": size}, num_devices=size)
    mesh = make_mesh(spec, jax.devices()[:size])
    with jax.set_mesh(mesh), nn.logical_axis_rules(spec.rules):
        return fn(sequence_shards(TINY, 96))


def _value_and_grads(fn, args, probe):
    """fn(*args) and the gradients of sum(fn(*args) * probe), in one compile."""
    def run(*a):
        out, vjp = jax.vjp(fn, *a)
        return out, vjp(probe)
    return jax.jit(run)(*args)


def _grads_match(sharded, unsharded, args, order):
    """Outputs (sharded ones in zigzag order) and input gradients equal, to relative 1e-5."""
    probe = _normal(jax.random.key(9), jax.eval_shape(unsharded, *args).shape)
    ref, grad_ref = _value_and_grads(unsharded, args, probe)
    out, grad = _value_and_grads(sharded, [a[:, order] for a in args], probe[:, order])
    assert _rel(out, ref[:, order]) < 1e-5
    for g, r in zip(grad, grad_ref):
        assert _rel(g, r[:, order]) < 1e-5


@pytest.mark.parametrize("size", [2, 4, 8])
def test_context_parallel_attention_equals_unsharded(size, devices):
    b, t, h, n, k = 2, 96, 4, 2, 8
    ks = jax.random.split(jax.random.key(size), 3)
    args = (_normal(ks[0], (b, t, h, k)), _normal(ks[1], (b, t, n, k)),
            _normal(ks[2], (b, t, n, k)))
    runs = run_ids(jnp.asarray(np.stack([SEGMENT_IDS, np.ones(t, int)])))
    order = np.asarray(zigzag_index(t, size))
    index = jnp.broadcast_to(jnp.asarray(order), (b, t))

    def check(shards):
        sharded = lambda q, kk, v: context_parallel_attention(
            shards, q, kk, v, runs[:, order], index, block_size=8)
        _grads_match(sharded, lambda q, kk, v: reference_attention(q, kk, v, runs), args, order)

    _on_sequence_mesh(size, check)


@pytest.mark.parametrize("size", [2, 4, 8])
def test_context_parallel_deltanet_equals_unsharded(size, devices):
    """Conv halo and recurrent state cross shards; segments reset both, also mid-shard."""
    c = TINY
    b, t, ch, hv = 2, 96, c.linear_conv_dim, c.linear_num_value_heads
    ks = jax.random.split(jax.random.key(size), 4)
    qkv = _normal(ks[0], (b, t, ch))
    g = -jax.nn.softplus(_normal(ks[1], (b, t, hv)))
    beta = jax.nn.sigmoid(_normal(ks[2], (b, t, hv)))
    w_conv = 0.5 * _normal(ks[3], (c.linear_conv_kernel_dim, ch))
    runs = run_ids(jnp.asarray(np.stack([SEGMENT_IDS, np.ones(t, int)])))
    order = np.asarray(zigzag_index(t, size))

    def unsharded(qkv, g, beta):
        return conv_delta_rule(c, qkv, runs, None, None, g, beta, w_conv)[0]

    def check(shards):
        mix = lambda *a: conv_delta_rule(c, *a, widen=True)
        sharded = lambda qkv, g, beta: context_parallel_deltanet(
            shards, qkv, g, beta, runs[:, order], w_conv, mix)
        _grads_match(sharded, unsharded, (qkv, g, beta), order)

    _on_sequence_mesh(size, check)


def test_zigzag_order_moves_each_shard_an_early_and_a_late_chunk(devices):
    t, size = 32, 4
    x = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
    moved = _on_sequence_mesh(size, lambda shards: jax.jit(
        lambda x: to_zigzag(shards, x)[0])(x))
    np.testing.assert_array_equal(moved[0], zigzag_index(t, size))
    np.testing.assert_array_equal(np.asarray(moved[0]).reshape(size, 2, -1)[:, :, 0],
                                  [[0, 28], [4, 24], [8, 20], [12, 16]])
