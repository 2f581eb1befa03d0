"""Parameter counts of a model, computed from shapes alone (nothing is allocated).

    python -m a1jax.model_info --model agents_a1_35b
    python -m a1jax.model_info --model path/to/hf_dir --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from a1jax import cli
from a1jax.errors import A1Error
from a1jax.model import ModelConfig, Transformer, get_preset

COMPONENTS = ("embedding", "lm_head", "full_attention", "linear_attention", "router",
              "routed_experts", "shared_expert", "norms")


def param_shapes(config: ModelConfig) -> dict:
    """The params tree as ShapeDtypeStructs, via eval_shape (no memory, no compute)."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    variables = jax.eval_shape(Transformer(config).init, jax.random.key(0), tokens)
    return nn.meta.unbox(variables["params"])


def _component(path: tuple[str, ...]) -> str:
    name = "/".join(path)
    if path[0] == "embed_tokens":
        return "embedding"
    if path[0] == "lm_head":
        return "lm_head"
    if "self_attn" in path and "norm" not in path[-2]:
        return "full_attention"
    if "linear_attn" in path:
        return "linear_attention"
    if path[-1] == "gate":
        return "router"
    if "experts_" in name:
        return "routed_experts"
    if "shared_" in name:
        return "shared_expert"
    return "norms"  # input / post-attention / final norms, q_norm and k_norm


def count_params(config: ModelConfig) -> dict[str, int]:
    """Parameters per component, plus `total` and `active` (per token: every routed expert's
    weights count only in the share top-k of num_experts that a token uses)."""
    counts = dict.fromkeys(COMPONENTS, 0)
    flat = jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]
    for keys, leaf in flat:
        path = tuple(k.key for k in keys)
        counts[_component(path)] += math.prod(leaf.shape)
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    inactive = counts["routed_experts"] * (config.num_experts - config.num_experts_per_tok)
    counts["active"] = counts["total"] - inactive // config.num_experts
    return counts


def model_flops_per_step(config, batch: int, seq: int) -> float:
    """6 x active matmul parameters x tokens, plus causal attention and the DeltaNet chunk work
    (forward + backward = 3 x forward)."""
    counts = count_params(config)
    tokens = batch * seq
    dense = 6 * (counts["active"] - counts["embedding"]) * tokens
    n_full = config.layer_types.count("full_attention")
    n_linear = config.num_hidden_layers - n_full
    attention = 3 * n_full * 4 * config.num_attention_heads * config.head_dim * (seq / 2) * tokens
    c, hv = config.deltanet_chunk_size, config.linear_num_value_heads
    dk, dv = config.linear_key_head_dim, config.linear_value_head_dim
    deltanet = 3 * n_linear * hv * tokens * (2 * c * (2 * dk + dv) + 6 * dk * dv)
    return dense + attention + deltanet


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def load_config(name_or_path: str) -> ModelConfig:
    """A preset name, or a Hugging Face directory (its config.json)."""
    if os.path.isdir(name_or_path):
        from a1jax.convert.hf_load import read_config
        return read_config(name_or_path)
    try:
        return get_preset(name_or_path)
    except ValueError as e:
        raise A1Error(f"{e} (or give a Hugging Face model directory)") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m a1jax.model_info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="preset name or Hugging Face directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    config = load_config(args.model)
    counts = count_params(config)
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"model {args.model}: {config.num_hidden_layers} layers "
          f"({config.layer_types.count('full_attention')} full attention, "
          f"{config.layer_types.count('linear_attention')} linear attention), "
          f"{config.num_experts} experts top-{config.num_experts_per_tok}")
    for name in COMPONENTS:
        print(f"  {name:<18}{counts[name]:>16,}  {_human(counts[name]):>8}")
    print(f"  {'total':<18}{counts['total']:>16,}  {_human(counts['total']):>8}")
    print(f"  {'active per token':<18}{counts['active']:>16,}  {_human(counts['active']):>8}")
    return 0


if __name__ == "__main__":
    cli.run(main)
