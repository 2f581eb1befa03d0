"""Hugging Face import and export of a randomly initialised >= 1B-parameter model: seconds, GB/s
and peak RSS of each direction.

    python benchmarks/convert.py [--dir /tmp/a1jax_convert_bench] [--max-shard-bytes 500000000]
                                 [--model 1b|small]

1. generate: a random bf16 Hugging Face directory (fused experts, sharded safetensors) written
   tensor by tensor with a1jax's streaming writer, never the whole model in memory;
2. import: `python -m a1jax.convert from-hf` (FSDP over 8 simulated CPU devices);
3. export: `python -m a1jax.export --dtype bfloat16`;
4. verify: the export equals the generated directory, tensor by tensor, bit for bit.

Each phase runs in its own process and reports its own peak RSS (ru_maxrss), compared with the
bound "3x the largest tensor (fp32, as a1jax holds it) plus the shard size". Import's and
export's baselines are the peak RSS of a process that only imported what that phase imports and
started jax's devices. The directory is removed at the end unless --keep. `--model small`
(~0.2B parameters) is what tests/convert/test_memory.py checks the bound with (`measure`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

CONFIGS = {
    "1b": dict(  # ~1.02B parameters: both layer types, 64 experts
        vocab_size=32_768, hidden_size=1024, num_hidden_layers=8, full_attention_interval=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        linear_num_key_heads=8, linear_num_value_heads=16, linear_key_head_dim=64,
        linear_value_head_dim=64, num_experts=64, num_experts_per_tok=4,
        moe_intermediate_size=576, shared_expert_intermediate_size=512, eos_token_id=2),
    "small": dict(  # ~0.2B parameters, largest fp32 tensor 50 MB: the RSS test's model
        vocab_size=12_288, hidden_size=1024, num_hidden_layers=4, full_attention_interval=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        linear_num_key_heads=8, linear_num_value_heads=16, linear_key_head_dim=64,
        linear_value_head_dim=64, num_experts=12, num_experts_per_tok=2,
        moe_intermediate_size=1024, shared_expert_intermediate_size=512, eos_token_id=2),
}
# What the import and export processes import (their CLI modules and what those import lazily),
# and jax's devices started: each phase's baseline process does only this.
BASELINES = {"import": ("a1jax.convert.__main__", "a1jax.convert.hf_import"),
             "export": ("a1jax.export", "a1jax.convert.hf_export")}
IMPORT_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def _config(model: str = "1b"):
    from a1jax.model.config import ModelConfig
    return ModelConfig(**CONFIGS[model])


def _hf_tensors(config):
    """(name, shape) of every Hugging Face tensor, fused experts, in export's order."""
    from a1jax.convert.mapping import entries, full_name
    out: dict[str, tuple[int, ...]] = {}
    for entry in entries(config):
        out.setdefault(full_name(entry.hf_names[0], "model."), entry.hf_shapes[0])
    return out


def generate(directory: str, max_shard_bytes: int, model: str = "1b") -> dict:
    import ml_dtypes

    from a1jax.convert import safetensors_stream as sts

    config = _config(model)
    os.makedirs(directory)
    plans = []
    for i, (name, shape) in enumerate(_hf_tensors(config).items()):
        def pieces(shape=shape, seed=i):
            rng = np.random.default_rng(seed)
            rows = max(1, sts.CHUNK_BYTES // 4 // max(1, int(np.prod(shape[1:]))))
            for start in range(0, shape[0], rows):
                n = min(rows, shape[0] - start)
                yield (0.02 * rng.standard_normal((n, *shape[1:]), np.float32)).astype(
                    ml_dtypes.bfloat16)
        plans.append(sts.TensorPlan(name, tuple(shape), np.dtype(ml_dtypes.bfloat16), pieces))
    shards = sts.plan_shards(plans, max_shard_bytes)
    for shard in shards:
        sts.write_shard(os.path.join(directory, shard.filename), shard)
    sts.write_index(directory, shards)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f)
    return {"bytes": sum(s.nbytes for s in shards)}


def verify(a: str, b: str) -> dict:
    from a1jax.convert.hf_load import SafetensorsDir

    x, y = SafetensorsDir(a), SafetensorsDir(b)
    assert sorted(x.names()) == sorted(y.names()), "different tensor names"
    for name in x.names():
        assert x.dtype(name) == y.dtype(name) and x.shape(name) == y.shape(name), name
        assert x.get(name).tobytes() == y.get(name).tobytes(), name
        x.close(), y.close()  # unmap: the check need not keep both directories resident
    return {"tensors": len(list(x.names()))}


def _phase(args: list[str], env: dict | None = None) -> dict:
    """Runs one phase in a fresh process: (seconds, peak RSS in bytes, its own report)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, **report}


def _measured(fn) -> None:
    """Child side: run `fn`, print its report and this process's peak RSS as one JSON line."""
    report = fn()
    report["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(report))


def _cli(module: str, argv: list[str]) -> dict:
    import importlib
    importlib.import_module(module).main(argv)
    return {}


def sizes(model: str, max_shard_bytes: int) -> dict:
    """Parameters, the largest fp32 tensor and the bound, in bytes."""
    shapes = _hf_tensors(_config(model))
    # a1jax holds the fused experts as two halves, so its largest fp32 leaf is the larger of
    # the biggest non-fused tensor and half a gate_up_proj.
    largest = max(int(np.prod(s)) // (2 if n.endswith("gate_up_proj") else 1)
                  for n, s in shapes.items()) * 4
    return {"params": sum(int(np.prod(s)) for s in shapes.values()), "largest": largest,
            "bound": 3 * largest + max_shard_bytes}


def measure(directory: str, max_shard_bytes: int, model: str = "1b",
            phases: tuple[str, ...] = ("generate", "import", "export", "verify")) -> dict:
    """Runs `phases` (generate first), each in a fresh process, in `directory` (which must not
    exist); returns {phase: {"seconds", "peak_rss" (bytes), ...}}, with "import_baseline" and
    "export_baseline" before their phases."""
    os.makedirs(directory)
    me = [os.path.abspath(__file__), "--dir", directory, "--max-shard-bytes",
          str(max_shard_bytes), "--model", model, "--phase"]
    rows = {}
    for phase in phases:
        env = IMPORT_ENV if phase == "import" else \
            {"JAX_PLATFORMS": "cpu"} if phase == "export" else None
        if phase in BASELINES:
            rows[phase + "_baseline"] = _phase(me + [phase + "_baseline"], env)
        rows[phase] = _phase(me + [phase], env)
    return rows


def _baseline(modules: tuple[str, ...]) -> dict:
    import importlib

    import jax
    for module in modules:
        importlib.import_module(module)
    jax.devices()
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/a1jax_convert_bench")
    parser.add_argument("--max-shard-bytes", type=int, default=500_000_000)
    parser.add_argument("--model", choices=sorted(CONFIGS), default="1b")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    hf, ckpt, out = (os.path.join(args.dir, name) for name in ("hf", "ckpt", "export"))

    if args.phase == "generate":
        return _measured(lambda: generate(hf, args.max_shard_bytes, args.model)) or 0
    if args.phase == "import":
        return _measured(lambda: _cli("a1jax.convert.__main__",
                                      ["from-hf", "--hf", hf, "--out", ckpt])) or 0
    if args.phase == "export":
        return _measured(lambda: _cli("a1jax.export", [
            "--checkpoint", ckpt, "--out", out, "--max-shard-bytes",
            str(args.max_shard_bytes)])) or 0
    if args.phase == "verify":
        return _measured(lambda: verify(hf, out)) or 0
    if args.phase and args.phase.endswith("_baseline"):
        return _measured(lambda: _baseline(BASELINES[args.phase[:-len("_baseline")]])) or 0

    size = sizes(args.model, args.max_shard_bytes)
    bound = size["bound"]
    print(f"model: {size['params'] / 1e9:.2f}B parameters, largest fp32 tensor "
          f"{size['largest'] / 1e6:.0f} MB, shards <= {args.max_shard_bytes / 1e6:.0f} MB; "
          f"RSS bound {bound / 1e6:.0f} MB")
    if os.path.exists(args.dir):
        shutil.rmtree(args.dir)
    rows = measure(args.dir, args.max_shard_bytes, args.model)
    hf_bytes = rows["generate"]["bytes"]
    print(f"{'phase':<10}{'seconds':>9}{'GB/s':>8}{'peak RSS MB':>13}  vs bound")
    for name, row in rows.items():
        if name.endswith("_baseline"):
            print(f"{name:<18}{row['peak_rss'] / 1e6:>14.0f}  (python, jax's devices and the "
                  "phase's modules)")
            continue
        rate = hf_bytes / 1e9 / row["seconds"]
        verdict = ("ok" if row["peak_rss"] <= bound else "OVER") \
            if name in ("import", "export") else "-"
        print(f"{name:<10}{row['seconds']:>9.1f}{rate:>8.2f}{row['peak_rss'] / 1e6:>13.0f}  "
              f"{verdict}")
    print(f"(GB/s: the {hf_bytes / 1e9:.2f} GB of bf16 safetensors over the phase's wall time; "
          "verified bit-exact: HF -> a1jax -> HF)")
    if not args.keep:
        shutil.rmtree(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
