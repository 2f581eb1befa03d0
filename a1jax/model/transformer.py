"""The decoder: embeddings, the pattern of gated-attention and Gated-DeltaNet layers, each
followed by the sparse MoE block, a final norm and the LM head."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from a1jax.model.attention import GatedAttention
from a1jax.model.base import RMSNorm, accum_dtype, normal, param, run_ids
from a1jax.model.config import FULL, ConfigError, ModelConfig
from a1jax.model.context import from_zigzag, sequence_shards, to_zigzag, zigzag_index
from a1jax.model.deltanet import GatedDeltaNet
from a1jax.model.moe import RouterStats, SparseMoeBlock


ACTIVATION = ("act_batch", "act_seq", "act_embed")


class DecoderLayer(nn.Module):
    """h = x + mixer(norm_in(x)); out = h + moe(norm_post(h))."""

    config: ModelConfig
    layer_type: str

    @nn.compact
    def __call__(self, x_btd, positions_bt, runs_bt, valid_bt, index_bt):
        c = self.config
        h_btd = RMSNorm(c.rms_norm_eps, name="input_layernorm")(x_btd)
        if self.layer_type == FULL:
            h_btd = GatedAttention(c, name="self_attn")(h_btd, positions_bt, runs_bt, index_bt)
        else:
            h_btd = GatedDeltaNet(c, name="linear_attn")(h_btd, runs_bt)
        x_btd = x_btd + h_btd.astype(x_btd.dtype)
        h_btd = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x_btd)
        h_btd, stats = SparseMoeBlock(c, name="mlp")(h_btd, valid_bt)
        return x_btd + h_btd.astype(x_btd.dtype), stats


class Output(NamedTuple):
    logits_btx: jax.Array | None  # float32 (or wider: accum_dtype); None with head=False
    router: RouterStats  # each field stacked over MoE layers: [layers, experts]
    # With head=False: the final normed hidden states and the head's weight, for a loss that
    # computes logits a chunk at a time (a1jax.train.step.chunked_cross_entropy_sum).
    hidden_btd: jax.Array | None = None
    head_dx: jax.Array | None = None


class Transformer(nn.Module):
    """Qwen3.5-MoE text model. Packed rows: `segment_ids` (0 marks padding) and per-segment
    `positions`; attention never crosses a segment and DeltaNet state resets at each start.

    With the time axis split over a mesh axis, the layers run context-parallel on a load-balanced
    token order (a1jax.model.context); inputs and logits stay in the caller's order."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
                 positions_bt: jax.Array | None = None, head: bool = True) -> Output:
        c = self.config
        if c.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ConfigError("dtype 'float64' (for precision tests) needs jax_enable_x64; "
                              "without it JAX computes in float32")
        dtype = jnp.dtype(c.dtype)
        b, t = tokens_bt.shape
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones((b, t), jnp.int32)
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        runs_bt = run_ids(segment_ids_bt)
        index_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        # Parameters do not depend on the split, and init runs on a single token.
        shards = None if self.is_initializing() else sequence_shards(c, t)
        if shards is not None:
            tokens_bt, positions_bt, runs_bt, segment_ids_bt = to_zigzag(
                shards, tokens_bt, positions_bt.astype(jnp.int32), runs_bt,
                segment_ids_bt.astype(jnp.int32))
            index_bt = jnp.broadcast_to(zigzag_index(t, shards.size), (b, t))
        valid_bt = segment_ids_bt != 0

        embed_xd = param(self, "embed_tokens", (c.vocab_size, c.hidden_size), ("vocab", "embed"),
                         normal(c.initializer_range))
        # Gather the (FSDP-sharded) table whole before the lookup: XLA cannot partition a gather
        # from an embed-sharded table into batch/sequence-sharded rows, and would replicate anyway.
        table_xd = nn.with_logical_constraint(embed_xd, (None, None))
        x_btd = jnp.take(table_xd, tokens_bt, axis=0).astype(dtype)
        layer_cls = DecoderLayer
        if c.remat != "none":
            policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                      if c.remat == "dots" else jax.checkpoint_policies.nothing_saveable)
            layer_cls = nn.remat(DecoderLayer, policy=policy, static_argnums=())
        stats = []
        for i, layer_type in enumerate(c.layer_types):
            x_btd = nn.with_logical_constraint(x_btd, ACTIVATION)
            x_btd, layer_stats = layer_cls(c, layer_type, name=f"layers_{i}")(
                x_btd, positions_bt, runs_bt, valid_bt, index_bt)
            stats.append(layer_stats)
        x_btd = nn.with_logical_constraint(x_btd, ACTIVATION)
        if shards is not None:
            x_btd = nn.with_logical_constraint(from_zigzag(shards, x_btd), ACTIVATION)
        x_btd = RMSNorm(c.rms_norm_eps, name="norm")(x_btd)
        if c.tie_word_embeddings:
            w_dx = embed_xd.T
        else:
            w_dx = param(self, "lm_head", (c.hidden_size, c.vocab_size), ("embed", "vocab"),
                         normal(c.initializer_range))
        router = RouterStats(*(jnp.stack(field) for field in zip(*stats)))
        if not head:
            return Output(None, router, x_btd, w_dx.astype(dtype))
        w_dx = w_dx.astype(dtype)
        logits_btx = jnp.einsum("btd,dx->btx", x_btd, w_dx,
                                preferred_element_type=accum_dtype(x_btd, w_dx))
        return Output(logits_btx, router)
