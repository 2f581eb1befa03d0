"""Decoding equals the training forward: prefill (chunked form) then token-by-token decode
(recurrent form) over a live cache give the logits of a teacher-forced forward of the same
tokens, for ragged rows, layer by layer and scanned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.infer.engine import Engine
from a1jax.infer.sampling import SamplingParams
from a1jax.model import Transformer, get_preset
from a1jax.model.cache import cache_bytes, init_cache
from a1jax.sharding import MeshSpec
from tests.conftest import random_params

L, F = "linear_attention", "full_attention"
CONFIGS = {
    "all_attention": dict(num_hidden_layers=2, layer_types=(F, F)),
    "three_to_one": dict(num_hidden_layers=8, layer_types=(L, L, L, F) * 2),
    "irregular": dict(num_hidden_layers=4, layer_types=(L, F, L, L)),
}
CASES = [("all_attention", False), ("three_to_one", False), ("three_to_one", True),
         ("irregular", False)]
LENGTHS = (11, 23)  # neither a multiple of the DeltaNet chunk (16) nor equal


def config_for(name, scan=False):
    return get_preset("tiny").replace(moe_dispatch="dense", scan_layers=scan,
                                      attention_block_size=8, **CONFIGS[name])


@pytest.mark.parametrize("name,scan", CASES)
def test_prefill_and_decode_equal_the_teacher_forced_forward(name, scan):
    config = config_for(name, scan)
    params = random_params(config.replace(scan_layers=False), noise=0.02)
    if scan:
        from a1jax.model.transformer import stack_layers
        params = stack_layers(params, config)
    model = Transformer(config)
    total = 36
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, total)).astype(np.int32)
    full = np.asarray(model.apply({"params": params}, tokens).logits_btx)
    lengths = np.array(LENGTHS)
    width = lengths.max()
    valid = np.arange(width)[None] < lengths[:, None]
    forward = jax.jit(lambda p, t, c, v: model.apply({"params": p}, t, cache=c, valid_bt=v))
    out = forward(params, jnp.asarray(tokens[:, :width] * valid), init_cache(config, 2, 40),
                  valid)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(out.logits_btx[b, :n], full[b, :n], atol=1e-4, rtol=0)
    cache = out.cache
    np.testing.assert_array_equal(cache.lengths_b, lengths)
    for _ in range(6):  # one token per row, each row at its own position
        pos = np.asarray(cache.lengths_b)
        step = forward(params, jnp.asarray(tokens[np.arange(2), pos][:, None]), cache,
                       np.ones((2, 1), bool))
        np.testing.assert_allclose(step.logits_btx[:, 0], full[np.arange(2), pos], atol=1e-4,
                                   rtol=0)
        cache = step.cache
    np.testing.assert_array_equal(cache.lengths_b, lengths + 6)
    # A multi-token continuation of the live cache (an observation appended), ragged again.
    pos = np.asarray(cache.lengths_b)
    new = np.stack([tokens[b, p:p + 3] for b, p in enumerate(pos)])
    more = forward(params, jnp.asarray(new), cache, np.array([[1, 1, 1], [1, 1, 0]], bool))
    np.testing.assert_allclose(more.logits_btx[0], full[0, pos[0]:pos[0] + 3], atol=1e-4,
                               rtol=0)
    np.testing.assert_allclose(more.logits_btx[1, :2], full[1, pos[1]:pos[1] + 2], atol=1e-4,
                               rtol=0)
    np.testing.assert_array_equal(more.cache.lengths_b, pos + [3, 2])


@pytest.fixture(scope="module")
def tiny():
    config = get_preset("tiny")
    return config, random_params(config)


def teacher_forced(config, params, prompt, new):
    seq = np.asarray([list(prompt) + list(new)], np.int32)
    logits = Transformer(config).apply({"params": params}, seq).logits_btx[0]
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    rows = np.arange(len(prompt) - 1, seq.shape[1] - 1)
    return logp[rows], np.asarray(jnp.argmax(logits, -1))[rows]


def test_engine_greedy_equals_argmax_and_returns_logprobs(tiny):
    config, params = tiny
    engine = Engine(config, params, batch=4, max_len=48)
    rng = np.random.RandomState(1)
    prompts = {0: rng.randint(0, 512, 5).tolist(), 3: rng.randint(0, 512, 19).tolist()}
    engine.extend(prompts)
    out = engine.generate([0, 3], SamplingParams(temperature=0, max_new_tokens=10))
    for row, prompt in prompts.items():
        logp, argmax = teacher_forced(config, params, prompt, out[row].tokens)
        assert out[row].tokens == argmax.tolist()
        np.testing.assert_allclose(out[row].logprobs,
                                   logp[np.arange(10), out[row].tokens], atol=1e-5)
        assert out[row].finish_reason == "length"
    np.testing.assert_array_equal(engine.lengths, [15, 0, 0, 29])
    # Stop tokens end a row (the stop token is kept), a full cache ends it as "context".
    stop = out[3].tokens[2]
    engine.reset()
    engine.extend(prompts)
    again = engine.generate([0, 3], SamplingParams(temperature=0, max_new_tokens=10,
                                                   stop_tokens=(stop,)))
    assert again[3].tokens == out[3].tokens[:3] and again[3].finish_reason == "stop"
    engine.reset()
    engine.extend({0: prompts[3]})
    full = engine.generate([0], SamplingParams(temperature=0, max_new_tokens=40))
    assert len(full[0].tokens) == 48 - 19 and full[0].finish_reason == "context"
    # Sampling is seeded: the same seed from the same state draws the same tokens.
    draws = []
    for seed in (3, 3, 4):
        engine.reset()
        engine.extend(prompts)
        out = engine.generate([0, 3], SamplingParams(top_k=50, max_new_tokens=8, seed=seed))
        draws.append([out[0].tokens, out[3].tokens])
    assert draws[0] == draws[1] and draws[0] != draws[2]


def test_engine_on_a_mesh_and_scanned_matches_one_device(tiny):
    """Rows over data, experts over expert (all-to-all dispatch for prompts), and a scanned
    model on a training layout with a sequence axis: the same greedy tokens. Rows are reset and
    filled again first, so freed slots hold nothing of their last sequence."""
    from a1jax.model.transformer import stack_layers

    config, params = tiny
    prompts = {r: np.random.RandomState(r).randint(0, 512, 4 + 3 * r).tolist() for r in range(4)}
    sampling = SamplingParams(temperature=0, max_new_tokens=6)
    mesh = lambda **axes: MeshSpec.create(axes=axes, num_devices=int(np.prod(list(axes.values()))))
    variants = [(config, params, None),
                (config.replace(moe_dispatch="expert_parallel"), params,
                 mesh(data=2, expert=2)),
                (config.replace(scan_layers=True), stack_layers(params, config),
                 mesh(data=2, expert=2, sequence=2))]
    outs = []
    for cfg, weights, spec in variants:
        engine = Engine(cfg, weights, batch=4, max_len=32, spec=spec)
        engine.extend({r: p[::-1] for r, p in prompts.items()})
        engine.generate(range(4), sampling)
        engine.reset()
        engine.extend(prompts)
        outs.append(engine.generate(range(4), sampling))
    for out in outs[1:]:
        for r in range(4):
            assert out[r].tokens == outs[0][r].tokens
            np.testing.assert_allclose(out[r].logprobs, outs[0][r].logprobs, atol=1e-4)


def test_cache_bytes_from_shapes():
    c = get_preset("agents_a1_35b").replace(dtype="bfloat16")
    kv = 2 * 32_768 * c.num_key_value_heads * c.head_dim * 2  # K and V, bf16
    state = c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim * 4
    conv = (c.linear_conv_kernel_dim - 1) * c.linear_conv_dim * 2
    assert cache_bytes(c, 1, 32_768) == 10 * kv + 30 * (state + conv) + 4  # + the length
