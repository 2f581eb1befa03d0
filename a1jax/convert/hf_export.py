"""a1jax Orbax checkpoint -> servable Hugging Face directory, streamed.

Writes config.json, safetensors shards with `model.safetensors.index.json` (fused experts, as the
official Qwen3.5 checkpoints), generation_config.json and the tokenizer with the chat template
a1jax trained with. Parameters are restored one leaf at a time and streamed into the shard being
written (`safetensors_stream`), the fused `experts.gate_up_proj` one expert at a time, so memory
stays near the largest tensor whatever the model size (for a checkpoint written with
`scan_layers`, near two stacked leaves: a parameter's every repeat of the layer pattern). With
`source` (the Hugging Face directory stage 1 started from) the tensors a1jax does not train
(vision tower, MTP layer) are copied unchanged and the output keeps the source's layout and
config: a drop-in replacement.

Everything is written into a hidden sibling directory renamed into place at the end: an
interrupted export never looks complete. In a multi-process job every process calls `export`;
the shard plan is the same everywhere, each process writes every `process_count`-th file, and
process 0 writes the rest and renames after a barrier.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import ml_dtypes
import numpy as np

from a1jax.convert import orbax_io, safetensors_stream as sts
from a1jax.convert.hf_import import shape_differences
from a1jax.convert.hf_load import SafetensorsDir, match_tensors, read_config
from a1jax.convert.mapping import entries, full_name
from a1jax.data.chat_template import template_for
from a1jax.data.tokenizer import SHIPPED_TOKENIZER_DIR, check_tokenizer, load_tokenizer
from a1jax.errors import A1Error
from a1jax.model.config import ConfigError, ModelConfig
from a1jax.model.transformer import layer_leaf

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
MAX_SHARD_BYTES = 5 * 10**9
# The sampling Qwen recommends for Qwen3.5 / Agents-A1 in thinking mode.
SAMPLING = {"do_sample": True, "temperature": 0.85, "top_p": 0.95, "top_k": 20}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt")
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


class ExportError(A1Error):
    """A checkpoint or source directory that cannot be exported as asked."""


@dataclasses.dataclass
class ExportResult:
    out: str
    config: ModelConfig
    num_tensors: int
    num_shards: int
    bytes_written: int
    carried_over: list[str]
    seconds: float


def export(checkpoint: str, out: str, *, dtype: str = "bfloat16", source: str | None = None,
           tokenizer: str | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> ExportResult:
    """Exports checkpoint `checkpoint` (a step dir, a root: its latest step, or a run workdir) to
    Hugging Face directory `out`, which must not exist.

    `tokenizer` overrides the one the checkpoint's meta records (default: a1jax's shipped one).
    Everything that can be checked before writing is (meta, parameter shapes against the model
    config, the source's shapes); errors are ExportError / CheckpointError (A1Error)."""
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if os.path.exists(out):
        raise ExportError(f"{out} already exists")
    step = orbax_io.resolve_step_dir(checkpoint)
    meta = orbax_io.read_meta(step)
    if not meta.get("model_config"):
        raise ExportError(f"{step}: meta records no model_config")
    try:
        config = ModelConfig.from_json_dict(meta["model_config"])
    except (ConfigError, TypeError) as e:
        raise ExportError(f"{step}: meta's model_config: {e}") from None
    _check_params(step, config)
    if not tokenizer:  # one given is the user's choice, as in a1jax.eval
        check_tokenizer(meta["tokenizer_sha256"], meta["tokenizer"], f"checkpoint {step}",
                        "pass the one it was trained with (--tokenizer)")

    prefix, carried, src_store, hf_config = "model.", [], None, _text_config(config, dtype)
    if source is not None:
        src_config = read_config(source)
        diff = shape_differences(config, src_config)
        if diff:
            more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            raise ExportError(f"--source {source} is another model than the checkpoint "
                              f"{step}: {diff[0]}{more}")
        src_store = SafetensorsDir(source)
        _, report = match_tensors(src_store, src_config)
        prefix = report.prefix
        # A tied model's stale head copy is not carried: the embedding is the head.
        carried = [n for n in report.not_imported if n != "lm_head.weight"]
        with open(os.path.join(source, "config.json")) as f:
            hf_config = _merge_config(json.load(f), hf_config)

    np_dtype = DTYPES[dtype]
    reader = _LeafReader(step, config)
    tensors = list(_text_tensors(config, reader, prefix, np_dtype))
    tensors += [_carried_tensor(src_store, name) for name in carried]
    shards = sts.plan_shards(tensors, max_shard_bytes)

    parent = os.path.dirname(os.path.abspath(out)) or "."
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out))}.partial")
    rank, nproc = jax.process_index(), jax.process_count()
    if rank == 0:
        if os.path.exists(tmp):  # left by an interrupted export of this same name
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        tok_path = tokenizer or meta.get("tokenizer") or str(SHIPPED_TOKENIZER_DIR)
        eos_ids, pad_id = write_tokenizer(tok_path, tmp, config.vocab_size)
        write_generation_config(tmp, config, eos_ids, pad_id)
    _barrier("a1jax-export-start")
    for i, shard in enumerate(shards):
        if i % nproc == rank:
            sts.write_shard(os.path.join(tmp, shard.filename), shard)
    _barrier("a1jax-export-shards")
    if rank == 0:
        sts.write_index(tmp, shards)
        os.rename(tmp, out)
    _barrier("a1jax-export-done")
    return ExportResult(out, config, len(tensors), len(shards), sum(s.nbytes for s in shards),
                        carried, time.perf_counter() - start)


# ---- parameters -> tensors -------------------------------------------------------------------

class _LeafReader:
    """Restores checkpoint leaves on demand; the caller drops each when written.

    A checkpoint written with `scan_layers` holds each decoder parameter stacked over the
    repeats of the layer pattern: a layer's tensor is a slice of its stacked leaf, which is kept
    until it is displaced (at most two: the gate and up halves of `experts.gate_up_proj`), and
    `_text_tensors` puts each stacked leaf's layers next to each other so that it is read once.
    """

    def __init__(self, step: Path, config: ModelConfig):
        self.step = step
        self.config = config
        self.handler = orbax_io._handler()
        self.cache: dict[tuple[str, ...], np.ndarray] = {}

    def __call__(self, path: tuple[str, ...]) -> np.ndarray:
        index = None
        if self.config.scan_layers:
            path, index = layer_leaf(self.config, path)
        if path not in self.cache:
            while len(self.cache) >= (2 if index is not None else 1):
                self.cache.pop(next(iter(self.cache)))
            self.cache[path] = orbax_io.read_param(self.step, path, self.handler)
        return self.cache[path] if index is None else self.cache[path][index]

    def drop(self, *paths: tuple[str, ...]) -> None:
        for path in paths:
            if not self.config.scan_layers or layer_leaf(self.config, path)[1] is None:
                self.cache.pop(path, None)


def _text_tensors(config: ModelConfig, read: _LeafReader, prefix: str,
                  dtype: np.dtype) -> Iterator[sts.TensorPlan]:
    """The text model's tensors in Hugging Face order (under `scan_layers`, each stacked leaf's
    layers in a row), each streamed from its leaf (or leaves)."""
    ordered = list(entries(config))
    if config.scan_layers:
        ordered.sort(key=lambda e: _leaf_order(config, e.path))
    halves: dict[str, Any] = {}
    for entry in ordered:
        name = full_name(entry.hf_names[0], prefix)
        if entry.to_hf is None:  # experts.gate_up_proj: [e, 2f, d] from gate and up [e, d, f]
            halves[entry.path[-1]] = entry
            if len(halves) < 2:
                continue
            gate, up = halves.pop("experts_gate_proj"), halves.pop("experts_up_proj")
            yield sts.TensorPlan(name, entry.hf_shapes[0], dtype,
                                 lambda g=gate.path, u=up.path: _fused_pieces(read, g, u, dtype))
            continue
        (shape,) = entry.hf_shapes
        yield sts.TensorPlan(name, shape, dtype,
                             lambda e=entry: _pieces(read, e, dtype))


def _leaf_order(config: ModelConfig, path: tuple[str, ...]) -> tuple:
    """Sort key: by stacked leaf (the fused experts' up half with its gate half), then layer."""
    if path[-1] == "experts_up_proj":
        path = path[:-1] + ("experts_gate_proj",)
    leaf, index = layer_leaf(config, path)
    return (index is not None, leaf, index or 0)


def _pieces(read: _LeafReader, entry, dtype: np.dtype) -> Iterator[np.ndarray]:
    (hf,) = entry.to_hf(read(entry.path))  # a view: transposes are resolved chunk by chunk
    yield from sts.row_chunks(hf, dtype)
    read.drop(entry.path)


def _fused_pieces(read: _LeafReader, gate_path, up_path, dtype: np.dtype) -> Iterator:
    """gate_up_proj [e, 2f, d]: expert e's gate rows, then its up rows. Written one half at a
    time at their offsets, so only one [e, d, f] leaf is held."""
    for half, path in enumerate((gate_path, up_path)):
        leaf_edf = read(path)
        e, d, f = leaf_edf.shape
        row = f * d * dtype.itemsize  # one expert's half, in bytes
        for i in range(e):
            yield (2 * i + half) * row, np.ascontiguousarray(leaf_edf[i].T, dtype=dtype)
        read.drop(path)
        del leaf_edf  # before the next half is read, not after


def _carried_tensor(store: SafetensorsDir, name: str) -> sts.TensorPlan:
    dtype = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16,
             "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8,
             "I8": np.int8, "BOOL": np.bool_}.get(store.dtype(name))
    if dtype is None:
        raise ExportError(f"{store.path}: tensor {name} has dtype {store.dtype(name)}, which "
                          "export cannot carry over")

    def pieces():
        # Leading-axis slices of the memory-mapped tensor, copied unchanged.
        shape = store.shape(name)
        if not shape:
            yield store.get(name)
            return
        row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
        step = max(1, sts.CHUNK_BYTES // row)
        for start in range(0, shape[0], step):
            yield store.get_box(name, (slice(start, min(start + step, shape[0])),))

    return sts.TensorPlan(name, store.shape(name), np.dtype(dtype), pieces)


def _check_params(step: Path, config: ModelConfig) -> None:
    """The checkpoint's parameters are exactly the model config's, shape and dtype."""
    stored = orbax_io.param_metadata(step)
    expected = {e.path: e.shape for e in entries(config)}
    if config.scan_layers:  # one stacked leaf for each decoder parameter of a pattern position
        repeats = config.num_hidden_layers // config.layer_period
        expected = {layer_leaf(config, path)[0]: (shape if layer_leaf(config, path)[1] is None
                                                  else (repeats,) + shape)
                    for path, shape in expected.items()}
    for path, shape in expected.items():
        if path not in stored:
            raise ExportError(f"{step}: parameter {'/'.join(path)} is missing (the checkpoint "
                              "is not the model its meta names)")
        got, dtype = stored[path]
        if got != shape:
            raise ExportError(f"{step}: parameter {'/'.join(path)} has shape {list(got)} but the "
                              f"checkpoint's model config gives it {list(shape)}")
        if dtype not in ("float32", "bfloat16"):
            raise ExportError(f"{step}: parameter {'/'.join(path)} has dtype {dtype}")
    unknown = sorted(set(stored) - set(expected))
    if unknown:
        raise ExportError(f"{step}: unknown parameter {'/'.join(unknown[0])}: not part of the "
                          "checkpoint's model config")


# ---- config, tokenizer, generation config ----------------------------------------------------

def _text_config(config: ModelConfig, dtype: str) -> dict[str, Any]:
    out = config.to_hf_dict()
    out["dtype"] = dtype
    return out


def _merge_config(source: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """The source's config with the trained text model's fields: inside `text_config` for the
    vision-language layout, at top level for a text-only source."""
    merged = dict(source)
    if "text_config" in source:
        inner = {k: v for k, v in text.items() if k not in ("architectures", "dtype")}
        merged["text_config"] = {**source["text_config"], **inner}
        merged["dtype"] = text["dtype"]
    else:
        merged.update(text)
    return merged


def write_tokenizer(path: str, out: str, vocab_size: int) -> tuple[list[int], int | None]:
    """Copies the tokenizer files of `path` into `out` with the chat template a1jax renders with
    (the tokenizer's own, else a1jax's Qwen3.5 one) in tokenizer_config.json and in
    chat_template.jinja. Returns (end-of-turn token ids, pad id) within the model's vocabulary."""
    try:
        tok = load_tokenizer(path)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ExportError(f"tokenizer {path}: {e}") from None
    if len(tok) > vocab_size:
        print(f"warning: tokenizer {path} has {len(tok)} tokens but the model only "
              f"{vocab_size}: generation will not work with it")
    template = template_for(tok)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(path, name)):
            shutil.copyfile(os.path.join(path, name), os.path.join(out, name))
    config_path = os.path.join(out, "tokenizer_config.json")
    tok_config = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            tok_config = json.load(f)
    tok_config["chat_template"] = template
    with open(config_path, "w") as f:
        json.dump(tok_config, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(template)
    vocab = tok.get_vocab()
    eos = [vocab[t] for t in END_TOKENS if t in vocab and vocab[t] < vocab_size]
    pad = tok.pad_token_id if tok.pad_token_id is not None and tok.pad_token_id < vocab_size \
        else None
    return eos, pad


def write_generation_config(out: str, config: ModelConfig, eos_ids: list[int],
                            pad_id: int | None) -> None:
    """Generation stops on any end-of-turn token; sampling as Qwen recommends."""
    eos = list(dict.fromkeys(eos_ids + ([config.eos_token_id] if config.eos_token_id is not None
                                        else [])))
    generation: dict[str, Any] = {"eos_token_id": eos if len(eos) != 1 else eos[0]}
    if pad_id is not None:
        generation["pad_token_id"] = pad_id
    generation.update(SAMPLING)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
