"""The sampler's transforms on a constructed distribution: each keeps exactly its set, draws are
reproducible, and the returned log-probabilities are those of the processed distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.errors import A1Error
from a1jax.infer.sampling import RELEASE, SamplingParams, processed_candidates, sample

# Probabilities 0.30, 0.25, 0.20, 0.12, 0.08, 0.05 then nothing: every set below is known.
PROBS = np.array([0.05, 0.30, 0.0, 0.12, 0.25, 0.08, 0.20, 0.0])
LOGITS = np.log(np.where(PROBS > 0, PROBS, 1e-30)).astype(np.float32)
ORDER = [1, 4, 6, 3, 5, 0]  # by probability


def draws(params, n=4000):
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, LOGITS.size))
    tokens, logp = jax.jit(lambda k: sample(logits, k, params))(jax.random.key(params.seed))
    return np.asarray(tokens), np.asarray(logp)


@pytest.mark.parametrize("params,allowed", [
    (SamplingParams(top_k=3), ORDER[:3]),
    (SamplingParams(top_p=0.6), ORDER[:3]),  # 0.30 + 0.25 < 0.6 <= + 0.20
    (SamplingParams(top_p=0.55), ORDER[:2]),  # reaches exactly 0.55 with two
    (SamplingParams(min_p=0.5), ORDER[:3]),  # >= 0.15
    (SamplingParams(top_k=4, top_p=0.8), ORDER[:3]),  # over the 4: .345 + .287 < 0.8 <= + .23
    (SamplingParams(temperature=0.5, top_k=5, min_p=0.2), ORDER[:3]),  # p^2: 0.09 0.0625 0.04
])
def test_truncation_never_leaves_its_set_and_logprobs_are_the_processed_ones(params, allowed):
    tokens, logp = draws(params)
    assert set(tokens) == set(allowed)  # every allowed token drawn, nothing else
    kept = np.where(np.isin(np.arange(LOGITS.size), allowed), LOGITS / params.temperature,
                    -np.inf)
    want = kept - np.log(np.exp(kept - kept.max()).sum()) - kept.max()
    np.testing.assert_allclose(logp, want[tokens], atol=1e-5)
    frequencies = np.bincount(tokens, minlength=LOGITS.size) / len(tokens)
    np.testing.assert_allclose(frequencies, np.exp(want), atol=0.03)


def test_greedy_and_seeds():
    tokens, logp = draws(SamplingParams(temperature=0))
    assert set(tokens) == {1}
    np.testing.assert_allclose(logp, np.log(0.30), atol=1e-5)
    a, _ = draws(RELEASE.replace(seed=3))
    b, _ = draws(RELEASE.replace(seed=3))
    c, _ = draws(RELEASE.replace(seed=4))
    assert (a == b).all() and (a != c).any()


def test_penalties():
    logits = jnp.asarray([[2.0, -1.0, 0.5, 0.0]])
    counts = jnp.asarray([[1, 3, 0, 0]])
    seen = jnp.asarray([[True, False, True, False]])
    p = SamplingParams(temperature=0, presence_penalty=1.5, repetition_penalty=2.0)
    values, _ = processed_candidates(logits, p, counts, seen)
    # repetition on seen tokens (2.0 -> 1.0, 0.5 -> 0.25), then presence on generated ones
    np.testing.assert_allclose(values, [[1.0 - 1.5, -1.0 - 1.5, 0.25, 0.0]])
    tokens, _ = sample(logits, jax.random.key(0), p, counts, seen)
    assert tokens.tolist() == [2]


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=-1), "temperature must be >= 0, got -1"),
    (dict(top_p=0), "top_p must be in (0, 1], got 0"),
    (dict(min_p=1), "min_p must be in [0, 1), got 1"),
    (dict(top_k=-2), "top_k must be >= 0 (0: off), got -2"),
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1, got 0"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(A1Error) as e:
        SamplingParams(**kwargs)
    assert str(e.value) == message
