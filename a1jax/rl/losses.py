"""The post-SFT recipe's losses as pure functions: multi-teacher on-policy distillation with
salient vocabulary alignment (SVA), GRPO's clipped policy loss, and its advantage estimators.

Letters: b samples, t positions, v vocabulary, k the teacher's top-k, p prompts, g samples per
prompt (a group).

Weights for exact sharding. Every loss here is a weighted sum over tokens, with the per-token
weights computed from the whole batch first (`sva_token_weights`, `token_mean_weights`). A shard
or a microbatch then sums its own tokens times their global weights, and the sum over shards or
microbatches is the batch loss exactly: no normalisation happens per shard or per microbatch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from a1jax.errors import A1Error

SVA_MODES = ("renormalised", "tail_bin", "sampled_token")


def sva_token_weights(mask_bt: jax.Array, domains_b: jax.Array) -> jax.Array:
    """The weight of each token in the domain-normalised batch loss
    L = 1/|D| sum_d 1/|B_d| sum_{i in B_d} 1/|R_i| sum_{t in R_i} l_it:
    w_it = mask_it / (|D| |B_d(i)| |R_i|). A sample without student tokens counts in no |B_d|,
    and a domain whose samples have none is not in D. All zeros when no sample has tokens."""
    mask_bt = mask_bt.astype(jnp.promote_types(mask_bt.dtype, jnp.float32))
    tokens_b = mask_bt.sum(-1)
    counted_b = (tokens_b > 0).astype(mask_bt.dtype)
    same_bb = (domains_b[:, None] == domains_b[None, :]).astype(mask_bt.dtype)
    samples_in_domain_b = same_bb @ counted_b  # |B_d| for each sample's domain
    # |D|: the domains with a counted sample; each counted sample adds 1/|B_d|.
    domains_present = jnp.sum(counted_b / jnp.maximum(samples_in_domain_b, 1.0))
    weight_b = counted_b / (jnp.maximum(domains_present, 1.0)
                            * jnp.maximum(samples_in_domain_b, 1.0)
                            * jnp.maximum(tokens_b, 1.0))
    return mask_bt * weight_b[:, None]


def sva_token_losses(student_logits_btv: jax.Array, teacher_ids_btk: jax.Array,
                     teacher_logprobs_btk: jax.Array, mode: str = "renormalised"
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token SVA reverse KL [b, t] and per-token statistics.

    `renormalised` (the paper): both distributions restricted to the teacher's top-k set S and
    renormalised there, KL(p̄_s || p̄_t) over S. `tail_bin`: S plus one bin for the rest of the
    vocabulary, unnormalised. `sampled_token`: the single-sample estimator of the full reverse
    KL: S is the one token the student sampled (k = 1, the teacher's log-probability of it), the
    value is log p_s(y) - log p_t(y) and the gradient that value times the gradient of
    log p_s(y) (the score-function gradient; over y ~ p_s it averages to the gradient of
    KL(p_s || p_t) over the whole vocabulary). The student's log-probabilities are gathered at
    S; only the student's own log-normaliser needs its full row."""
    if mode not in SVA_MODES:
        raise A1Error(f"SVA mode must be one of {', '.join(SVA_MODES)}, got {mode!r}")
    dtype = jnp.promote_types(student_logits_btv.dtype, jnp.float32)  # bf16 in, fp32 math
    logits = student_logits_btv.astype(dtype)
    lse_bt = jax.nn.logsumexp(logits, axis=-1)
    ls_btk = jnp.take_along_axis(logits, teacher_ids_btk, axis=-1) - lse_bt[..., None]
    lt_btk = teacher_logprobs_btk.astype(dtype)
    coverage_bt = jnp.exp(jax.nn.logsumexp(ls_btk, axis=-1))  # ρ: student mass on S
    teacher_mass_bt = jnp.exp(jax.nn.logsumexp(lt_btk, axis=-1))
    if mode == "renormalised":
        qs_btk = ls_btk - jax.nn.logsumexp(ls_btk, axis=-1, keepdims=True)
        qt_btk = lt_btk - jax.nn.logsumexp(lt_btk, axis=-1, keepdims=True)
        kl_bt = jnp.sum(jnp.exp(qs_btk) * (qs_btk - qt_btk), axis=-1)
    elif mode == "sampled_token":
        if ls_btk.shape[-1] != 1:
            raise A1Error(f"sampled_token takes the sampled token alone (k = 1), got k = "
                          f"{ls_btk.shape[-1]}")
        ls_bt, estimate_bt = ls_btk[..., 0], jax.lax.stop_gradient(ls_btk - lt_btk)[..., 0]
        # value: the estimate; gradient: estimate * d log p_s(y)
        kl_bt = estimate_bt + (ls_bt - jax.lax.stop_gradient(ls_bt)) * estimate_bt
    else:  # tail_bin: the mass outside S as one more outcome
        tail_s = jnp.log1p(-jnp.minimum(coverage_bt, 1 - 1e-7))
        tail_t = jnp.log1p(-jnp.minimum(teacher_mass_bt, 1 - 1e-7))
        kl_bt = (jnp.sum(jnp.exp(ls_btk) * (ls_btk - lt_btk), axis=-1)
                 + jnp.exp(tail_s) * (tail_s - tail_t))
    entropy_bt = -jnp.sum(jax.nn.softmax(logits, -1) * jax.nn.log_softmax(logits, -1), -1)
    return kl_bt, {"coverage": coverage_bt, "teacher_mass": teacher_mass_bt,
                   "student_entropy": entropy_bt}


def sva_loss(student_logits: jax.Array, teacher_ids: jax.Array, teacher_logprobs: jax.Array,
             mask: jax.Array, domains: jax.Array, *, token_weights: jax.Array | None = None,
             mode: str = "renormalised") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Multi-teacher, domain-routed OPD loss with salient vocabulary alignment.

    student_logits [B, T, V]; teacher_ids [B, T, k] (the routed teacher's top-k ids at each
    position); teacher_logprobs [B, T, k] (its full-vocabulary log-probabilities at those ids);
    mask [B, T] (1 on student-generated tokens); domains [B] (int). Returns the scalar
    L = 1/|D| sum_d 1/|B_d| sum_i 1/|R_i| sum_t KL_t and metrics: `coverage` (mean ρ over the
    masked tokens), `reverse_kl` (mean per-token KL), `teacher_mass`, `student_entropy`.

    `token_weights` (from `sva_token_weights` of the whole batch) makes a shard's or a
    microbatch's loss its exact share of the batch loss; by default they are computed from
    this batch."""
    if teacher_ids.shape != teacher_logprobs.shape:
        raise A1Error(f"teacher_ids {teacher_ids.shape} and teacher_logprobs "
                      f"{teacher_logprobs.shape} differ in shape")
    if teacher_ids.shape[-1] > student_logits.shape[-1]:
        raise A1Error(f"top-k of {teacher_ids.shape[-1]} is larger than the vocabulary "
                      f"({student_logits.shape[-1]})")
    weights_bt = sva_token_weights(mask, domains) if token_weights is None else token_weights
    kl_bt, stats = sva_token_losses(student_logits, teacher_ids, teacher_logprobs, mode)
    mask_bt = mask.astype(kl_bt.dtype)
    tokens = jnp.maximum(mask_bt.sum(), 1.0)
    mean = lambda x_bt: jnp.sum(x_bt * mask_bt) / tokens  # noqa: E731
    metrics = {"reverse_kl": mean(kl_bt), **{name: mean(v) for name, v in stats.items()}}
    return jnp.sum(weights_bt * kl_bt), metrics


def token_mean_weights(mask_bt: jax.Array) -> jax.Array:
    """GRPO's token-mean aggregation as weights: every unmasked token of the batch alike."""
    mask_bt = mask_bt.astype(jnp.promote_types(mask_bt.dtype, jnp.float32))
    return mask_bt / jnp.maximum(mask_bt.sum(), 1.0)


def grpo_token_terms(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, *,
                     ref_logprobs: jax.Array | None = None, entropy: jax.Array | None = None,
                     sampler_logprobs: jax.Array | None = None,
                     clip: tuple[float, float] = (0.2, 0.28), kl_coef: float = 0.001,
                     entropy_coef: float = 1e-4, importance_cap: float = 2.0
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO's loss per token (see `grpo_loss`) and the per-token terms its metrics average:
    policy_loss, clip_fraction (1 where the ratio was clipped) and, when their inputs are
    given, importance_weight, kl, entropy. advantages broadcast against logprobs."""
    ratio = jnp.exp(logprobs - old_logprobs)
    low, high = clip
    clipped = jnp.clip(ratio, 1.0 - low, 1.0 + high)
    policy = -jnp.minimum(ratio * advantages, clipped * advantages)
    terms: dict[str, jax.Array] = {"clip_fraction": (clipped != ratio).astype(ratio.dtype)}
    if sampler_logprobs is not None:
        tis = jax.lax.stop_gradient(
            jnp.minimum(jnp.exp(old_logprobs - sampler_logprobs), importance_cap))
        policy = policy * tis
        terms["importance_weight"] = tis
    terms["policy_loss"] = policy
    per_token = policy
    if ref_logprobs is not None:
        d = ref_logprobs - logprobs
        terms["kl"] = jnp.exp(d) - d - 1.0  # k3: unbiased, always >= 0
        per_token = per_token + kl_coef * terms["kl"]
    if entropy is not None:
        terms["entropy"] = entropy
        per_token = per_token - entropy_coef * entropy
    return per_token, terms


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
              mask: jax.Array, *, token_weights: jax.Array | None = None, **options
              ) -> tuple[jax.Array, dict[str, Any]]:
    """GRPO's policy loss for one batch of sampled tokens, token-mean aggregated.

    logprobs [B, T]: the policy being trained, at the sampled tokens; old_logprobs [B, T]: the
    policy that sampled them, as the trainer computes it; advantages [B] (a sample's) or
    [B, T]; mask [B, T] (1 on the model's tokens). Per token: -min(r A, clip(r, 1 - lo, 1 + hi) A)
    with r = exp(logprobs - old_logprobs), plus kl_coef times the k3 estimate of KL to the
    reference (exp(d) - d - 1, d = ref_logprobs - logprobs) and minus entropy_coef times
    `entropy` (per-token entropy of the trained policy) when given. `sampler_logprobs` (the
    inference engine's log-probabilities of the same tokens) adds the truncated importance weight
    min(exp(old - sampler), importance_cap), held constant, for the sampler/trainer mismatch.
    options: ref_logprobs, entropy, sampler_logprobs, clip=(0.2, 0.28), kl_coef=0.001,
    entropy_coef=1e-4, importance_cap=2.0. Metrics: each term's token mean."""
    mask_bt = mask.astype(logprobs.dtype)
    weights_bt = token_mean_weights(mask_bt) if token_weights is None else token_weights
    adv_bt = advantages if advantages.ndim == 2 else advantages[:, None]
    per_token_bt, terms = grpo_token_terms(logprobs, old_logprobs, adv_bt, **options)
    metrics = {name: jnp.sum(v * weights_bt) for name, v in terms.items()}
    return jnp.sum(per_token_bt * weights_bt), metrics


def grpo(rewards_pg: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Group-normalised advantages: (r - group mean) / (group std + eps), per prompt."""
    mean = rewards_pg.mean(-1, keepdims=True)
    return (rewards_pg - mean) / (rewards_pg.std(-1, keepdims=True) + eps)


def dr_grpo(rewards_pg: jax.Array) -> jax.Array:
    """Dr. GRPO: the group mean subtracted, no division by the standard deviation."""
    return rewards_pg - rewards_pg.mean(-1, keepdims=True)


def rloo(rewards_pg: jax.Array) -> jax.Array:
    """RLOO: each sample's reward minus the mean of the other samples of its group."""
    g = rewards_pg.shape[-1]
    if g < 2:
        raise A1Error(f"RLOO needs at least 2 samples per prompt, got {g}")
    others = (rewards_pg.sum(-1, keepdims=True) - rewards_pg) / (g - 1)
    return rewards_pg - others


ADVANTAGES = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}


def groups_kept(rewards_pg: jax.Array) -> jax.Array:
    """Dynamic sampling: the prompts whose group rewards vary (the others teach nothing)."""
    return rewards_pg.std(-1) > 0
