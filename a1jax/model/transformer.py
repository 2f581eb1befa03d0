"""The decoder: embeddings, the pattern of gated-attention and Gated-DeltaNet layers, each
followed by the sparse MoE block, a final norm and the LM head."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model.attention import GatedAttention
from a1jax.model.base import RMSNorm, accum_dtype, normal, param, run_ids
from a1jax.model.cache import Cache
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
    def __call__(self, x_btd, positions_bt, runs_bt, valid_bt, index_bt, cache=None):
        """Returns (x, router stats, the layer's new cache: None without `cache`)."""
        c = self.config
        h_btd = RMSNorm(c.rms_norm_eps, name="input_layernorm")(x_btd)
        if self.layer_type == FULL:
            attention = GatedAttention(c, name="self_attn")
            if cache is None:
                h_btd = attention(h_btd, positions_bt, runs_bt, index_bt)
            else:
                h_btd, cache = attention(h_btd, positions_bt, runs_bt, cache=cache,
                                         valid_bt=valid_bt)
        else:
            deltanet = GatedDeltaNet(c, name="linear_attn")
            if cache is None:
                h_btd = deltanet(h_btd, runs_bt)
            else:
                h_btd, cache = deltanet(h_btd, runs_bt, cache=cache, valid_bt=valid_bt)
        x_btd = x_btd + h_btd.astype(x_btd.dtype)
        h_btd = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x_btd)
        h_btd, stats = SparseMoeBlock(c, name="mlp")(h_btd, valid_bt)
        return x_btd + h_btd.astype(x_btd.dtype), stats, cache


def decoder_layers(c: ModelConfig, layer_types: tuple[str, ...], x_btd, positions_bt, runs_bt,
                   valid_bt, index_bt, caches: tuple | None = None
                   ) -> tuple[jax.Array, RouterStats, tuple | None]:
    """Decoder layers `layer_types` in order, named layers_0, layers_1, ... in the calling
    module, each remat'd by the config's policy. Returns x, the layers' router statistics (each
    field stacked over these layers) and, with `caches` (one per layer), the new caches."""
    layer_cls = DecoderLayer
    if c.remat != "none":
        policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                  if c.remat == "dots" else jax.checkpoint_policies.nothing_saveable)
        layer_cls = nn.remat(DecoderLayer, policy=policy, static_argnums=())
    stats, new_caches = [], []
    for i, layer_type in enumerate(layer_types):
        x_btd = nn.with_logical_constraint(x_btd, ACTIVATION)
        x_btd, layer_stats, cache = layer_cls(c, layer_type, name=f"layers_{i}")(
            x_btd, positions_bt, runs_bt, valid_bt, index_bt,
            None if caches is None else caches[i])
        stats.append(layer_stats)
        new_caches.append(cache)
    return (x_btd, RouterStats(*(jnp.stack(field) for field in zip(*stats))),
            None if caches is None else tuple(new_caches))


class LayerBlock(nn.Module):
    """One repeat of the layer pattern: the body of the decoder's scan under `scan_layers`."""

    config: ModelConfig
    layer_types: tuple[str, ...]

    @nn.compact
    def __call__(self, x_btd, positions_bt, runs_bt, valid_bt, index_bt, caches=None):
        x_btd, stats, caches = decoder_layers(self.config, self.layer_types, x_btd, positions_bt,
                                              runs_bt, valid_bt, index_bt, caches)
        return x_btd, (stats, caches)


class Output(NamedTuple):
    logits_btx: jax.Array | None  # float32 (or wider: accum_dtype); None with head=False
    router: RouterStats  # each field stacked over MoE layers: [layers, experts]
    # With head=False: the final normed hidden states and the head's weight, for a loss that
    # computes logits a chunk at a time (a1jax.train.step.chunked_cross_entropy_sum).
    hidden_btd: jax.Array | None = None
    head_dx: jax.Array | None = None
    cache: Cache | None = None  # with a cache given: the cache with these tokens appended


class Transformer(nn.Module):
    """Qwen3.5-MoE text model. Packed rows: `segment_ids` (0 marks padding) and per-segment
    `positions`; attention never crosses a segment and DeltaNet state resets at each start.

    With the time axis split over a mesh axis, the layers run context-parallel on a load-balanced
    token order (a1jax.model.context); inputs and logits stay in the caller's order."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
                 positions_bt: jax.Array | None = None, head: bool = True,
                 cache: Cache | None = None, valid_bt: jax.Array | None = None) -> Output:
        """With `cache` (decoding, a1jax.model.cache): `tokens_bt` continue each row from its
        cached length (rows may differ), `valid_bt` marks the real tokens (a prefix of each
        row; default all), and the output carries the cache with them appended. Packing
        arguments do not apply then, nor a sequence-split layout."""
        c = self.config
        if cache is not None:
            return self._decode(tokens_bt, cache, valid_bt, head)
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

        embed_xd = self._embedding()
        # Gather the (FSDP-sharded) table whole before the lookup: XLA cannot partition a gather
        # from an embed-sharded table into batch/sequence-sharded rows, and would replicate anyway.
        table_xd = nn.with_logical_constraint(embed_xd, (None, None))
        x_btd = jnp.take(table_xd, tokens_bt, axis=0).astype(dtype)
        x_btd, router, _ = self._layers(x_btd, positions_bt, runs_bt, valid_bt, index_bt)
        x_btd = nn.with_logical_constraint(x_btd, ACTIVATION)
        if shards is not None:
            x_btd = nn.with_logical_constraint(from_zigzag(shards, x_btd), ACTIVATION)
        return self._head(embed_xd, x_btd, router, head)

    def _decode(self, tokens_bt, cache: Cache, valid_bt, head: bool) -> Output:
        c = self.config
        b, t = tokens_bt.shape
        if sequence_shards(c, t) is not None:
            raise ConfigError("decoding splits rows over `data` and experts over `expert`; a "
                              "layout that splits the sequence does not apply")
        if valid_bt is None:
            valid_bt = jnp.ones((b, t), bool)
        positions_bt = cache.lengths_b[:, None] + jnp.arange(t, dtype=jnp.int32)
        embed_xd = self._embedding()
        table_xd = nn.with_logical_constraint(embed_xd, (None, None))
        x_btd = jnp.take(table_xd, tokens_bt, axis=0).astype(jnp.dtype(c.dtype))
        x_btd, router, layers = self._layers(x_btd, positions_bt, jnp.zeros((b, t), jnp.int32),
                                             valid_bt, positions_bt, cache.layers)
        out = self._head(embed_xd, x_btd, router, head)
        lengths_b = cache.lengths_b + jnp.sum(valid_bt, axis=1).astype(jnp.int32)
        return out._replace(cache=Cache(layers, lengths_b))

    def _embedding(self) -> jax.Array:
        c = self.config
        return param(self, "embed_tokens", (c.vocab_size, c.hidden_size), ("vocab", "embed"),
                     normal(c.initializer_range))

    def _layers(self, x_btd, positions_bt, runs_bt, valid_bt, index_bt, caches=None):
        """The decoder layers, scanned or one by one: (x, router stats stacked over layers,
        new caches or None)."""
        c = self.config
        if c.scan_layers:
            period, repeats = c.layer_period, c.num_hidden_layers // c.layer_period
            # The caches, stacked like the parameters, are scanned over with them.
            in_axes = (nn.broadcast,) * 4 + (() if caches is None else (0,))
            blocks = nn.scan(LayerBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=in_axes, length=repeats,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            x_btd, (stacked, caches) = blocks(c, c.layer_types[:period], name="layers")(
                x_btd, positions_bt, runs_bt, valid_bt, index_bt,
                *(() if caches is None else (caches,)))
            # [repeats, period, ...] -> [layers, ...]: repeat p, position j is layer p*period + j.
            router = jax.tree.map(lambda s: s.reshape((-1,) + s.shape[2:]), stacked)
            return x_btd, router, caches
        return decoder_layers(c, c.layer_types, x_btd, positions_bt, runs_bt, valid_bt,
                              index_bt, caches)

    def _head(self, embed_xd, x_btd, router, head: bool) -> Output:
        """The final norm and the LM head."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        x_btd = RMSNorm(c.rms_norm_eps, name="norm")(x_btd)
        if c.tie_word_embeddings:
            w_dx = embed_xd.T
        else:
            w_dx = param(self, "lm_head", (c.hidden_size, c.vocab_size), ("embed", "vocab"),
                         normal(c.initializer_range))
        if not head:
            return Output(None, router, x_btd, w_dx.astype(dtype))
        w_dx = w_dx.astype(dtype)
        logits_btx = jnp.einsum("btd,dx->btx", x_btd, w_dx,
                                preferred_element_type=accum_dtype(x_btd, w_dx))
        return Output(logits_btx, router)


# ---- the two forms of a decoder's parameters -------------------------------------------------
# Unstacked: params["layers_i"], one subtree per layer (the model without `scan_layers`, and
# the order Hugging Face names layers in). Stacked: params["layers"]["layers_j"], position j of
# the layer pattern, each leaf with a leading axis over the pattern's repeats.

def is_stacked(params: Mapping[str, Any]) -> bool:
    return "layers" in params


def stack_layers(params: Mapping[str, Any], c: ModelConfig) -> dict:
    """Unstacked -> stacked decoder parameters (numpy or JAX leaves; other keys kept)."""
    period, n = c.layer_period, c.num_hidden_layers
    out = {k: v for k, v in params.items() if not _is_layer_key(k)}
    out["layers"] = {
        f"layers_{j}": jax.tree.map(lambda *xs: _xp(xs[0]).stack(xs),
                                    *(params[f"layers_{i}"] for i in range(j, n, period)))
        for j in range(period)}
    return out


def unstack_layers(params: Mapping[str, Any], c: ModelConfig) -> dict:
    """Stacked -> unstacked decoder parameters (numpy or JAX leaves; other keys kept)."""
    period = c.layer_period
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(c.num_hidden_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, p=i // period: x[p],
                                          params["layers"][f"layers_{i % period}"])
    return out


def convert_layers(tree: Any, c: ModelConfig, stacked: bool) -> Any:
    """Every params-shaped dict in `tree` (parameters, gradients, Adam moments: a whole
    TrainState) in the stacked form if `stacked`, else unstacked; either form may come in."""
    def convert(node):
        if not isinstance(node, Mapping):  # a leaf outside any params-shaped dict
            return node
        if stacked and not is_stacked(node):
            return stack_layers(node, c)
        if not stacked and is_stacked(node):
            return unstack_layers(node, c)
        return node
    return jax.tree.map(convert, tree, is_leaf=lambda x: isinstance(x, Mapping) and (
        "layers" in x or "layers_0" in x))


def layer_leaf(c: ModelConfig, path: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    """Where unstacked parameter `path` lives in the stacked form: (path, index on the leading
    axis), or (path, None) for a parameter outside the decoder layers."""
    if not _is_layer_key(path[0]):
        return path, None
    i = int(path[0][len("layers_"):])
    return ("layers", f"layers_{i % c.layer_period}") + tuple(path[1:]), i // c.layer_period


def _is_layer_key(key: str) -> bool:
    return key.startswith("layers_") and key[len("layers_"):].isdigit()


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp
