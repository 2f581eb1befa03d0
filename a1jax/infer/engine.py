"""Batched decoding with a live cache: rows are slots that episodes fill, extend and free.

    engine = Engine(config, params, batch=8, max_len=4096)            # or spec=MeshSpec...
    engine.extend({0: prompt_a, 1: prompt_b})                         # prefill (ragged)
    out = engine.generate([0, 1], SamplingParams(temperature=0))      # until a stop token
    engine.extend({0: observation_tokens})                            # continue row 0
    engine.reset([1])                                                 # free row 1's slot

Every token given to `extend` or produced by `generate` enters the row's cache (a sampled stop
token too), so a row's cache always holds exactly the tokens of its record, and a multi-turn
episode appends each observation to the live cache instead of re-rendering and re-prefilling the
conversation. `extend` runs the chunked (training) form of every layer over the new tokens,
`generate` the recurrent form one token at a time inside one jitted `lax.while_loop` with the
state donated.

On a mesh (`spec`), rows are split over the axes the layout gives `act_batch` (data and expert)
and the parameters keep whatever shardings they come with: a training state's parameters feed
the engine as they are, with no copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax.errors import A1Error
from a1jax.infer.sampling import SamplingParams, sample
from a1jax.model import ModelConfig, Transformer
from a1jax.model.cache import Cache, init_cache
from a1jax.sharding.mesh import MeshSpec, logical_spec, make_mesh

FINISH = ("running", "stop", "length", "context")  # why a row stopped generating
_RUNNING, _STOP, _LENGTH, _CONTEXT = range(4)


class ContextFull(A1Error):
    """Tokens that would not fit in a row's cache (`max_len`)."""


class DecodeState(NamedTuple):
    cache: Cache
    logits_bv: jax.Array  # float32: each row's next-token logits, after its last token
    seen_bv: jax.Array  # bool: tokens present in the row (the repetition penalty reads it)


class Generated(NamedTuple):
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop", "length" (max_new_tokens) or "context" (the cache is full)


def _bucket(n: int, chunk: int) -> int:
    """A padded length for n new tokens: a power of two (>= 8) up to `chunk`, so that prompts
    of any length compile a handful of programs."""
    return min(chunk, max(8, 1 << (n - 1).bit_length()))


class Engine:
    def __init__(self, config: ModelConfig, params: Any, *, batch: int, max_len: int,
                 spec: MeshSpec | None = None, prefill_chunk: int = 1024):
        if batch < 1 or max_len < 2:
            raise A1Error(f"batch must be >= 1 and max_len >= 2, got {batch} and {max_len}")
        self.config, self.params = config, params
        self.batch, self.max_len, self.prefill_chunk = batch, max_len, prefill_chunk
        self.mesh = None if spec is None else make_mesh(spec)
        if spec is not None:
            # Rows are whole on a device: decoding never splits the time axis. A training
            # layout with a `sequence` axis still serves (its devices then share rows' work
            # as XLA sees fit), so a training state's parameters feed the engine as they are.
            spec = dataclasses.replace(spec, rules=(("act_seq", None),) + tuple(spec.rules))
            row_axes = logical_spec(("act_batch",), spec.rules)[0]
            row_axes = () if row_axes is None else (
                (row_axes,) if isinstance(row_axes, str) else tuple(row_axes))
            shards = int(np.prod([spec.axes[a] for a in row_axes]))
            if batch % shards:
                raise A1Error(f"batch {batch} must be a multiple of the {shards} row shards of "
                              f"mesh axes {', '.join(row_axes)}")
            self._row_axes = row_axes
        self.spec = spec
        self.model = Transformer(config)
        # One token per row: the MoE runs as one batched matmul over fixed expert slots
        # (a1jax.model.dispatch.batched); prompts keep the configured dispatch.
        self.decode_model = Transformer(config.replace(moe_dispatch="batched"))
        self.lengths = np.zeros(batch, np.int64)  # host mirror of the cache's lengths
        with self.context():
            self._init = jax.jit(self._empty_state, out_shardings=self._state_sharding())
            self.state = self._init()
        self._extend = jax.jit(self._extend_fn, donate_argnums=(1,),
                               out_shardings=self._state_sharding())
        self._reset = jax.jit(self._reset_fn, donate_argnums=(0,),
                              out_shardings=self._state_sharding())
        self._generate = jax.jit(self._generate_fn, static_argnums=(4,), donate_argnums=(1,),
                                 out_shardings=(self._state_sharding(), None, None, None, None))

    # ---- the mesh ------------------------------------------------------------------------

    @contextlib.contextmanager
    def context(self):
        if self.mesh is None:
            yield
            return
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.spec.rules):
            yield

    def _state_sharding(self):
        if self.mesh is None:
            return None
        def spec(path, leaf):
            parts = [None] * len(leaf.shape)
            parts[self._row_axis(path)] = self._row_axes or None
            return NamedSharding(self.mesh, P(*parts))

        return jax.tree_util.tree_map_with_path(spec, jax.eval_shape(self._empty_state))

    def _row_axis(self, path) -> int:
        """Which axis of a state leaf is the row: 1 in a scanned model's stacked layer caches
        (after the repeats), else 0."""
        in_layers = any(getattr(k, "name", None) == "layers" for k in path)
        return 1 if (self.config.scan_layers and in_layers) else 0

    # ---- the jitted programs --------------------------------------------------------------

    def _empty_state(self) -> DecodeState:
        c = self.config
        return DecodeState(init_cache(c, self.batch, self.max_len),
                           jnp.zeros((self.batch, c.vocab_size), jnp.float32),
                           jnp.zeros((self.batch, c.vocab_size), bool))

    def _forward(self, params, state: DecodeState, tokens_bt, valid_bt) -> DecodeState:
        """Appends the valid tokens; rows with any take the logits after their last one."""
        model = self.decode_model if tokens_bt.shape[1] == 1 else self.model
        out = model.apply({"params": params}, tokens_bt, cache=state.cache, valid_bt=valid_bt,
                          head=False)
        count_b = jnp.sum(valid_bt, axis=1)
        last_b = jnp.maximum(count_b - 1, 0)
        hidden_bd = jnp.take_along_axis(out.hidden_btd, last_b[:, None, None], axis=1)[:, 0]
        logits_bv = jnp.einsum("bd,dv->bv", hidden_bd, out.head_dx,
                               preferred_element_type=jnp.float32)
        logits_bv = jnp.where((count_b > 0)[:, None], logits_bv, state.logits_bv)
        rows_b1 = jnp.arange(tokens_bt.shape[0])[:, None]
        seen = state.seen_bv.at[rows_b1, jnp.where(valid_bt, tokens_bt, self.config.vocab_size)
                                ].set(True, mode="drop")
        return DecodeState(out.cache, logits_bv, seen)

    def _extend_fn(self, params, state, tokens_bt, valid_bt):
        return self._forward(params, state, tokens_bt, valid_bt)

    def _reset_fn(self, state: DecodeState, rows_b) -> DecodeState:
        def clear(path, x):
            axis = self._row_axis(path)
            shape = [1] * x.ndim
            shape[axis] = x.shape[axis]
            return jnp.where(rows_b.reshape(shape), jnp.zeros((), x.dtype), x)
        return jax.tree_util.tree_map_with_path(clear, state)

    def _generate_fn(self, params, state: DecodeState, active_b, key,
                     sampling: SamplingParams):
        b, n = self.batch, sampling.max_new_tokens
        stops = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
        vocab = self.config.vocab_size

        def cond(carry):
            step, _, _, _, finish_b, _, _ = carry
            return (step < n) & jnp.any(active_b & (finish_b == _RUNNING))

        def body(carry):
            step, state, tokens_bn, logp_bn, finish_b, count_b, counts_bv = carry
            full_b = state.cache.lengths_b >= self.max_len
            finish_b = jnp.where(active_b & (finish_b == _RUNNING) & full_b, _CONTEXT, finish_b)
            live_b = active_b & (finish_b == _RUNNING)
            token_b, logp_b = sample(state.logits_bv, jax.random.fold_in(key, step), sampling,
                                     counts_bv, state.seen_bv)
            token_b = jnp.where(live_b, token_b, 0)
            tokens_bn = tokens_bn.at[:, step].set(jnp.where(live_b, token_b, -1))
            logp_bn = logp_bn.at[:, step].set(jnp.where(live_b, logp_b, 0.0))
            count_b = count_b + live_b
            counts_bv = counts_bv.at[jnp.arange(b), jnp.where(live_b, token_b, vocab)].add(
                1, mode="drop")
            state = self._forward(params, state, token_b[:, None], live_b[:, None])
            stopped = live_b & jnp.isin(token_b, stops)
            finish_b = jnp.where(stopped, _STOP, finish_b)
            finish_b = jnp.where(live_b & ~stopped & (step + 1 == n), _LENGTH, finish_b)
            return step + 1, state, tokens_bn, logp_bn, finish_b, count_b, counts_bv

        carry = (jnp.int32(0), state, jnp.full((b, n), -1, jnp.int32), jnp.zeros((b, n)),
                 jnp.zeros(b, jnp.int32), jnp.zeros(b, jnp.int32),
                 jnp.zeros((b, vocab), jnp.int32))
        _, state, tokens_bn, logp_bn, finish_b, count_b, _ = jax.lax.while_loop(cond, body, carry)
        return state, tokens_bn, logp_bn, count_b, finish_b

    # ---- the host API -----------------------------------------------------------------------

    def room(self, row: int) -> int:
        """How many more tokens row `row` can take."""
        return int(self.max_len - self.lengths[row])

    def _rows(self, rows: Sequence[int]) -> list[int]:
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < self.batch]
        if bad:
            raise A1Error(f"row {bad[0]} is not in [0, {self.batch})")
        return rows

    def extend(self, new_tokens: Mapping[int, Sequence[int]]) -> None:
        """Appends each row's tokens to its cache (rows not named are left as they are)."""
        rows = self._rows(new_tokens)
        vocab = self.config.vocab_size
        for r in rows:
            toks = new_tokens[r]
            if len(toks) > self.room(r):
                raise ContextFull(f"row {r}: {len(toks)} new tokens do not fit its cache "
                                  f"({self.lengths[r]} of {self.max_len} used)")
            if any(not 0 <= t < vocab for t in toks):
                raise A1Error(f"row {r}: token ids must be in [0, {vocab})")
        longest = max((len(new_tokens[r]) for r in rows), default=0)
        for start in range(0, longest, self.prefill_chunk):
            width = _bucket(min(self.prefill_chunk, longest - start), self.prefill_chunk)
            tokens = np.zeros((self.batch, width), np.int32)
            valid = np.zeros((self.batch, width), bool)
            for r in rows:
                piece = list(new_tokens[r][start:start + width])
                tokens[r, :len(piece)] = piece
                valid[r, :len(piece)] = True
            with self.context():
                self.state = self._extend(self.params, self.state, tokens, valid)
        for r in rows:
            self.lengths[r] += len(new_tokens[r])

    def reset(self, rows: Sequence[int] | None = None) -> None:
        """Empties the given rows (all by default): their slots are free for new sequences."""
        rows = list(range(self.batch)) if rows is None else self._rows(rows)
        mask = np.zeros(self.batch, bool)
        mask[rows] = True
        with self.context():
            self.state = self._reset(self.state, mask)
        self.lengths[mask] = 0

    def generate(self, rows: Sequence[int], sampling: SamplingParams,
                 key: jax.Array | None = None) -> dict[int, Generated]:
        """Samples a continuation for each of `rows` (each must hold at least one token) until
        one of the stop tokens, `max_new_tokens`, or a full cache."""
        rows = self._rows(rows)
        empty = [r for r in rows if self.lengths[r] == 0]
        if empty:
            raise A1Error(f"row {empty[0]} holds no tokens: extend it with a prompt first")
        active = np.zeros(self.batch, bool)
        active[rows] = True
        key = jax.random.key(sampling.seed) if key is None else key
        with self.context():
            # The seed lives in the key: as part of the static settings it would recompile.
            self.state, tokens, logp, count, finish = self._generate(
                self.params, self.state, active, key, sampling.replace(seed=0))
        tokens, logp, count, finish = jax.device_get((tokens, logp, count, finish))
        out = {}
        for r in rows:
            n = int(count[r])
            self.lengths[r] += n
            out[r] = Generated(tokens[r, :n].tolist(), logp[r, :n].tolist(),
                               FINISH[int(finish[r])])
        return out
