"""The dropless blocks path run a group of blocks at a time (large token counts) equals the
one-shot gather, and needs less memory."""

import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model import dispatch

E, D, F, N, B = 6, 16, 8, 23, 4
PER_BLOCK = 3 * D * F * 4  # bytes of one block's gathered fp32 expert weights


def _inputs():
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(N, B, D), jnp.float32)
    experts = jnp.asarray(rng.randint(0, E, N), jnp.int32)
    weights = [jnp.asarray(rng.randn(*s) * 0.3, jnp.float32)
               for s in ((E, D, F), (E, D, F), (E, F, D))]
    return x, experts, weights


def _loss(max_bytes, experts):
    return lambda x, *w: jnp.sum(jnp.sin(dispatch._blocks_swiglu(x, experts, *w,
                                                                  max_bytes=max_bytes)))


def test_grouped_loop_equals_one_shot_gather():
    x, experts, weights = _inputs()
    one_shot, loop = _loss(N * PER_BLOCK, experts), _loss(5 * PER_BLOCK, experts)  # 5 of 23
    np.testing.assert_allclose(loop(x, *weights), one_shot(x, *weights), rtol=1e-6)
    argnums = (0, 1, 2, 3)
    for ours, theirs in zip(jax.grad(loop, argnums)(x, *weights),
                            jax.grad(one_shot, argnums)(x, *weights)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_grouped_loop_needs_less_memory():
    x, experts, weights = _inputs()
    temp = {}
    for name, max_bytes in (("one_shot", N * PER_BLOCK), ("loop", 2 * PER_BLOCK)):
        compiled = jax.jit(jax.grad(_loss(max_bytes, experts), (0, 1, 2, 3))).lower(
            x, *weights).compile()
        temp[name] = compiled.memory_analysis().temp_size_in_bytes
    assert temp["loop"] < temp["one_shot"]
