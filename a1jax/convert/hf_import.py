"""Hugging Face directory -> a1jax Orbax checkpoint, created already sharded for a layout.

    python -m a1jax.convert from-hf --hf HF_DIR --out CKPT_DIR [--model NAME] [--layout NAME]

Every parameter is made by `jax.make_array_from_callback` with the sharding the layout gives it
(`a1jax.sharding.mesh.param_shardings`): each device's block is read straight from the
memory-mapped safetensors shards (`mapping.read_block`), so a process reads only the slices its
devices hold and never a whole tensor it does not need. The result is step 0 of a
CheckpointManager root with items `params` and `meta` (see `orbax_io`), usable as `init_from`;
`meta.hf_source` records the directory and the tensors not imported (vision tower, MTP layer) for
export's carry-over.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from a1jax.convert import orbax_io
from a1jax.convert.hf_load import LoadError, LoadReport, SafetensorsDir, match_tensors, read_config
from a1jax.convert.mapping import read_block
from a1jax.data.tokenizer import tokenizer_digest
from a1jax.errors import A1Error
from a1jax.model.config import ModelConfig
from a1jax.model.presets import get_preset
from a1jax.sharding.mesh import MeshSpec, make_mesh, param_shardings, validate_layout
from a1jax.train.step import init_params

# The fields that make two configs different models (the rest is how a1jax computes, or metadata).
SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "linear_num_key_heads", "linear_num_value_heads",
    "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim", "num_experts",
    "moe_intermediate_size", "shared_expert_intermediate_size", "layer_types",
    "tie_word_embeddings",
)
# a1jax's computing choices, taken from the preset when one is named.
COMPUTE_FIELDS = ("dtype", "deltanet_chunk_size", "deltanet_impl", "moe_dispatch",
                  "moe_capacity_factor", "remat")


@dataclasses.dataclass
class ImportResult:
    step_dir: str
    config: ModelConfig
    report: LoadReport
    num_tensors: int
    bytes_read: int
    seconds: float


def shape_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """`field: x vs y` for each field that makes `a` and `b` different models."""
    out = []
    for name in SHAPE_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            if name == "layer_types":
                x, y = ",".join(t[0] for t in x), ",".join(t[0] for t in y)  # f/l per layer
            out.append(f"{name} {x} vs {y}")
    return out


def check_preset(config: ModelConfig, model: str, where: str) -> ModelConfig:
    """`config` with the preset's computing choices, or an A1Error naming the shapes that differ."""
    try:
        preset = get_preset(model)
    except ValueError as e:
        raise A1Error(str(e)) from None
    diff = shape_differences(config, preset)
    if diff:
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise A1Error(f"{where} is not model {model!r}: {diff[0]}{more}")
    return config.replace(**{name: getattr(preset, name) for name in COMPUTE_FIELDS})


def import_hf(hf_dir: str, out: str, *, model: str | None = None, layout: str | None = None,
              devices: Sequence[Any] | None = None) -> ImportResult:
    """Writes step 0 of checkpoint root `out` from Hugging Face directory `hf_dir`.

    Everything that can be checked from config.json and the shard headers (names, shapes,
    dtypes, the preset, the layout's divisibility) is checked before anything is written."""
    start = time.perf_counter()
    config = read_config(hf_dir)
    if model:
        config = check_preset(config, model, os.path.join(hf_dir, "config.json"))
    store = SafetensorsDir(hf_dir)
    matched, report = match_tensors(store, config)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise A1Error(f"{out} already exists and is not empty")

    spec = MeshSpec.create(layout, num_devices=len(devices) if devices else None)
    boxed = jax.eval_shape(functools.partial(init_params, model_config=config),
                           jax.random.key(0))
    n = len(devices) if devices else jax.device_count()
    validate_layout(spec, boxed, num_experts=config.num_experts, dispatch=config.moe_dispatch,
                    batch=n, seq=n)
    shardings = param_shardings(boxed, make_mesh(spec, devices), spec.rules)

    params: dict = {}
    counter = {"bytes_read": 0}
    for entry in matched:
        sharding = _get(shardings, entry.path)
        _set(params, entry.path, orbax_io.LazyArray(
            entry.shape, np.float32, sharding,
            functools.partial(_make_array, entry, sharding, store, counter)))

    tokenizer = hf_dir if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")) else None
    meta = {"model_config": config.to_json_dict(),
            "tokenizer": os.path.abspath(tokenizer) if tokenizer else None,
            "tokenizer_sha256": tokenizer_digest(tokenizer) if tokenizer else None,
            "hf_source": {"path": os.path.abspath(hf_dir), "not_imported": report.not_imported}}
    try:  # each parameter is made (read) when it is written, then dropped
        step_dir = orbax_io.write_params_checkpoint(out, 0, params, meta)
    finally:
        store.close()
    return ImportResult(str(step_dir), config, report, len(matched), counter["bytes_read"],
                        time.perf_counter() - start)


def _make_array(entry, sharding, store: SafetensorsDir, counter: dict) -> jax.Array:
    """The a1jax parameter of `entry`, sharded: each addressable device's block is read from the
    safetensors shards (a block replicated over several devices once), put on its devices and
    dropped before the next is read. The shard files are unmapped afterwards, so that the pages
    read are not kept resident (reopening a file reads its header only)."""
    by_block: dict[tuple, list] = {}  # devices holding the same block (replicated dims)
    for device, index in sharding.addressable_devices_indices_map(entry.shape).items():
        key = tuple(s.indices(d)[:2] for s, d in zip(index, entry.shape))
        by_block.setdefault(key, [index]).append(device)
    arrays: dict = {}
    try:
        for index, *devices in by_block.values():
            block = np.asarray(read_block(entry, index, store.get_box), np.float32)
            counter["bytes_read"] += block.nbytes
            for device in devices:
                arrays[device] = jax.device_put(block, device)
            del block
    except LoadError:
        raise
    except Exception as e:  # a truncated shard surfaces here, inside the read
        raise LoadError(f"{store.path}: cannot read {entry.hf_names[0]}: {e}") from None
    finally:
        store.close()
    return jax.make_array_from_single_device_arrays(
        entry.shape, sharding, [arrays[d] for d in sharding.addressable_devices])


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
