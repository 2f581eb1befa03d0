"""Read a Hugging Face Qwen3.5-MoE directory (config.json + safetensors) into a1jax parameters.

Reads every layout met in the wild: fused experts (official checkpoints), per-expert keys
(`save_pretrained` in transformers 5.x), and the vision-language layout with the text model under
`model.language_model.`, whose vision and MTP tensors are reported, not imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy reader needs)
import numpy as np
from safetensors import safe_open

from a1jax.convert.mapping import Entry, entries, full_name
from a1jax.errors import A1Error
from a1jax.model.config import ConfigError, ModelConfig

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
NOT_TEXT_PREFIXES = ("model.visual.", "mtp.", "model.mtp.")
# Floating dtypes a text-model tensor may be stored in (safetensors' names).
FLOAT_DTYPES = ("F32", "BF16", "F16")


class LoadError(A1Error):
    """A Hugging Face directory that cannot be read as this model; the message says why."""


@dataclasses.dataclass
class LoadReport:
    prefix: str  # where the text model sits: "model." or "model.language_model."
    expert_layout: str  # "fused" or "per_expert"
    not_imported: list[str]  # vision / MTP tensors, kept for export's carry-over


def read_config(path: str, **overrides: Any) -> ModelConfig:
    """The model config of a Hugging Face directory."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise LoadError(f"{path}: no such directory")
    if not os.path.isfile(config_path):
        raise LoadError(f"{path}: no config.json (is this a Hugging Face model directory?)")
    try:
        with open(config_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise LoadError(f"{config_path}: invalid JSON: {e}") from None
    try:
        return ModelConfig.from_hf_dict(raw, **overrides)
    except (ConfigError, TypeError) as e:
        raise LoadError(f"{config_path}: {e}") from None


class SafetensorsDir:
    """Tensor names -> files of one directory, read lazily one tensor at a time (memory stays
    near the largest tensor, whatever the model size)."""

    def __init__(self, path: str):
        index_path = os.path.join(path, INDEX)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
        elif os.path.isfile(os.path.join(path, SINGLE)):
            weight_map = {name: SINGLE for name in self._names(os.path.join(path, SINGLE))}
        else:
            raise LoadError(f"{path}: no {SINGLE} or {INDEX}")
        for filename in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(path, filename)):
                raise LoadError(f"{path}: {INDEX} names {filename}, which does not exist")
        self.path = path
        self.weight_map = weight_map
        self._open: dict[str, Any] = {}

    @staticmethod
    def _names(filename: str) -> list[str]:
        with safe_open(filename, framework="numpy") as f:
            return list(f.keys())

    def names(self) -> Iterable[str]:
        return self.weight_map.keys()

    def _file(self, name: str):
        filename = self.weight_map[name]
        if filename not in self._open:
            self._open[filename] = safe_open(os.path.join(self.path, filename), framework="numpy")
        return self._open[filename]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """safetensors' dtype name: "F32", "BF16", ..."""
        return self._slice(name).get_dtype()

    def _slice(self, name: str):
        try:
            return self._file(name).get_slice(name)
        except Exception as e:  # a shard whose header lacks a tensor the index puts there
            raise LoadError(f"{self.path}: cannot read tensor {name} from "
                            f"{self.weight_map[name]}: {e}") from None

    def get(self, name: str) -> np.ndarray:
        try:
            return self._file(name).get_tensor(name)
        except Exception as e:  # a truncated or corrupt shard
            raise LoadError(f"{self.path}: cannot read tensor {name}: {e}") from None

    def get_box(self, name: str, box: tuple[slice, ...]) -> np.ndarray:
        """A box of one tensor; only its bytes are read (the file is memory-mapped)."""
        try:
            return self._slice(name)[box]
        except LoadError:
            raise
        except Exception as e:
            raise LoadError(f"{self.path}: cannot read tensor {name}: {e}") from None

    def close(self) -> None:
        self._open.clear()


def detect_layout(names: Iterable[str]) -> tuple[str, str]:
    """(prefix of the text model, expert layout) from the tensor names."""
    names = set(names)
    prefix = ("model.language_model."
              if any(n.startswith("model.language_model.") for n in names) else "model.")
    per_expert = any(n.startswith(prefix + "layers.") and ".mlp.experts.0." in n for n in names)
    return prefix, "per_expert" if per_expert else "fused"


def match_tensors(store: SafetensorsDir, config: ModelConfig) -> tuple[list[Entry], LoadReport]:
    """Every a1jax parameter's entry, with `hf_names` made full (prefix included), checked from the
    shard headers alone before anything is read.

    Raises LoadError naming the tensor when a tensor is missing, has a shape the config does not
    give it or a dtype that is not floating point, or is neither part of the text model nor a
    known vision / MTP tensor."""
    path = store.path
    prefix, layout = detect_layout(store.names())
    matched: list[Entry] = []
    used: set[str] = set()
    for entry in entries(config, per_expert=layout == "per_expert"):
        names = tuple(full_name(n, prefix) for n in entry.hf_names)
        for name, expected in zip(names, entry.hf_shapes):
            if name not in store.weight_map:
                raise LoadError(f"{path}: tensor {name} is missing")
            shape = store.shape(name)
            if shape != expected:
                raise LoadError(f"{path}: tensor {name} has shape {list(shape)} but the config "
                                f"gives it {list(expected)}")
            dtype = store.dtype(name)
            if dtype not in FLOAT_DTYPES:
                raise LoadError(f"{path}: tensor {name} has dtype {dtype}; expected one of "
                                f"{', '.join(FLOAT_DTYPES)}")
            used.add(name)
        matched.append(dataclasses.replace(entry, hf_names=names))
    rest = sorted(set(store.names()) - used)
    not_text = [n for n in rest if n.startswith(NOT_TEXT_PREFIXES)]
    if config.tie_word_embeddings and "lm_head.weight" in rest:
        not_text.append("lm_head.weight")  # a tied checkpoint may carry a copy of the embedding
    unknown = [n for n in rest if n not in not_text]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise LoadError(f"{path}: unknown tensor {unknown[0]}{more}: not part of this model")
    return matched, LoadReport(prefix, layout, not_text)


def load_params(path: str, config: ModelConfig | None = None,
                dtype: Any = np.float32) -> tuple[ModelConfig, dict, LoadReport]:
    """Reads a Hugging Face directory into an a1jax params tree of numpy arrays of `dtype`
    (the whole model in memory: for small models and tests; `a1jax.convert.hf_import` streams).

    Raises LoadError as `match_tensors` does."""
    config = config or read_config(path)
    store = SafetensorsDir(path)
    matched, report = match_tensors(store, config)
    params: dict = {}
    for entry in matched:
        tensors = [store.get(name) for name in entry.hf_names]
        _set(params, entry.path, np.asarray(entry.to_a1(*tensors), dtype=dtype))
    return config, params, report


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
