"""Named model sizes: `tiny` (tests), `bench` (CPU benchmarks), `agents_a1_35b` (the real model)."""

from __future__ import annotations

from a1jax.model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Both layer types, 8 experts (every 8-device layout applies), seconds to compile and run.
    # Head sizes are the smallest vLLM's CPU kernels take (attention 32, Gated DeltaNet 64), so
    # the demo's model can be served (launch/serve.sh).
    "tiny": ModelConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=4, full_attention_interval=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
        linear_value_head_dim=64, linear_conv_kernel_dim=4,
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, deltanet_chunk_size=16,
        max_position_embeddings=262_144, eos_token_id=2,
    ),
    "bench": ModelConfig(
        vocab_size=4096, hidden_size=256, num_hidden_layers=8, full_attention_interval=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
        linear_value_head_dim=64, linear_conv_kernel_dim=4,
        num_experts=32, num_experts_per_tok=4, moe_intermediate_size=128,
        shared_expert_intermediate_size=128, eos_token_id=2,
    ),
    # Qwen3.5-35B-A3B, the published shapes (shared/design/model.md).
    "agents_a1_35b": ModelConfig(
        vocab_size=248_320, hidden_size=2048, num_hidden_layers=40, full_attention_interval=4,
        num_attention_heads=16, num_key_value_heads=2, head_dim=256,
        linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
        linear_value_head_dim=128, linear_conv_kernel_dim=4,
        num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
        shared_expert_intermediate_size=512, router_aux_loss_coef=0.001,
        rope_theta=10_000_000.0, partial_rotary_factor=0.25, rms_norm_eps=1e-6,
        max_position_embeddings=262_144, tie_word_embeddings=False, eos_token_id=248_044,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; a ValueError lists the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
