"""The recipe's losses against float64 NumPy written from the formulas: SVA (renormalised top-k
reverse KL, domain-normalised over the batch), its analytic gradient, GRPO's clipped loss with
k3 KL and entropy, the advantage estimators; and the weights that keep the loss exact under
data/sequence sharding and microbatching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax.errors import A1Error
from a1jax.rl import (dr_grpo, groups_kept, grpo, grpo_loss, rloo, sva_loss, sva_token_weights,
                      token_mean_weights)

B, T, V, K = 8, 6, 32, 5


def batch(seed=0):
    """Random student logits, a teacher's top-k ids and full-vocabulary log-probabilities, a
    mask with an all-masked row, and domains with one single-sample domain."""
    rng = np.random.RandomState(seed)
    student = rng.randn(B, T, V) * 2
    teacher_logits = rng.randn(B, T, V) * 2
    teacher_lp = teacher_logits - np.log(np.exp(teacher_logits).sum(-1, keepdims=True))
    ids = np.argsort(-teacher_lp, -1)[..., :K]
    mask = (rng.rand(B, T) > 0.3).astype(np.float64)
    mask[3] = 0  # no student tokens: counts in no domain
    mask[0, 0] = 1
    domains = np.array([0, 0, 1, 2, 2, 2, 0, 3])  # domain 1: one sample; 3: one sample
    mask[7] = 0  # domain 3's only sample has no tokens: domain 3 is not in D
    return student, ids, np.take_along_axis(teacher_lp, ids, -1), mask, domains


def reference(student, ids, lt, mask, domains):
    """The formulas, sample by sample, domain by domain, in float64; and dL/dlogits."""
    ls_full = student - np.log(np.exp(student).sum(-1, keepdims=True))
    per_sample, grad = {}, np.zeros_like(student)
    for i in range(B):
        tokens = np.flatnonzero(mask[i])
        if not len(tokens):
            continue
        kls = []
        for t in tokens:
            ls = ls_full[i, t, ids[i, t]]
            qs = np.exp(ls) / np.exp(ls).sum()
            qt = np.exp(lt[i, t]) / np.exp(lt[i, t]).sum()
            kl = np.sum(qs * (np.log(qs) - np.log(qt)))
            kls.append(kl)
            # d KL / d z_u for u in S: q_u (log q_u - log q̄_t(u) - KL); 0 outside S.
            grad[i, t, ids[i, t]] = qs * (np.log(qs) - np.log(qt) - kl) / len(tokens)
        per_sample[i] = np.mean(kls)
    present = sorted({domains[i] for i in per_sample})
    loss = 0.0
    for d in present:
        members = [i for i in per_sample if domains[i] == d]
        loss += np.mean([per_sample[i] for i in members]) / len(present)
        for i in members:
            grad[i] /= len(members) * len(present)
    for i in range(B):
        if i not in per_sample:
            grad[i] = 0
    return loss, grad


def test_sva_loss_and_gradient_equal_the_formulas():
    student, ids, lt, mask, domains = batch()
    want, want_grad = reference(student, ids, lt, mask, domains)
    f = lambda s: sva_loss(s, jnp.asarray(ids), jnp.asarray(lt, jnp.float32),  # noqa: E731
                           jnp.asarray(mask), jnp.asarray(domains))
    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(student, jnp.float32))
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-7)
    ls = student - np.log(np.exp(student).sum(-1, keepdims=True))
    rho = np.exp(np.take_along_axis(ls, ids, -1)).sum(-1)
    np.testing.assert_allclose(float(metrics["coverage"]), (rho * mask).sum() / mask.sum(),
                               rtol=1e-6)


def test_sva_loss_in_float64_matches_to_1e6_with_its_gradient():
    student, ids, lt, mask, domains = batch(seed=1)
    want, want_grad = reference(student, ids, lt, mask, domains)
    with jax.enable_x64(True):
        f = lambda s: sva_loss(s, jnp.asarray(ids), jnp.asarray(lt), jnp.asarray(mask),  # noqa
                               jnp.asarray(domains))[0]
        loss, grad = jax.value_and_grad(f)(jnp.asarray(student))
        np.testing.assert_allclose(float(loss), want, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-12)


def test_teachers_equal_to_the_student_give_zero_loss_and_gradient():
    student, _, _, mask, domains = batch()
    ls = student - np.log(np.exp(student).sum(-1, keepdims=True))
    ids = np.argsort(-ls, -1)[..., :K]
    lt = np.take_along_axis(ls, ids, -1)
    f = lambda s: sva_loss(s, jnp.asarray(ids), jnp.asarray(lt, jnp.float32),  # noqa: E731
                           jnp.asarray(mask), jnp.asarray(domains))[0]
    loss, grad = jax.value_and_grad(f)(jnp.asarray(student, jnp.float32))
    assert abs(float(loss)) < 1e-6
    assert float(jnp.abs(grad).max()) < 1e-6


def test_the_whole_vocabulary_as_the_set_is_the_exact_reverse_kl():
    """distill.mode=full_vocab: the renormalised form with k = V (any order) is KL(p_s || p_t)
    over the vocabulary, per token."""
    from a1jax.rl import sva_token_losses

    rng = np.random.RandomState(3)
    student, teacher = rng.randn(2, 3, V) * 2, rng.randn(2, 3, V) * 2
    log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))  # noqa: E731
    ls, lt = log_softmax(student), log_softmax(teacher)
    exact = (np.exp(ls) * (ls - lt)).sum(-1)
    ids = np.stack([rng.permutation(V) for _ in range(6)]).reshape(2, 3, V)
    kl, stats = sva_token_losses(jnp.asarray(student, jnp.float32), jnp.asarray(ids),
                                 jnp.asarray(np.take_along_axis(lt, ids, -1), jnp.float32))
    np.testing.assert_allclose(np.asarray(kl), exact, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats["coverage"]), 1.0, rtol=1e-6)


def test_the_sampled_token_estimator_averages_to_the_exact_reverse_kl_and_its_gradient():
    """distill.mode=sampled_token: per token, log p_s(y) - log p_t(y) for the sampled y, with
    the gradient (log p_s(y) - log p_t(y)) d log p_s(y). Weighted by p_s(y) over every y, the
    value is KL(p_s || p_t) and the gradient is the gradient of KL(p_s || p_t), exactly."""
    from a1jax.rl import sva_token_losses

    rng = np.random.RandomState(4)
    student, teacher = rng.randn(2, 3, V) * 2, rng.randn(2, 3, V) * 2
    log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))  # noqa: E731
    ls, lt = log_softmax(student), log_softmax(teacher)
    p = np.exp(ls)
    exact = (p * (ls - lt)).sum(-1)

    def per_token(s, y):
        kl, _ = sva_token_losses(s, jnp.full((2, 3, 1), y), jnp.asarray(lt[..., y:y + 1],
                                                                          jnp.float32),
                                 mode="sampled_token")
        return kl

    s = jnp.asarray(student, jnp.float32)
    value = sum(p[..., y] * np.asarray(per_token(s, y)) for y in range(V))
    np.testing.assert_allclose(value, exact, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(per_token(s, 7)), ls[..., 7] - lt[..., 7], rtol=1e-5)
    # Gradient of sum_bt c_bt KL_bt with random c: the p_s-weighted per-sample gradients.
    c = rng.rand(2, 3)
    weighted = lambda x, y: jnp.sum(jnp.asarray(c, jnp.float32) * per_token(x, y))  # noqa: E731
    grad = sum(p[..., y, None] * np.asarray(jax.grad(weighted)(s, y)) for y in range(V))
    # d KL(p || q) / d z_u = p_u (log p_u - log q_u - KL)
    want = c[..., None] * p * (ls - lt - exact[..., None])
    np.testing.assert_allclose(grad, want, rtol=2e-4, atol=1e-6)
    with pytest.raises(A1Error, match="^sampled_token takes the sampled token alone "
                       r"\(k = 1\), got k = 2$"):
        sva_token_losses(s, jnp.zeros((2, 3, 2), jnp.int32), jnp.zeros((2, 3, 2)),
                         mode="sampled_token")


def test_domain_weights_and_edge_cases():
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], np.float32)
    domains = np.array([0, 0, 1, 2])
    w = np.asarray(sva_token_weights(jnp.asarray(mask), jnp.asarray(domains)))
    # Domains present: 0 (two samples) and 2 (one); domain 1's only sample has no tokens.
    np.testing.assert_allclose(w, [[1 / 8, 1 / 8, 0], [1 / 4, 0, 0], [0, 0, 0],
                                   [1 / 6, 1 / 6, 1 / 6]], rtol=1e-6)
    assert float(sva_token_weights(jnp.zeros((2, 3)), jnp.array([0, 1])).sum()) == 0
    with pytest.raises(A1Error) as e:
        sva_loss(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2, 5), jnp.int32), jnp.zeros((1, 2, 5)),
                 jnp.ones((1, 2)), jnp.zeros((1,), jnp.int32))
    assert str(e.value) == "top-k of 5 is larger than the vocabulary (4)"


def test_the_loss_is_exact_under_sharding_and_microbatches(devices):
    student, ids, lt, mask, domains = batch(seed=2)
    args = [jnp.asarray(x) for x in (student.astype(np.float32), ids,
                                     lt.astype(np.float32), mask, domains)]
    f = lambda s, i, t, m, d, w: sva_loss(s, i, t, m, d, token_weights=w)[0]  # noqa: E731
    grad_f = jax.jit(jax.value_and_grad(f))
    weights = sva_token_weights(args[3], args[4])
    loss, grad = grad_f(*args, weights)
    # data=2, expert=2, sequence=2: samples over data x expert, positions over sequence.
    mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 2, 2), ("data", "expert", "sequence"))
    specs = [P(("data", "expert"), "sequence", None), P(("data", "expert"), "sequence", None),
             P(("data", "expert"), "sequence", None), P(("data", "expert"), "sequence"),
             P(("data", "expert")), P(("data", "expert"), "sequence")]
    placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(args + [weights], specs)]
    sharded_loss, sharded_grad = grad_f(*placed)
    np.testing.assert_allclose(float(sharded_loss), float(loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sharded_grad), np.asarray(grad), rtol=1e-5, atol=1e-8)
    # 4 microbatches of 2 samples, each with its slice of the global weights: the sum of their
    # losses is the batch loss (weights computed per microbatch would not be).
    parts = [grad_f(*[x[j:j + 2] for x in args], weights[j:j + 2]) for j in range(0, B, 2)]
    np.testing.assert_allclose(sum(float(p[0]) for p in parts), float(loss), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([np.asarray(p[1]) for p in parts]),
                               np.asarray(grad), rtol=1e-5, atol=1e-8)
    local = sum(float(f(*[x[j:j + 2] for x in args], None)) for j in range(0, B, 2)) / 4
    assert abs(local - float(loss)) > 1e-3  # what per-microbatch normalisation would give


def grpo_reference(lp, old, ref, adv, mask, ent, sampler, clip, kl_coef, ent_coef, cap):
    r = np.exp(lp - old)
    a = adv[:, None]
    policy = -np.minimum(r * a, np.clip(r, 1 - clip[0], 1 + clip[1]) * a)
    policy *= np.minimum(np.exp(old - sampler), cap)
    d = ref - lp
    per = policy + kl_coef * (np.exp(d) - d - 1) - ent_coef * ent
    return (per * mask).sum() / mask.sum()


def test_grpo_loss_and_gradient_equal_the_formula():
    rng = np.random.RandomState(3)
    lp, old, ref, sampler = (-np.abs(rng.randn(B, T)) for _ in range(4))
    adv, ent = rng.randn(B), np.abs(rng.randn(B, T))
    mask = (rng.rand(B, T) > 0.3).astype(np.float64)
    kw = dict(clip=(0.2, 0.28), kl_coef=0.01, ent_coef=1e-2, cap=2.0)
    want = grpo_reference(lp, old, ref, adv, mask, ent, sampler, **kw)
    f = lambda x: grpo_loss(x, old, adv, mask, ref_logprobs=ref, entropy=ent,  # noqa: E731
                            sampler_logprobs=sampler, clip=kw["clip"], kl_coef=kw["kl_coef"],
                            entropy_coef=kw["ent_coef"], importance_cap=kw["cap"])
    with jax.enable_x64(True):
        (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
        np.testing.assert_allclose(float(loss), want, rtol=1e-10)
        eps = 1e-6
        for i, t in [(0, 0), (2, 3), (5, 1)]:
            if not mask[i, t]:
                assert float(grad[i, t]) == 0
                continue
            up, down = lp.copy(), lp.copy()
            up[i, t] += eps
            down[i, t] -= eps
            numeric = (grpo_reference(up, old, ref, adv, mask, ent, sampler, **kw)
                       - grpo_reference(down, old, ref, adv, mask, ent, sampler, **kw)) / (2 * eps)
            np.testing.assert_allclose(float(grad[i, t]), numeric, rtol=1e-5, atol=1e-10)
    r = np.exp(lp - old)
    clipped = ((r < 0.8) | (r > 1.28)) & (mask > 0)
    np.testing.assert_allclose(float(metrics["clip_fraction"]), clipped.sum() / mask.sum())
    np.testing.assert_allclose(np.asarray(token_mean_weights(mask)).sum(), 1.0)


def test_advantage_estimators_and_dynamic_sampling():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.5, 1.0, 0.5]])
    mean, std = rewards.mean(-1, keepdims=True), rewards.std(-1, keepdims=True)
    np.testing.assert_allclose(grpo(jnp.asarray(rewards)), (rewards - mean) / (std + 1e-6),
                               rtol=1e-6)
    np.testing.assert_allclose(dr_grpo(jnp.asarray(rewards)), rewards - mean, atol=1e-7)
    loo = np.array([[r[j] - np.mean(np.delete(r, j)) for j in range(4)] for r in rewards])
    np.testing.assert_allclose(rloo(jnp.asarray(rewards)), loo, atol=1e-7)
    assert np.asarray(groups_kept(jnp.asarray(rewards))).tolist() == [True, False, True]
    with pytest.raises(A1Error) as e:
        rloo(jnp.ones((2, 1)))
    assert str(e.value) == "RLOO needs at least 2 samples per prompt, got 1"
