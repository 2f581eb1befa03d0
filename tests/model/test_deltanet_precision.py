"""DeltaNet against an fp64 ground truth (the same code run on fp64 inputs).

Under strong decay (per-token log decays of -4 .. -20, as `tiny`'s initial `A_log` gives) the
chunked rule's fp32 gradients, the decay's included, are as accurate as the token-by-token
recurrence's; the context-parallel DeltaNet is the unsharded function exactly (fp64, to 1e-12),
and in fp32 it is as close to the truth as one device is. (Whole-model fp32 gradients differ
between layouts by more than this: tests/train/test_context_parallel.py says why.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.model import get_preset
from a1jax.model.base import run_ids
from a1jax.model.context import zigzag_index
from a1jax.model.deltanet import chunked_delta_rule, conv_delta_rule, recurrent_delta_rule
from a1jax.model.deltanet_cp import context_parallel_deltanet
from tests.model.test_long_context import SEGMENT_IDS, _on_sequence_mesh, _rel

TINY = get_preset("tiny")
RATES = (3.5, 5.6, 10.4, 12.0)  # exp(A_log) per value head (`tiny` layer 0 at seed 3)


def _vjp(fn, args, probe):
    """fn(*args) and the gradients of sum(fn(*args) * probe), in one compile."""
    def run(*a):
        out, vjp = jax.vjp(fn, *a)
        return out, vjp(probe)
    return jax.jit(run)(*args)


def _errors(got, want):
    """Relative errors of the output and of each input gradient."""
    return [_rel(got[0], want[0])] + [_rel(a, w) for a, w in zip(got[1], want[1])]


def _f32(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


def _core_inputs(b=2, t=96, hk=2, hv=4, dk=16, dv=16):
    ks = jax.random.split(jax.random.key(0), 6)
    f64 = jnp.float64
    q = jax.random.normal(ks[0], (b, t, hk, dk), f64)
    k = jax.random.normal(ks[1], (b, t, hk, dk), f64)
    v = jax.random.normal(ks[2], (b, t, hv, dv), f64)
    g = -jnp.asarray(RATES, f64) * jax.nn.softplus(1 + 0.3 * jax.random.normal(ks[3], (b, t, hv),
                                                                              f64))
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, hv), f64))
    probe = jax.random.normal(ks[5], (b, t, hv, dv), f64)
    return (q, k, v, g, beta), probe


@pytest.mark.parametrize("chunk", [8, 16, 64])
def test_chunked_gradients_are_fp32_accurate_under_strong_decay(chunk):
    """Each log decay is a sum of the g it spans: as cum_i - cum_j (cumulative sums reaching
    hundreds) the decay's gradient was 1e-5 off already for chunks of 8."""
    with jax.enable_x64(True):
        args, probe = _core_inputs()
        runs = run_ids(jnp.asarray(np.stack([SEGMENT_IDS, np.ones_like(SEGMENT_IDS)])))
        truth = _vjp(lambda *a: recurrent_delta_rule(*a, runs)[0], args, probe)
        chunked = _vjp(lambda *a: chunked_delta_rule(*a, runs, chunk)[0], _f32(args),
                       _f32(probe))
        recurrent = _vjp(lambda *a: recurrent_delta_rule(*a, runs)[0], _f32(args), _f32(probe))
    # Output, dq, dk, dv, dg, dbeta: measured 1.1e-7 .. 2.1e-7 chunked, 1.2e-7 .. 3.1e-7 token
    # by token.
    for got, rec in zip(_errors(chunked, truth), _errors(recurrent, truth)):
        assert got < 5e-7 and got < 2 * rec + 1e-7, (got, rec)


@pytest.fixture(scope="module")
def layer_case():
    """Conv + delta rule inputs for `tiny` on the packed rows of test_long_context, in fp64."""
    with jax.enable_x64(True):
        b, t, ch = 2, SEGMENT_IDS.size, TINY.linear_conv_dim
        ks = jax.random.split(jax.random.key(1), 5)
        f64 = jnp.float64
        qkv = jax.random.normal(ks[0], (b, t, ch), f64)
        g = -jnp.asarray(RATES, f64) * jax.nn.softplus(
            1 + 0.3 * jax.random.normal(ks[1], (b, t, len(RATES)), f64))
        beta = jax.nn.sigmoid(jax.random.normal(ks[2], (b, t, len(RATES)), f64))
        w_conv = 0.5 * jax.random.normal(ks[3], (TINY.linear_conv_kernel_dim, ch), f64)
        probe = jax.random.normal(ks[4], (b, t, len(RATES), TINY.linear_value_head_dim), f64)
        runs = run_ids(jnp.asarray(np.stack([SEGMENT_IDS, np.ones(t, int)])))

        def unsharded(qkv, g, beta, w_conv):
            return conv_delta_rule(TINY, qkv, runs, None, None, g, beta, w_conv)[0]

        args = (qkv, g, beta, w_conv)
        truth = _vjp(unsharded, args, probe)
        one = _vjp(unsharded, _f32(args), _f32(probe))
    to_np = lambda tree: jax.tree.map(np.asarray, tree)  # fp64 outside the x64 context too
    return to_np(args), to_np(probe), runs, to_np(truth), to_np(one)


def _zigzag(result, order):
    """(out, (dqkv, dg, dbeta, dw_conv)) with time in zigzag order."""
    out, grads = result
    return out[:, order], [a[:, order] for a in grads[:3]] + [grads[3]]


@pytest.mark.parametrize("size", [2, 4, 8])
def test_context_parallel_deltanet_is_the_unsharded_function(size, layer_case, devices):
    """In fp64 the sharded layer (conv halo, per-chunk summaries, the fold) equals the unsharded
    one to 1e-12 (measured 5e-17 .. 5e-16): they are the same function. In fp32 both are within
    4e-7 of it, CP no further than one device (measured 1.6e-7 .. 2.7e-7 for the output and the
    gradients, one device 1.7e-7 .. 3.3e-7; the decay's gradient was 1e-5 off in both before
    its log decays were sums)."""
    args, probe, runs, truth, one = layer_case
    order = np.asarray(zigzag_index(SEGMENT_IDS.size, size))

    def check(shards):
        mix = lambda *a: conv_delta_rule(TINY, *a, widen=True)
        sharded = lambda qkv, g, beta, w_conv: context_parallel_deltanet(
            shards, qkv, g, beta, runs[:, order], w_conv, mix)
        with jax.enable_x64(True):
            zig_args = [jnp.asarray(a[:, order]) for a in args[:3]] + [jnp.asarray(args[3])]
            zig_probe = jnp.asarray(probe[:, order])
            exact = _vjp(sharded, zig_args, zig_probe)
            fp32 = _vjp(sharded, _f32(zig_args), _f32(zig_probe))
        return exact, fp32

    exact, fp32 = _on_sequence_mesh(size, check)
    zig_truth, zig_one = _zigzag(truth, order), _zigzag(one, order)
    for err in _errors(exact, zig_truth):
        assert err < 1e-12, err
    for got, ref in zip(_errors(fp32, zig_truth), _errors(zig_one, zig_truth)):
        assert got < 4e-7 and got < 2 * ref + 1e-7, (got, ref)
