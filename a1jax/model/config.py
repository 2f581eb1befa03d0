"""The model's typed configuration, and its mapping to and from Hugging Face `config.json`.

Field names follow the Hugging Face `qwen3_5_moe_text` config so that a reader can hold the two
side by side; `from_hf_dict` / `to_hf_dict` are the only places that know about the JSON form.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from a1jax.errors import A1Error

FULL = "full_attention"
LINEAR = "linear_attention"
# float64 is for precision tests (with jax_enable_x64 and float64 params): the math that runs
# in fp32 for bf16 and fp32 then runs in fp64, so sharded and unsharded paths compare at 1e-10.
DTYPES = ("float32", "bfloat16", "float64")
MOE_DISPATCH = ("dense", "dropless", "batched", "expert_parallel")
REMAT = ("none", "full", "dots")
ATTENTION_IMPL = ("reference", "blockwise", "cudnn")


class ConfigError(A1Error):
    """A model configuration that cannot describe a working model."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Qwen3.5-MoE text model shapes (see shared/design/model.md)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    # Full (gated) attention.
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    # Gated DeltaNet (linear attention).
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int = 4
    # Mixture of experts.
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64
    shared_expert_intermediate_size: int = 64
    router_aux_loss_coef: float = 0.001
    # Layer pattern: `layer_types` wins when given; else every `full_attention_interval`-th is full.
    layer_types: tuple[str, ...] | None = None
    full_attention_interval: int = 4
    rope_theta: float = 10_000_000.0
    partial_rotary_factor: float = 0.25
    # RoPE scaling to run past the native context (Hugging Face `rope_parameters`): "default"
    # (none) or "yarn", with its factor and the native length it extends.
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_original_max_position_embeddings: int = 0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 262_144
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    eos_token_id: int | None = None
    # Not Hugging Face fields: how a1jax computes.
    dtype: str = "float32"  # compute dtype; params stay float32 (norms, router, recurrence in fp32)
    deltanet_chunk_size: int = 64
    deltanet_impl: str = "chunked"  # "chunked" (training) or "recurrent" (token by token)
    # see a1jax.model.dispatch: "dense" is the reference, "dropless" training's, "batched"
    # decoding's (the engine's choice for one token per row), "expert_parallel" all-to-all.
    moe_dispatch: str = "dropless"
    moe_capacity_factor: float = 0.0  # expert_parallel only; 0 = worst case, nothing dropped
    remat: str = "none"  # per decoder layer: "none", "full" (save nothing), "dots" (save matmuls)
    # Scan over layer blocks: the decoder runs as a `lax.scan` over repeats of its layer pattern
    # (the 35B: 10 repeats of 3 DeltaNet + 1 attention), so the compiled program holds one block
    # whatever the depth. Parameters are then stacked per position in the pattern, with a leading
    # `layers` axis (params["layers"]["layers_j"], repeat p is layer p * period + j); checkpoints
    # keep that form, and conversion to and from Hugging Face handles both.
    scan_layers: bool = False
    # The loss computes logits this many tokens of a row at a time (0: all at once): at 131K
    # tokens the full [tokens, 248K vocab] fp32 logits alone would not fit a GPU.
    loss_chunk_size: int = 4096
    # Full attention kernel: "blockwise" (flash-style, any backend), "reference" (dense [t, t]
    # scores; the tests' yardstick), "cudnn" (GPU only; see a1jax.model.attention).
    attention_impl: str = "blockwise"
    # Query and key/value block of the blockwise kernel. 256: on XLA:CPU a 512 block (a 16 MB
    # fp32 score tile at batch 4) runs the bench model's attention at half the speed.
    attention_block_size: int = 256
    # When the mesh splits `act_seq` (> 1 shard), layers run context-parallel (see
    # a1jax.model.context); False leaves the sequence split to XLA (it gathers the sequence).
    context_parallel: bool = True

    def __post_init__(self) -> None:
        if self.layer_types is None:
            types = tuple(
                FULL if (i + 1) % self.full_attention_interval == 0 else LINEAR
                for i in range(self.num_hidden_layers)
            )
            object.__setattr__(self, "layer_types", types)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError naming the first field that cannot work."""
        positive = (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "linear_num_key_heads", "linear_num_value_heads",
            "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim", "num_experts",
            "num_experts_per_tok", "moe_intermediate_size", "deltanet_chunk_size",
            "attention_block_size",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}")
        bad = sorted(set(self.layer_types) - {FULL, LINEAR})
        if bad:
            raise ConfigError(f"unknown layer type {bad[0]!r}; expected {FULL!r} or {LINEAR!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(
                f"linear_num_value_heads ({self.linear_num_value_heads}) must be a multiple of "
                f"linear_num_key_heads ({self.linear_num_key_heads})")
        if self.num_experts_per_tok > self.num_experts:
            raise ConfigError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds num_experts "
                f"({self.num_experts})")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ConfigError(
                f"head_dim * partial_rotary_factor = {self.head_dim * self.partial_rotary_factor} "
                "must be an even number of dims in (0, head_dim]")
        if self.deltanet_impl not in ("chunked", "recurrent"):
            raise ConfigError(
                f"deltanet_impl must be 'chunked' or 'recurrent', got {self.deltanet_impl!r}")
        if self.moe_dispatch not in MOE_DISPATCH:
            raise ConfigError(
                f"moe_dispatch must be one of {MOE_DISPATCH}, got {self.moe_dispatch!r}")
        if self.attention_impl not in ATTENTION_IMPL:
            raise ConfigError(
                f"attention_impl must be one of {ATTENTION_IMPL}, got {self.attention_impl!r}")
        if self.remat not in REMAT:
            raise ConfigError(f"remat must be one of {REMAT}, got {self.remat!r}")
        if self.rope_type not in ("default", "yarn"):
            raise ConfigError(f"rope_type {self.rope_type!r} is not supported (only 'default' and "
                              "'yarn')")
        if self.rope_type == "yarn" and (self.rope_factor <= 1
                                         or self.rope_original_max_position_embeddings <= 0):
            raise ConfigError("yarn RoPE needs rope_factor > 1 and "
                              "rope_original_max_position_embeddings (the native context)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.scan_layers, bool):
            raise ConfigError(f"scan_layers must be true or false, got {self.scan_layers!r}")
        if self.scan_layers and self.layer_period == self.num_hidden_layers > 1:
            raise ConfigError(
                "scan_layers needs a layer pattern that repeats; layer_types "
                f"{','.join(t[0] for t in self.layer_types)} (f: full, l: linear) does not")

    @property
    def layer_period(self) -> int:
        """The shortest block of `layer_types` that the whole pattern repeats."""
        n = self.num_hidden_layers
        return next(p for p in range(1, n + 1)
                    if n % p == 0 and self.layer_types == self.layer_types[:p] * (n // p))

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_conv_dim(self) -> int:
        """Channels of the DeltaNet's fused q/k/v projection and its depthwise conv."""
        return (2 * self.linear_num_key_heads * self.linear_key_head_dim
                + self.linear_num_value_heads * self.linear_value_head_dim)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- a1jax's own JSON form (checkpoints) ----------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        """Every field, a1jax's computing choices included (what a checkpoint records)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_json_dict(cls, raw: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**raw)

    # ---- Hugging Face config.json ------------------------------------------------------------

    def to_hf_dict(self) -> dict[str, Any]:
        """A complete `qwen3_5_moe_text` config.json: every field explicit (library defaults
        differ from this model's, rope theta above all)."""
        out: dict[str, Any] = {
            "architectures": ["Qwen3_5MoeForCausalLM"],
            "model_type": "qwen3_5_moe_text",
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "rope_parameters": {
                "rope_type": self.rope_type,
                "rope_theta": self.rope_theta,
                "partial_rotary_factor": self.partial_rotary_factor,
            },
        }
        if self.rope_type == "yarn":
            out["rope_parameters"].update(
                factor=self.rope_factor,
                original_max_position_embeddings=self.rope_original_max_position_embeddings,
                beta_fast=self.rope_beta_fast, beta_slow=self.rope_beta_slow)
        for f in dataclasses.fields(self):
            if f.name in _NOT_HF:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """Reads a Hugging Face config: `qwen3_5_moe_text`, or `qwen3_5_moe` (text_config inside)."""
        if "text_config" in raw:
            raw = raw["text_config"]
        if raw.get("attention_bias"):
            raise ConfigError("attention_bias=True is not part of the Qwen3.5-MoE architecture")
        if raw.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
        kwargs: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)} - _NOT_HF
        for name in names:
            if name in raw and raw[name] is not None:
                kwargs[name] = raw[name]
        rope = raw.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "yarn"):
            raise ConfigError(f"rope_type {rope_type!r} is not supported (only 'default' and "
                              "'yarn')")
        kwargs["rope_type"] = rope_type
        if rope_type == "yarn":
            for key in ("attention_factor", "mscale", "mscale_all_dim"):
                if rope.get(key):
                    raise ConfigError(f"yarn rope_parameters.{key} is not supported")
            if rope.get("truncate", True) is not True:
                raise ConfigError("yarn rope_parameters.truncate=false is not supported")
            original = rope.get("original_max_position_embeddings")
            factor = rope.get("factor") or (raw["max_position_embeddings"] / original)
            kwargs.update(rope_factor=float(factor),
                          rope_original_max_position_embeddings=int(original or 0),
                          rope_beta_fast=float(rope.get("beta_fast") or 32.0),
                          rope_beta_slow=float(rope.get("beta_slow") or 1.0))
        # The library's own default theta (10000) is not this model's; only trust explicit values.
        if "rope_theta" in rope or "rope_theta" in raw:
            kwargs["rope_theta"] = float(rope.get("rope_theta", raw.get("rope_theta")))
        if "partial_rotary_factor" in rope or "partial_rotary_factor" in raw:
            kwargs["partial_rotary_factor"] = float(
                rope.get("partial_rotary_factor", raw.get("partial_rotary_factor")))
        eos = raw.get("eos_token_id")
        if isinstance(eos, list):
            kwargs["eos_token_id"] = eos[0] if eos else None
        missing = [n for n in _HF_REQUIRED if n not in kwargs]
        if missing:
            raise ConfigError(f"config.json lacks required field(s): {', '.join(missing)}")
        kwargs.update(overrides)
        return cls(**kwargs)


_NOT_HF = frozenset({"rope_type", "rope_factor", "rope_original_max_position_embeddings",
                     "rope_beta_fast", "rope_beta_slow",
                     "dtype", "deltanet_chunk_size", "deltanet_impl", "moe_dispatch",
                     "moe_capacity_factor", "remat", "scan_layers", "rope_theta",
                     "partial_rotary_factor", "attention_impl", "attention_block_size", "context_parallel",
                     "loss_chunk_size"})
_HF_REQUIRED = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
    "linear_value_head_dim", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size",
)
