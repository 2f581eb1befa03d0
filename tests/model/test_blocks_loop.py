"""The dropless blocks loop (the CPU grouped matmul, with its hand-written backward) equals the
one-shot formulation, every block's expert weights gathered and differentiated by autodiff,
and needs less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.model import dispatch

E, D, F, N, B = 6, 16, 8, 23, 4


def _inputs(dtype=jnp.float32):
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(N, B, D), dtype)
    # Sorted, as the dispatch makes them, with runs of one expert and an unused expert (3).
    experts = jnp.asarray(np.sort(rng.choice([0, 1, 2, 4, 5], N)), jnp.int32)
    weights = [jnp.asarray(rng.randn(*s) * 0.3, dtype) for s in ((E, D, F), (E, D, F), (E, F, D))]
    return x, experts, weights


def _one_shot(x_nbd, experts, gate_proj, up_proj, down_proj):
    h = (jax.nn.silu(jnp.einsum("nbd,ndf->nbf", x_nbd, gate_proj[experts]))
         * jnp.einsum("nbd,ndf->nbf", x_nbd, up_proj[experts]))
    return jnp.einsum("nbf,nfd->nbd", h, down_proj[experts])


def _loss(fn, experts):
    return lambda x, *w: jnp.sum(jnp.sin(fn(x, experts, *w).astype(jnp.float32)))


def test_blocks_loop_equals_one_shot_gather():
    x, experts, weights = _inputs()
    loop, one_shot = _loss(dispatch._blocks_swiglu, experts), _loss(_one_shot, experts)
    np.testing.assert_allclose(loop(x, *weights), one_shot(x, *weights), rtol=1e-6)
    argnums = (0, 1, 2, 3)
    ours, theirs = jax.grad(loop, argnums)(x, *weights), jax.grad(one_shot, argnums)(x, *weights)
    for name, a, b in zip(("x", "gate", "up", "down"), ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.any(ours[1][3]), "an expert no block uses gets no gradient"


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_blocks_loop_low_precision_keeps_dtypes_and_accumulates_in_fp32(dtype):
    x, experts, weights = _inputs(dtype)
    grads = jax.grad(_loss(dispatch._blocks_swiglu, experts), (0, 1, 2, 3))(x, *weights)
    assert [g.dtype for g in grads] == [dtype] * 4
    x32, _, w32 = _inputs()
    rounded = [w.astype(dtype).astype(jnp.float32) for w in w32]
    reference = jax.grad(_loss(_one_shot, experts), (0, 1, 2, 3))(
        x32.astype(dtype).astype(jnp.float32), *rounded)
    for a, b in zip(grads, reference):
        rel = np.linalg.norm(np.asarray(a, np.float32) - b) / np.linalg.norm(b)
        assert rel < 2e-2, rel


def test_blocks_loop_needs_less_memory_than_the_gather():
    x, experts, weights = _inputs()
    temp = {}
    for name, fn in (("one_shot", _one_shot), ("loop", dispatch._blocks_swiglu)):
        compiled = jax.jit(jax.grad(_loss(fn, experts), (0, 1, 2, 3))).lower(
            x, *weights).compile()
        temp[name] = compiled.memory_analysis().temp_size_in_bytes
    assert temp["loop"] < temp["one_shot"], temp


def test_blocks_loop_stops_after_the_used_blocks():
    """Blocks from `used` on (the invalid assignments' group and padding) are not computed: their
    outputs and input gradients are zeros, and the weight gradients are those of the first
    `used` blocks alone."""
    x, experts, weights = _inputs()
    used = 15
    loop = lambda x, *w: dispatch._blocks_swiglu(x, experts, *w, used=jnp.int32(used))
    y = loop(x, *weights)
    np.testing.assert_allclose(y[:used], _one_shot(x[:used], experts[:used], *weights),
                               rtol=1e-6)
    assert not np.any(y[used:])
    argnums = (0, 1, 2, 3)
    ours = jax.grad(lambda *a: jnp.sum(jnp.sin(loop(*a))), argnums)(x, *weights)
    theirs = jax.grad(_loss(_one_shot, experts[:used]), argnums)(x[:used], *weights)
    assert not np.any(ours[0][used:])
    np.testing.assert_allclose(ours[0][:used], theirs[0], rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("gate", "up", "down"), ours[1:], theirs[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_blocks_loop_runs_of_every_size():
    """Experts' blocks run `BLOCK_RUNS` at a time (8, 4, 2, 1): block counts that need every run
    size, and one with none, give the one-shot outputs and gradients."""
    assert dispatch.BLOCK_RUNS == (8, 4, 2, 1)
    counts = [15, 1, 0, 8, 3, 6]  # 8+4+2+1, 1, nothing, 8, 2+1, 4+2
    experts = jnp.asarray(np.repeat(np.arange(E), counts), jnp.int32)
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(sum(counts), B, D), jnp.float32)
    weights = [jnp.asarray(rng.randn(*s) * 0.3, jnp.float32)
               for s in ((E, D, F), (E, D, F), (E, F, D))]
    loop, one_shot = _loss(dispatch._blocks_swiglu, experts), _loss(_one_shot, experts)
    np.testing.assert_allclose(dispatch._blocks_swiglu(x, experts, *weights),
                               _one_shot(x, experts, *weights), rtol=1e-5, atol=1e-6)
    argnums = (0, 1, 2, 3)
    ours, theirs = jax.grad(loop, argnums)(x, *weights), jax.grad(one_shot, argnums)(x, *weights)
    for name, a, b in zip(("x", "gate", "up", "down"), ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_blocks_loop_with_fewer_blocks_than_the_longest_run():
    """3 blocks in all (a small batch, or one device's share): runs longer than that are not
    traced (a slice of 8 blocks from 3 would not compile), and the result is the one-shot one."""
    experts = jnp.asarray([0, 0, 4], jnp.int32)
    x, _, weights = _inputs()
    x = x[:3]
    loop, one_shot = _loss(dispatch._blocks_swiglu, experts), _loss(_one_shot, experts)
    argnums = (0, 1, 2, 3)
    np.testing.assert_allclose(loop(x, *weights), one_shot(x, *weights), rtol=1e-6)
    ours, theirs = jax.grad(loop, argnums)(x, *weights), jax.grad(one_shot, argnums)(x, *weights)
    for name, a, b in zip(("x", "gate", "up", "down"), ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
