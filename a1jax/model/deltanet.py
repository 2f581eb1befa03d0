"""Gated DeltaNet (linear attention): causal depthwise conv, then the gated delta rule.

Per value head, with state S (k x v) starting from zero and reset at every segment start:
    S = S * exp(g_t);  S = S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t
`recurrent_delta_rule` runs this token by token (decoding, and the reference);
`chunked_delta_rule` computes the same function a chunk at a time (training).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model.base import (after, normal, param, project, project_many,
                              rms_normalize)
from a1jax.model.cache import DeltaNetCache
from a1jax.model.config import ModelConfig
from a1jax.model.context import sequence_shards
from a1jax.model.deltanet_cp import context_parallel_deltanet


def _shift(a: jax.Array, steps: int, fill=0) -> jax.Array:
    """`a` moved `steps` tokens later along time (earlier for negative steps), `fill` where
    nothing comes in."""
    if steps == 0:
        return a
    t = a.shape[1]
    pad = [(0, 0)] * a.ndim
    pad[1] = (steps, 0) if steps > 0 else (0, -steps)
    padded = jnp.pad(a, pad, constant_values=fill)
    return padded[:, :t] if steps > 0 else padded[:, -steps:]


def _same_run(runs_bt: jax.Array, steps: int) -> jax.Array:
    """[b, t, 1]: token t - steps exists and is in token t's segment."""
    return (_shift(runs_bt, steps, fill=-1) == runs_bt)[..., None]


def _conv(x_btc, w_wc, runs_bt):
    window = w_wc.shape[0]
    out = x_btc * w_wc[window - 1]
    for s in range(1, window):
        out = out + jnp.where(_same_run(runs_bt, s), _shift(x_btc, s), 0) * w_wc[window - 1 - s]
    return out


def causal_conv(x_btc: jax.Array, w_wc: jax.Array, runs_bt: jax.Array) -> jax.Array:
    """Depthwise causal conv over time, window w, left zero padding; a tap never reads across a
    segment start, so each packed segment sees exactly what it would see alone.

    `w_wc[w - 1]` multiplies the current token, `w_wc[0]` the oldest one in the window."""
    return _conv(x_btc, w_wc, runs_bt)


@jax.custom_vjp
def conv_silu(x_btc: jax.Array, w_wc: jax.Array, runs_bt: jax.Array) -> jax.Array:
    """silu(causal_conv(x)). Its backward keeps only x (and recomputes the conv, a few
    multiply-adds a channel): autodiff would keep each tap's masked, shifted copy of x, three
    [b, t, channels] activations per layer (144 MiB of the bench model's step)."""
    return jax.nn.silu(_conv(x_btc, w_wc, runs_bt))


def _conv_silu_fwd(x_btc, w_wc, runs_bt):
    return conv_silu(x_btc, w_wc, runs_bt), (x_btc, w_wc, runs_bt)


def _conv_silu_bwd(residuals, g_btc):
    x, w, runs = residuals
    window = w.shape[0]
    f32 = jnp.promote_types(x.dtype, jnp.float32)
    # Recomputed from a copy that depends on the cotangent (`after`): XLA would otherwise merge
    # the recomputation's shifted copies of x with the forward's and keep those alive instead.
    x, = after(g_btc, x)
    a = _conv(x, w, runs).astype(f32)
    sig = jax.nn.sigmoid(a)
    da = (g_btc.astype(f32) * sig * (1 + a * (1 - sig))).astype(x.dtype)
    # out[t] += w[window-1-s] * x[t-s] (same run)  =>  dx[t] += w[window-1-s] * da[t+s]
    dx = da * w[window - 1]
    dw = [jnp.sum((da * x).astype(f32), axis=(0, 1))]
    for s in range(1, window):
        same = _same_run(runs, s)
        dx = dx + jnp.where(_shift(same, -s, fill=False), _shift(da, -s), 0) * w[window - 1 - s]
        dw.append(jnp.sum(jnp.where(same, da * _shift(x, s), 0).astype(f32), axis=(0, 1)))
    none = np.zeros(runs.shape, jax.dtypes.float0)
    return dx.astype(x.dtype), jnp.stack(dw[::-1]).astype(w.dtype), none


conv_silu.defvjp(_conv_silu_fwd, _conv_silu_bwd)


def _prepare(q_bthk, k_bthk, v_bthv, g_bth, beta_bth, repeat: bool = True):
    """Shared preamble: value heads share key heads (h // ratio), q/k L2-normalised, q scaled,
    everything in fp32 (the recurrence must stay fp32 whatever the compute dtype; fp64 inputs
    stay fp64, the ground truth of the precision tests). With `repeat` False, q and k stay
    per key head (the caller repeats them where it needs them per value head)."""
    ratio = v_bthv.shape[2] // q_bthk.shape[2]
    f32 = jnp.promote_types(jnp.result_type(q_bthk, k_bthk, v_bthv, g_bth, beta_bth),
                            jnp.float32)
    q, k = q_bthk.astype(f32), k_bthk.astype(f32)
    q = q * jax.lax.rsqrt(jnp.sum(q * q, axis=-1, keepdims=True) + 1e-6)
    k = k * jax.lax.rsqrt(jnp.sum(k * k, axis=-1, keepdims=True) + 1e-6)
    q = q * (q.shape[-1] ** -0.5)
    if repeat:
        q, k = jnp.repeat(q, ratio, axis=2), jnp.repeat(k, ratio, axis=2)
    return q, k, v_bthv.astype(f32), g_bth.astype(f32), beta_bth.astype(f32)


_INVERSE_BLOCK = 16  # diagonal blocks solved by substitution; the rest are matmuls


@jax.custom_vjp
def unit_lower_inverse(lower_cc: jax.Array) -> jax.Array:
    """(I + L)^-1 for strictly lower-triangular L (batched over leading axes).

    Block forward substitution: the 16 x 16 diagonal blocks are inverted row by row
    (`_substitute`), then each block row of the inverse is one product with the rows above it,
    X_i = -D_i L_i,<i X_<i (D_i the inverted diagonal block). Row-by-row substitution over all
    c rows is c steps of a matrix-vector product each; this is c/16 steps of matmuls plus 16
    small steps (the bench model's 256 chunk matrices of 64 x 64 on 2 CPU cores: 13 -> 4 ms).

    Written by hand rather than with `jax.lax.linalg.triangular_solve`: on XLA's CPU backend that
    solver is a LAPACK custom call that waits on the intra-op thread pool, and with several
    devices (or a few cores) each waiting on the same pool the whole step deadlocks (seen here on
    2 cores with 8 simulated devices). This form is matmuls and a loop XLA schedules itself."""
    c = lower_cc.shape[-1]
    size = _INVERSE_BLOCK if c % _INVERSE_BLOCK == 0 else c
    hp = jax.lax.Precision.HIGHEST
    block = lambda a, i, j: a[..., i * size:(i + 1) * size, j * size:(j + 1) * size]
    diag = _substitute(jnp.stack([block(lower_cc, i, i) for i in range(c // size)], axis=-3))
    rows = []  # block rows of the inverse, each [..., size, c]
    for i in range(c // size):
        d_i = diag[..., i, :, :]
        right = jnp.zeros((*d_i.shape[:-1], c - (i + 1) * size), d_i.dtype)
        if i == 0:
            rows.append(jnp.concatenate([d_i, right], axis=-1))
            continue
        above = jnp.concatenate(rows, axis=-2)[..., :i * size]  # X_<i, [..., i*size, i*size]
        strip = lower_cc[..., i * size:(i + 1) * size, :i * size]
        x_i = -jnp.matmul(d_i, jnp.matmul(strip, above, precision=hp), precision=hp)
        rows.append(jnp.concatenate([x_i, d_i, right], axis=-1))
    return jnp.concatenate(rows, axis=-2)


def _substitute(lower_cc: jax.Array) -> jax.Array:
    """(I + L)^-1 by forward substitution, row by row."""
    c = lower_cc.shape[-1]
    a = -lower_cc
    cols = jnp.arange(c)

    def row(i, a):
        r = a[..., i, :]  # zero from column i on, so only the finished rows < i contribute
        new = r + jnp.einsum("...j,...jk->...k", r, a, precision=jax.lax.Precision.HIGHEST)
        return a.at[..., i, :].set(jnp.where(cols < i, new, 0.0))

    return jax.lax.fori_loop(1, c, row, a) + jnp.eye(c, dtype=lower_cc.dtype)


def _unit_lower_inverse_fwd(lower_cc):
    inv = unit_lower_inverse(lower_cc)
    return inv, inv


def _unit_lower_inverse_bwd(inv, g):
    # d(A^-1) = -A^-1 dA A^-1, so dL = -(A^-T g A^-T), restricted to the strictly lower part.
    hp = jax.lax.Precision.HIGHEST
    inv_t = jnp.swapaxes(inv, -1, -2)
    return (jnp.tril(-jnp.matmul(jnp.matmul(inv_t, g, precision=hp), inv_t, precision=hp), -1),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def recurrent_delta_rule(q_bthk, k_bthk, v_bthv, g_bth, beta_bth, runs_bt,
                         initial_state_bhkv=None):
    """The gated delta rule one token at a time. Returns (o_bthv fp32, final state)."""
    q, k, v, g, beta = _prepare(q_bthk, k_bthk, v_bthv, g_bth, beta_bth)
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    prev_runs = jnp.concatenate([runs_bt[:, :1], runs_bt[:, :-1]], axis=1)
    keep_bt = (runs_bt == prev_runs).astype(q.dtype)  # 0 at a segment start: reset
    state = (jnp.zeros((b, h, dk, dv), q.dtype) if initial_state_bhkv is None
             else initial_state_bhkv.astype(q.dtype))

    def step(s_bhkv, xs):
        q_t, k_t, v_t, g_t, beta_t, keep_t = xs
        s_bhkv = s_bhkv * (jnp.exp(g_t) * keep_t[:, None])[..., None, None]
        predicted_bhv = jnp.einsum("bhkv,bhk->bhv", s_bhkv, k_t)
        delta_bhv = (v_t - predicted_bhv) * beta_t[..., None]
        s_bhkv = s_bhkv + k_t[..., :, None] * delta_bhv[..., None, :]
        return s_bhkv, jnp.einsum("bhkv,bhk->bhv", s_bhkv, q_t)

    time_major = [jnp.moveaxis(a, 1, 0) for a in (q, k, v, g, beta, keep_bt)]
    state, o_tbhv = jax.lax.scan(step, state, time_major)
    return jnp.moveaxis(o_tbhv, 0, 1), state


def chunked_delta_rule(q_bthk, k_bthk, v_bthv, g_bth, beta_bth, runs_bt, chunk_size: int,
                       initial_state_bhkv=None):
    """The gated delta rule, parallel within chunks of `chunk_size` and sequential across them
    (WY / UT form). Same function as `recurrent_delta_rule`, segment resets included: every
    interaction across a segment start is masked rather than decayed to zero, so resets cost no
    precision. Returns (o_bthv fp32, final state)."""
    # q and k per key head: their products within a chunk are shared by the value heads that
    # read that key head (each then scaled by its own decays and betas).
    q, k, v, g, beta = _prepare(q_bthk, k_bthk, v_bthv, g_bth, beta_bth, repeat=False)
    b, t, h, dv = v.shape
    dk = q.shape[-1]
    ratio = h // q.shape[2]
    c = chunk_size
    pad = (-t) % c
    # Padding goes at the end, inside the last run: with g = 0 and beta = k = 0 it neither decays
    # nor writes the state, so outputs and the final state are those of the real tokens.
    padt = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    q, k, v, g, beta = (padt(a) for a in (q, k, v, g, beta))
    runs = jnp.pad(runs_bt, [(0, 0), (0, pad)], mode="edge")
    n = (t + pad) // c

    # [b, t, h, ...] -> [n, b, h, c, ...], chunk-major: the scan below reads chunks along the
    # leading axis in place (with chunks inside [b, h], each of its inputs was a transposed copy).
    to_chunks = lambda a: jnp.moveaxis(a.reshape(b, n, c, a.shape[2], *a.shape[3:]), (1, 3),
                                       (0, 2))
    per_value_head = lambda a: jnp.repeat(a, ratio, axis=2)  # [n, b, key heads, ...]
    q, k, v = to_chunks(q), to_chunks(k), to_chunks(v)
    g, beta = to_chunks(g[..., None])[..., 0], to_chunks(beta[..., None])[..., 0]
    runs_nc = jnp.moveaxis(runs.reshape(b, 1, n, c), 2, 0)  # [n, b, 1, c]
    # The run each chunk's incoming state belongs to: that of the token before the chunk.
    prev_run = jnp.concatenate([runs_nc[:1, ..., :1], runs_nc[:-1, ..., -1:]], axis=0)
    from_start = (runs_nc == prev_run).astype(q.dtype)  # [n,b,1,c]: state reaches here
    same_cc = runs_nc[..., :, None] == runs_nc[..., None, :]  # [n,b,1,c,c]
    causal_cc = jnp.tril(jnp.ones((c, c), bool))
    strict_cc = jnp.tril(jnp.ones((c, c), bool), -1)
    mask_cc = same_cc & causal_cc

    hp = jax.lax.Precision.HIGHEST
    # Log decays are sums of the g they span, never differences of cumulative sums: with strong
    # decay a chunk's cumulative sum reaches hundreds, and cum_i - cum_j would put its rounding
    # (eps |cum|) into every decay between neighbours, and through them into the gradient of g.
    # Summed this way, the backward pass sums each g's cotangent without cancellation too. The
    # [c, c] sums are a product with a triangle of ones: a cumulative sum over that axis is a
    # reduce-window on XLA's CPU backend, c additions per element, forward and backward.
    cum = jnp.cumsum(g, axis=-1)  # [n,b,h,c] log decay from chunk start through each token
    span_cc = jnp.einsum("im,...mj->...ij", causal_cc.astype(g.dtype),
                         jnp.where(strict_cc, g[..., :, None], 0.0),
                         precision=hp)  # g over (j, i]
    decay_cc = jnp.where(mask_cc, jnp.exp(span_cc), 0.0)
    v_beta = v * beta[..., None]

    kk = per_value_head(jnp.einsum("...ik,...jk->...ij", k, k, precision=hp))
    qk = per_value_head(jnp.einsum("...ik,...jk->...ij", q, k, precision=hp))
    q, k = per_value_head(q), per_value_head(k)
    k_beta = k * beta[..., None]
    lower = jnp.tril(kk * (beta[..., :, None] * decay_cc), -1)
    inv = unit_lower_inverse(lower)  # (I + lower)^-1, the UT transform
    u = jnp.einsum("...ij,...jv->...iv", inv, v_beta, precision=hp)  # new values
    w = jnp.einsum("...ij,...jk->...ik", inv, k_beta * (jnp.exp(cum) * from_start)[..., None],
                   precision=hp)  # how tokens read the incoming state
    intra = qk * decay_cc
    q_read = q * (jnp.exp(cum) * from_start)[..., None]
    last_run = runs_nc[..., -1:]
    k_write = k * (jnp.exp(span_cc[..., -1, :]) * (runs_nc == last_run))[..., None]
    chunk_decay = jnp.exp(cum[..., -1]) * from_start[..., -1]  # [n,b,h]

    state = (jnp.zeros((b, h, dk, dv), q.dtype) if initial_state_bhkv is None
             else initial_state_bhkv.astype(q.dtype))

    def step(s_bhkv, xs):
        u_n, w_n, intra_n, q_n, k_n, decay_n = xs
        v_new = u_n - jnp.einsum("bhck,bhkv->bhcv", w_n, s_bhkv, precision=hp)
        o_n = (jnp.einsum("bhck,bhkv->bhcv", q_n, s_bhkv, precision=hp)
               + jnp.einsum("bhij,bhjv->bhiv", intra_n, v_new, precision=hp))
        s_bhkv = (s_bhkv * decay_n[..., None, None]
                  + jnp.einsum("bhck,bhcv->bhkv", k_n, v_new, precision=hp))
        return s_bhkv, o_n

    state, o_nbhcv = jax.lax.scan(step, state, (u, w, intra, q_read, k_write, chunk_decay))
    o_bthv = jnp.moveaxis(o_nbhcv, (0, 2), (1, 3)).reshape(b, n * c, h, dv)
    return o_bthv[:, :t], state


def conv_delta_rule(config: ModelConfig, qkv_btc, runs_bt, halo_btc, halo_runs_bt, g_bth,
                    beta_bth, w_conv_wc, widen: bool = False, initial_state_bhkv=None,
                    impl: str | None = None):
    """The DeltaNet core on rows: causal conv (with `halo_btc` as left context, or zeros when
    None), SiLU, the q/k/v split and the delta rule from `initial_state_bhkv` (zeros when None).
    Returns (o_bthv fp32, final state). `impl` overrides the config's `deltanet_impl`.

    `widen` appends dk value columns per head that start from the identity state and receive
    no values: they carry the affine map from incoming to outgoing state (see deltanet_cp)."""
    c = config
    hk, hv = c.linear_num_key_heads, c.linear_num_value_heads
    dk, dv = c.linear_key_head_dim, c.linear_value_head_dim
    b, t, _ = qkv_btc.shape
    if halo_btc is not None:
        halo = halo_btc.shape[1]
        qkv_btc = conv_silu(jnp.concatenate([halo_btc, qkv_btc], axis=1), w_conv_wc,
                            jnp.concatenate([halo_runs_bt, runs_bt], axis=1))[:, halo:]
    else:
        qkv_btc = conv_silu(qkv_btc, w_conv_wc, runs_bt)
    q_bthk = qkv_btc[..., : hk * dk].reshape(b, t, hk, dk)
    k_bthk = qkv_btc[..., hk * dk: 2 * hk * dk].reshape(b, t, hk, dk)
    v_bthv = qkv_btc[..., 2 * hk * dk:].reshape(b, t, hv, dv)
    initial = initial_state_bhkv
    if widen:
        f32 = jnp.promote_types(v_bthv.dtype, jnp.float32)
        v_bthv = jnp.concatenate([v_bthv.astype(f32), jnp.zeros((b, t, hv, dk), f32)], axis=-1)
        eye = jnp.broadcast_to(jnp.eye(dk, dtype=f32), (b, hv, dk, dk))
        initial = jnp.concatenate([jnp.zeros((b, hv, dk, dv), f32), eye], axis=-1)
    if (impl or c.deltanet_impl) == "recurrent":
        return recurrent_delta_rule(q_bthk, k_bthk, v_bthv, g_bth, beta_bth, runs_bt, initial)
    return chunked_delta_rule(q_bthk, k_bthk, v_bthv, g_bth, beta_bth, runs_bt,
                              c.deltanet_chunk_size, initial)


class GatedDeltaNet(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd: jax.Array, runs_bt: jax.Array, cache: DeltaNetCache | None = None,
                 valid_bt: jax.Array | None = None):
        """With `cache` (decoding): continues each row from its cached conv window and state
        (`valid_bt` marks the real tokens, a prefix of each row); returns (out, new cache)."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        d, hv, dv = c.hidden_size, c.linear_num_value_heads, c.linear_value_head_dim
        ch = c.linear_conv_dim
        init = normal(c.initializer_range)
        w_qkv = param(self, "in_proj_qkv", (d, ch), ("embed", "linear_conv"), init)
        w_z = param(self, "in_proj_z", (d, hv, dv), ("embed", "linear_heads", "head_dim"), init)
        w_b = param(self, "in_proj_b", (d, hv), ("embed", "linear_heads"), init)
        w_a = param(self, "in_proj_a", (d, hv), ("embed", "linear_heads"), init)
        window = c.linear_conv_kernel_dim
        w_conv = param(self, "conv1d", (window, ch), ("conv_window", "linear_conv"),
                       nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=0,
                                                        out_axis=1))
        a_log = param(self, "A_log", (hv,), ("linear_heads",),
                      lambda key, shape, dtype: jnp.log(
                          jax.random.uniform(key, shape, dtype, 0.01, 16.0)))
        dt_bias = param(self, "dt_bias", (hv,), ("linear_heads",), nn.initializers.ones_init())
        w_norm = param(self, "norm", (dv,), ("head_dim",), nn.initializers.ones_init())
        w_out = param(self, "out_proj", (hv, dv, d), ("linear_heads", "head_dim", "embed"), init)

        wide = jnp.promote_types(dtype, jnp.float32)  # gates in fp32 (fp64 stays fp64)
        x = x_btd.astype(dtype)
        qkv_btc, z_bthv, b_bth, a_bth = project_many(
            x, [w.astype(dtype) for w in (w_qkv, w_z, w_b, w_a)])
        beta_bth = jax.nn.sigmoid(b_bth)
        a_bth = a_bth.astype(wide)
        g_bth = -jnp.exp(a_log) * jax.nn.softplus(a_bth + dt_bias)
        w_conv = w_conv.astype(dtype)

        shards = None if self.is_initializing() else sequence_shards(c, x.shape[1])
        if cache is not None:
            o_bthv, cache = cached_deltanet(c, cache, qkv_btc, g_bth, beta_bth, valid_bt, w_conv)
        elif shards is None:
            o_bthv, _ = conv_delta_rule(c, qkv_btc, runs_bt, None, None, g_bth, beta_bth, w_conv)
        else:
            mix = lambda *args: conv_delta_rule(c, *args, widen=True)
            o_bthv = context_parallel_deltanet(shards, qkv_btc, g_bth, beta_bth, runs_bt, w_conv,
                                               mix)
        # Gated RMSNorm per value head: plain multiplier w (initialised to 1), then silu(z).
        o_bthv = (w_norm * rms_normalize(o_bthv, c.rms_norm_eps).astype(dtype))
        o_bthv = (o_bthv * jax.nn.silu(z_bthv.astype(wide))).astype(dtype)
        out_btd = project(o_bthv, w_out.astype(dtype), 2)
        return out_btd if cache is None else (out_btd, cache)


def cached_deltanet(config: ModelConfig, cache: DeltaNetCache, qkv_btc, g_bth, beta_bth,
                    valid_bt, w_conv_wc) -> tuple[jax.Array, DeltaNetCache]:
    """The DeltaNet core continued from a cache: the cached conv inputs are the conv's left
    context, the cached state the delta rule's initial state. A padding token (not valid)
    neither decays nor writes the state (g = 0, beta = 0), so each row's state is that after its
    own tokens; the new window is the last conv_kernel - 1 inputs up to each row's last valid
    token. One token (decode) runs the recurrent form, more (prefill) the chunked one."""
    window = cache.conv_bwc.shape[1]
    valid = valid_bt[..., None]
    g_bth = jnp.where(valid, g_bth, 0.0)
    beta_bth = jnp.where(valid, beta_bth, 0.0)
    same_bt = jnp.zeros(valid_bt.shape, jnp.int32)
    halo_bwc = cache.conv_bwc.astype(qkv_btc.dtype)
    o_bthv, state = conv_delta_rule(
        config, qkv_btc, same_bt, halo_bwc, jnp.zeros(halo_bwc.shape[:2], jnp.int32), g_bth, beta_bth, w_conv_wc,
        initial_state_bhkv=cache.state_bhkv,
        impl="recurrent" if qkv_btc.shape[1] == 1 else "chunked")
    inputs_btc = jnp.concatenate([halo_bwc, qkv_btc], axis=1)
    count_b = jnp.sum(valid_bt, axis=1).astype(jnp.int32)
    conv = jax.vmap(lambda x, n: jax.lax.dynamic_slice_in_dim(x, n, window, axis=0))(
        inputs_btc, count_b)
    return o_bthv, DeltaNetCache(conv.astype(cache.conv_bwc.dtype),
                                 state.astype(cache.state_bhkv.dtype))
