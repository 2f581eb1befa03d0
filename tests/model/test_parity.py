"""a1jax logits equal transformers' Qwen3_5MoeForCausalLM on the same weights (fp32, eager)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from a1jax import score
from a1jax.model import Transformer, get_preset
from tests.conftest import hf_logits, hf_model, random_params

TINY = get_preset("tiny")
CASES = {
    # 2:2 pattern, GQA 2, DeltaNet value/key heads 2, length not a multiple of the chunk (16).
    "tiny": (TINY, 37),
    # Tied embeddings, every layer full attention, GQA 4.
    "tied_all_full": (dataclasses.replace(
        TINY, tie_word_embeddings=True, num_attention_heads=8, num_key_value_heads=2,
        layer_types=("full_attention",) * 3, num_hidden_layers=3), 23),
    # A 2:1 pattern, GQA 1 (MHA), DeltaNet heads ratio 3, half the head rotated, top-3 of 6.
    "pattern_2to1": (dataclasses.replace(
        TINY, num_hidden_layers=6, layer_types=None, full_attention_interval=3,
        num_attention_heads=2, num_key_value_heads=2, linear_num_key_heads=1,
        linear_num_value_heads=3, partial_rotary_factor=0.5, num_experts=6,
        num_experts_per_tok=3, rope_theta=10000.0), 50),
    # Irregular explicit pattern, DeltaNet ratio 1 with unequal key/value dims, chunk 64 > length/2.
    "irregular": (dataclasses.replace(
        TINY, num_hidden_layers=5, deltanet_chunk_size=64, linear_num_key_heads=3,
        linear_num_value_heads=3, linear_key_head_dim=16, linear_value_head_dim=24,
        layer_types=("full_attention", "linear_attention", "linear_attention",
                     "full_attention", "linear_attention")), 70),
    # YaRN RoPE scaling (4x a native context of 16 tokens), as stage 2 extends a shorter model.
    "yarn": (dataclasses.replace(
        TINY, rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=16,
        max_position_embeddings=64, rope_theta=10000.0, partial_rotary_factor=0.5), 61),
}


def _tokens(config, length, batch=2, seed=0):
    return np.random.RandomState(seed).randint(0, config.vocab_size, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name):
    config, length = CASES[name]
    params = random_params(config)
    tokens = _tokens(config, length)
    apply = jax.jit(Transformer(config).apply)
    ours = np.asarray(apply({"params": params}, jnp.asarray(tokens)).logits_btx)
    theirs = hf_logits(hf_model(config, params), tokens)
    assert ours.shape == theirs.shape == (2, length, config.vocab_size)
    assert np.abs(theirs).max() > 0.5  # the comparison is not between near-zero outputs
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_score_cli_on_save_pretrained_dir(name, tmp_path):
    """transformers writes the directory (its own layout); `a1jax.score` reads it back."""
    config, length = CASES[name]
    params = random_params(config, seed=3)
    model = hf_model(config, params)
    model.save_pretrained(tmp_path / "hf")
    tokens = _tokens(config, length, seed=1)
    (tmp_path / "tokens.json").write_text(__import__("json").dumps(tokens.tolist()))
    with pytest.raises(SystemExit) as exit_info:
        from a1jax import cli
        cli.run(score.main, ["--model", str(tmp_path / "hf"), "--tokens",
                             str(tmp_path / "tokens.json"), "--out", str(tmp_path / "s.npz")])
    assert exit_info.value.code == 0
    out = np.load(tmp_path / "s.npz")
    theirs = hf_logits(model, tokens)
    np.testing.assert_allclose(out["logits"], theirs, atol=1e-4, rtol=0)
    logp = theirs[:, :-1] - np.log(np.exp(theirs[:, :-1] - theirs[:, :-1].max(-1, keepdims=True))
                                   .sum(-1, keepdims=True)) - theirs[:, :-1].max(-1, keepdims=True)
    expected = np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    assert out["logprobs"].shape == (2, length - 1)
    np.testing.assert_allclose(out["logprobs"], expected, atol=1e-4, rtol=0)


def test_yarn_changes_the_model_and_round_trips_through_config_json():
    from a1jax.model.config import ModelConfig

    config, length = CASES["yarn"]
    assert ModelConfig.from_hf_dict(config.to_hf_dict(),
                                   deltanet_chunk_size=config.deltanet_chunk_size) == config
    params = random_params(config)
    tokens = jnp.asarray(_tokens(config, length))
    yarn = Transformer(config).apply({"params": params}, tokens).logits_btx
    plain = Transformer(config.replace(rope_type="default", rope_factor=1.0)).apply(
        {"params": params}, tokens).logits_btx
    assert np.abs(np.asarray(yarn) - np.asarray(plain)).max() > 1e-2
