"""The one table between a1jax parameter paths and Hugging Face tensor names.

a1jax stores matrices input-first and split per head (`q_proj` [d, heads, 2*head_dim]); Hugging
Face stores them output-first and flat (`q_proj.weight` [2*heads*head_dim, d]). Every tensor's
two forms and the reshape between them are written once here; import and export both use it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Sequence

import numpy as np

from a1jax.model.config import FULL, ModelConfig
from a1jax.model.transformer import is_stacked, unstack_layers

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Entry:
    """One a1jax parameter and the Hugging Face tensor(s) it comes from."""

    path: tuple[str, ...]  # in the a1jax params tree
    hf_names: tuple[str, ...]  # without the "model." / "model.language_model." prefix
    hf_shapes: tuple[tuple[int, ...], ...]
    to_a1: Callable[..., Array]  # (*hf tensors) -> a1jax array
    to_hf: Callable[[Array], tuple[Array, ...]]  # a1jax array -> hf tensors
    # The same map as `to_a1`, as geometry, so that a block of the a1jax array can be read
    # without the whole HF tensor (see `read_block`).
    shape: tuple[int, ...] = ()  # of the a1jax array
    placement: "Placement | None" = None


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where each a1jax element sits in the Hugging Face tensor: a1jax element `m` is HF element
    `[offset[j] + sum(stride[i] * m[i] for i with axis[i] == j) for each HF axis j]`.

    An a1jax dim with axis None selects among the entry's HF tensors instead (the per-expert
    layout: one tensor per expert)."""

    axis: tuple[int | None, ...]  # per a1jax dim
    stride: tuple[int, ...]  # per a1jax dim
    offset: tuple[int, ...]  # per HF axis


def _t(w: Array) -> Array:
    return np.swapaxes(w, -1, -2)


def _identity(ndim: int) -> Placement:
    return Placement(tuple(range(ndim)), (1,) * ndim, (0,) * ndim)


def _same(path, name, shape):
    return Entry(path, (name,), (shape,), lambda w: w, lambda w: (w,), shape, _identity(len(shape)))


def _linear(path, name, hf_shape, a1_shape):
    """HF [out, in] <-> a1jax [in, out], with `in` or `out` split per head as `a1_shape` says."""
    out_dim, in_dim = hf_shape
    # a1jax dims [:k] flatten (row-major) to HF axis 1 (in), dims [k:] to HF axis 0 (out).
    k = next(k for k in range(1, len(a1_shape)) if math.prod(a1_shape[:k]) == in_dim)
    strides = _row_major(a1_shape[:k]) + _row_major(a1_shape[k:])
    placement = Placement((1,) * k + (0,) * (len(a1_shape) - k), strides, (0, 0))
    return Entry(path, (name,), (hf_shape,), lambda w: _t(w).reshape(a1_shape),
                 lambda w: (_t(w.reshape(in_dim, out_dim)),), tuple(a1_shape), placement)


def _row_major(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _attention(c: ModelConfig, lp: tuple[str, ...], hp: str) -> Iterator[Entry]:
    d, h, n, k = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    p = lp + ("self_attn",)
    yield _linear(p + ("q_proj",), hp + "self_attn.q_proj.weight", (2 * h * k, d), (d, h, 2 * k))
    yield _linear(p + ("k_proj",), hp + "self_attn.k_proj.weight", (n * k, d), (d, n, k))
    yield _linear(p + ("v_proj",), hp + "self_attn.v_proj.weight", (n * k, d), (d, n, k))
    yield _linear(p + ("o_proj",), hp + "self_attn.o_proj.weight", (d, h * k), (h, k, d))
    yield _same(p + ("q_norm", "weight"), hp + "self_attn.q_norm.weight", (k,))
    yield _same(p + ("k_norm", "weight"), hp + "self_attn.k_norm.weight", (k,))


def _deltanet(c: ModelConfig, lp: tuple[str, ...], hp: str) -> Iterator[Entry]:
    d, hv, dv = c.hidden_size, c.linear_num_value_heads, c.linear_value_head_dim
    ch, w = c.linear_conv_dim, c.linear_conv_kernel_dim
    p, hp = lp + ("linear_attn",), hp + "linear_attn."
    yield _linear(p + ("in_proj_qkv",), hp + "in_proj_qkv.weight", (ch, d), (d, ch))
    yield _linear(p + ("in_proj_z",), hp + "in_proj_z.weight", (hv * dv, d), (d, hv, dv))
    yield _linear(p + ("in_proj_b",), hp + "in_proj_b.weight", (hv, d), (d, hv))
    yield _linear(p + ("in_proj_a",), hp + "in_proj_a.weight", (hv, d), (d, hv))
    yield Entry(p + ("conv1d",), (hp + "conv1d.weight",), ((ch, 1, w),),
                lambda x: _t(x[:, 0, :]), lambda x: (_t(x)[:, None, :],),
                (w, ch), Placement((2, 0), (1, 1), (0, 0, 0)))
    yield _same(p + ("A_log",), hp + "A_log", (hv,))
    yield _same(p + ("dt_bias",), hp + "dt_bias", (hv,))
    yield _same(p + ("norm",), hp + "norm.weight", (dv,))
    yield _linear(p + ("out_proj",), hp + "out_proj.weight", (d, hv * dv), (hv, dv, d))


def _moe(c: ModelConfig, lp: tuple[str, ...], hp: str, per_expert: bool) -> Iterator[Entry]:
    d, e, f, fs = (c.hidden_size, c.num_experts, c.moe_intermediate_size,
                   c.shared_expert_intermediate_size)
    p, hp = lp + ("mlp",), hp + "mlp."
    yield _linear(p + ("gate",), hp + "gate.weight", (e, d), (d, e))
    if per_expert:
        for proj, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
            names = tuple(f"{hp}experts.{i}.{proj}.weight" for i in range(e))
            yield Entry(p + (f"experts_{proj}",), names, (shape,) * e,
                        lambda *ws: _t(np.stack(ws)),
                        lambda x: tuple(_t(x)),
                        (e, shape[1], shape[0]), Placement((None, 1, 0), (1, 1, 1), (0, 0)))
    else:
        # a1jax [e, d, f] <- HF gate_up_proj [e, 2f, d]: gate is rows [0, f), up rows [f, 2f).
        yield Entry(p + ("experts_gate_proj",), (hp + "experts.gate_up_proj",), ((e, 2 * f, d),),
                    lambda w: _t(w[:, :f]), None,
                    (e, d, f), Placement((0, 2, 1), (1, 1, 1), (0, 0, 0)))
        yield Entry(p + ("experts_up_proj",), (hp + "experts.gate_up_proj",), ((e, 2 * f, d),),
                    lambda w: _t(w[:, f:]), None,
                    (e, d, f), Placement((0, 2, 1), (1, 1, 1), (0, f, 0)))
        yield Entry(p + ("experts_down_proj",), (hp + "experts.down_proj",), ((e, d, f),),
                    _t, lambda x: (_t(x),), (e, f, d), Placement((0, 2, 1), (1, 1, 1), (0, 0, 0)))
    yield _linear(p + ("shared_gate_proj",), hp + "shared_expert.gate_proj.weight", (fs, d), (d, fs))
    yield _linear(p + ("shared_up_proj",), hp + "shared_expert.up_proj.weight", (fs, d), (d, fs))
    yield _linear(p + ("shared_down_proj",), hp + "shared_expert.down_proj.weight", (d, fs), (fs, d))
    yield _linear(p + ("shared_expert_gate",), hp + "shared_expert_gate.weight", (1, d), (d, 1))


def entries(c: ModelConfig, per_expert: bool = False) -> Iterator[Entry]:
    """Every a1jax parameter of model `c`, in Hugging Face order. Names are relative to the text
    model's prefix, except `lm_head.weight`, which is top level (marked by a leading '/')."""
    yield _same(("embed_tokens",), "embed_tokens.weight", (c.vocab_size, c.hidden_size))
    for i, layer_type in enumerate(c.layer_types):
        lp, hp = (f"layers_{i}",), f"layers.{i}."
        yield from (_attention if layer_type == FULL else _deltanet)(c, lp, hp)
        yield from _moe(c, lp, hp, per_expert)
        yield _same(lp + ("input_layernorm", "weight"), hp + "input_layernorm.weight",
                    (c.hidden_size,))
        yield _same(lp + ("post_attention_layernorm", "weight"),
                    hp + "post_attention_layernorm.weight", (c.hidden_size,))
    yield _same(("norm", "weight"), "norm.weight", (c.hidden_size,))
    if not c.tie_word_embeddings:
        yield _linear(("lm_head",), "/lm_head.weight", (c.vocab_size, c.hidden_size),
                      (c.hidden_size, c.vocab_size))


def to_hf_tensors(params: dict, c: ModelConfig, prefix: str = "model.") -> dict[str, Array]:
    """a1jax params (decoder stacked or not) -> Hugging Face tensors (fused-expert layout, as
    official Qwen3.5 checkpoints)."""
    if is_stacked(params):
        params = unstack_layers(params, c)
    out: dict[str, Array] = {}
    fused: dict[str, dict[str, Array]] = {}
    for entry in entries(c):
        value = np.asarray(_get(params, entry.path))
        name = entry.hf_names[0]
        if entry.to_hf is None:  # the two halves of experts.gate_up_proj
            fused.setdefault(name, {})[entry.path[-1]] = _t(value)
            continue
        for hf_name, tensor in zip(entry.hf_names, entry.to_hf(value)):
            out[full_name(hf_name, prefix)] = np.ascontiguousarray(tensor)
    for name, halves in fused.items():
        # ascontiguousarray: concatenating transposed views need not give a C-ordered array,
        # and safetensors writes the raw buffer.
        out[full_name(name, prefix)] = np.ascontiguousarray(np.concatenate(
            [halves["experts_gate_proj"], halves["experts_up_proj"]], axis=1))
    return out


def read_block(entry: Entry, index: tuple[slice, ...],
               read: Callable[[str, tuple[slice, ...]], Array]) -> Array:
    """`entry.to_a1(*hf tensors)[index]` without reading whole HF tensors: `read(name, slices)`
    returns a box of one HF tensor, and only the bounding box of the wanted elements is read (the
    exact elements when a sharded dim is the outermost of a head split, as layouts shard them).

    `index` holds unit-step slices, one per a1jax dim (what `jax.make_array_from_callback` gives).
    """
    p = entry.placement
    bounds = [s.indices(n)[:2] for s, n in zip(index, entry.shape)]
    select = [i for i, a in enumerate(p.axis) if a is None]
    if select:  # one HF tensor per position along this dim (the per-expert layout)
        (i,) = select
        rest = Placement(p.axis[:i] + p.axis[i + 1:], p.stride[:i] + p.stride[i + 1:], p.offset)
        inner = index[:i] + index[i + 1:]
        blocks = [read_block(dataclasses.replace(entry, hf_names=(entry.hf_names[t],),
                                                 shape=entry.shape[:i] + entry.shape[i + 1:],
                                                 placement=rest), inner, read)
                  for t in range(*bounds[i])]
        return np.stack(blocks, axis=i)
    groups = [[i for i, a in enumerate(p.axis) if a == j] for j in range(len(p.offset))]
    boxes, positions = [], []
    for j, group in enumerate(groups):
        lo = p.offset[j] + sum(p.stride[i] * bounds[i][0] for i in group)
        hi = p.offset[j] + sum(p.stride[i] * (bounds[i][1] - 1) for i in group) + 1
        boxes.append(slice(lo, hi))
        # The HF positions of the wanted elements along axis j, row-major over the group's dims.
        pos = np.zeros((), np.int64)
        for i in group:
            pos = pos[..., None] + p.stride[i] * np.arange(*bounds[i])
        positions.append(pos.ravel() + p.offset[j] - lo)
    block = read(entry.hf_names[0], tuple(boxes))
    for j, pos in enumerate(positions):
        if len(pos) != block.shape[j] or (len(pos) and pos[-1] != len(pos) - 1):
            block = np.take(block, pos, axis=j)
    counts = [bounds[i][1] - bounds[i][0] for group in groups for i in group]
    order = [i for group in groups for i in group]
    return np.transpose(block.reshape(counts), np.argsort(order))


def full_name(name: str, prefix: str) -> str:
    return name[1:] if name.startswith("/") else prefix + name


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree
