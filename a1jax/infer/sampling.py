"""Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p.

Each transform is a small pure function on [batch, vocab] (or [batch, candidates]) float32
logits; `sample` composes them in the order vLLM applies them (penalties, temperature, top-k,
top-p, min-p) and returns each row's token with its log-probability under the distribution it
was drawn from (the processed one: what RL's importance ratios need; a greedy pick's is its
log-softmax after penalties). Tokens outside the kept set get -inf, so they are never drawn.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from a1jax.errors import A1Error

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy; top_k 0, top_p 1, min_p 0 and penalties of
    0 (presence) / 1 (repetition) are off. Penalties follow vLLM: presence subtracts a constant
    from every token already generated in this request; repetition divides positive logits (and
    multiplies negative ones) of every token in the prompt or the output."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    stop_tokens: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise A1Error(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise A1Error(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise A1Error(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise A1Error(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise A1Error(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise A1Error(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


# Agents-A1's release settings (its model card): what its evaluation samples with.
RELEASE = SamplingParams(temperature=0.85, top_p=0.95, top_k=20, presence_penalty=1.1)


def apply_penalties(logits_bv: jax.Array, output_counts_bv: jax.Array | None,
                    seen_bv: jax.Array | None, presence: float,
                    repetition: float) -> jax.Array:
    if repetition != 1.0 and seen_bv is not None:
        penalised = jnp.where(logits_bv > 0, logits_bv / repetition, logits_bv * repetition)
        logits_bv = jnp.where(seen_bv, penalised, logits_bv)
    if presence != 0.0 and output_counts_bv is not None:
        logits_bv = logits_bv - presence * (output_counts_bv > 0).astype(logits_bv.dtype)
    return logits_bv


def top_p_mask(sorted_logits_bk: jax.Array, top_p: float) -> jax.Array:
    """[b, k] bool over candidates sorted by descending logit: the shortest prefix whose
    probability reaches `top_p` (always at least the first)."""
    probs = jax.nn.softmax(sorted_logits_bk, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the candidates ahead of each
    return before < top_p


def min_p_mask(logits_bk: jax.Array, min_p: float) -> jax.Array:
    """[b, k] bool: candidates whose probability is at least `min_p` times the most likely's."""
    logp = jax.nn.log_softmax(logits_bk, axis=-1)
    return logp >= jnp.max(logp, axis=-1, keepdims=True) + jnp.log(min_p)


def processed_candidates(logits_bv: jax.Array, params: SamplingParams,
                         output_counts_bv: jax.Array | None = None,
                         seen_bv: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(logits_bk, ids_bk): the candidate tokens and their processed logits (-inf where cut).

    With top-k (or top-p, which needs an order) the candidates are the k best (all, sorted, for
    top-p alone); otherwise the whole vocabulary in order, unsorted. Working on k candidates
    keeps top-p's sort off a 248K vocabulary when top-k is set (the release settings)."""
    logits_bv = apply_penalties(logits_bv.astype(jnp.float32), output_counts_bv, seen_bv,
                                params.presence_penalty, params.repetition_penalty)
    if not params.greedy:
        logits_bv = logits_bv / params.temperature
    vocab = logits_bv.shape[-1]
    k = min(params.top_k, vocab) if params.top_k else (vocab if params.top_p < 1 else 0)
    if params.greedy or not k:
        values, ids = logits_bv, jnp.broadcast_to(jnp.arange(vocab, dtype=jnp.int32),
                                                  logits_bv.shape)
    else:
        values, ids = jax.lax.top_k(logits_bv, k)
    if params.greedy:
        return values, ids
    if params.top_p < 1:
        values = jnp.where(top_p_mask(values, params.top_p), values, NEG_INF)
    if params.min_p > 0:
        values = jnp.where(min_p_mask(values, params.min_p), values, NEG_INF)
    return values, ids


def sample(logits_bv: jax.Array, key: jax.Array, params: SamplingParams,
           output_counts_bv: jax.Array | None = None,
           seen_bv: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(tokens_b int32, logprobs_b float32): one token per row and its log-probability under
    the processed distribution."""
    values, ids = processed_candidates(logits_bv, params, output_counts_bv, seen_bv)
    if params.greedy:
        choice = jnp.argmax(values, axis=-1)
    else:
        choice = jax.random.categorical(key, values, axis=-1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(values, axis=-1), choice[:, None], axis=-1)
    token = jnp.take_along_axis(ids, choice[:, None], axis=-1)
    return token[:, 0].astype(jnp.int32), logp[:, 0]
