"""Long-context training: step time and compiled per-device memory for each sequence length.

    python benchmarks/long_context.py --model tiny --mesh sequence=8 --seq 4096,16384,65536
    python benchmarks/long_context.py --model bench --mesh sequence=8 --seq 16384 --remat full

One packed row of synthetic segments per step (batch 1 unless --batch), so every length is the
same job cut longer. On a CPU the devices are simulated and share the cores: step times compare
lengths and layouts, not hardware. Memory is XLA's own account of the compiled step
(`memory_analysis().temp_size_in_bytes`, per device). One line per length reads
`a1jax long_context seq=L step_s=S temp_bytes=B`.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny | bench | agents_a1_35b")
    parser.add_argument("--mesh", default="sequence=8", help="axis sizes, e.g. sequence=8")
    parser.add_argument("--seq", default="4096,16384,65536", help="comma-separated lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--segment", type=int, default=4096,
                        help="packed segment length (0: one segment per row)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first")
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default="blockwise",
                        choices=["blockwise", "reference", "cudnn"])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    return parser.parse_args()


ARGS = _parse()
if "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={ARGS.devices}").strip()

import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from a1jax.model import get_preset  # noqa: E402
from a1jax.sharding import MeshSpec  # noqa: E402
from a1jax.train.optim import OptimConfig  # noqa: E402
from a1jax.train.sharded import build_trainer  # noqa: E402


def packed_batch(vocab: int, batch: int, seq: int, segment: int, seed: int = 0) -> dict:
    """Rows of back-to-back segments of `segment` tokens (the last one cut short)."""
    rs = np.random.RandomState(seed)
    tokens = rs.randint(0, vocab, (batch, seq + 1))
    segment = segment or seq
    idx = np.arange(seq)
    segment_ids = np.broadcast_to(idx // segment + 1, (batch, seq))
    positions = np.broadcast_to(idx % segment, (batch, seq))
    loss_mask = np.broadcast_to((idx % segment) != segment - 1, (batch, seq)).astype(np.int32)
    return dict(tokens=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=loss_mask,
                segment_ids=segment_ids, positions=positions)


def measure(config, spec: MeshSpec, batch: int, seq: int, segment: int, steps: int,
            devices) -> tuple[float, int]:
    """(median step seconds, compiled per-device temp bytes)."""
    trainer = build_trainer(config, OptimConfig(warmup_fraction=0.0, total_steps=1000), spec,
                            batch=batch, seq=seq, devices=devices)
    data = trainer.put_batch(packed_batch(config.vocab_size, batch, seq, segment))
    state = trainer.init(jax.random.key(0))
    compiled = trainer.lower(state, data).compile()
    temp = int(getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0))
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics["loss"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return float(np.median(times)), temp


def main() -> None:
    args = ARGS
    config = dataclasses.replace(get_preset(args.model), remat=args.remat, dtype=args.dtype,
                                 attention_impl=args.attention)
    axes = {k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))}
    n = int(np.prod(list(axes.values())))
    spec = MeshSpec.create(axes=axes, num_devices=n)
    devices = jax.devices()[:n]
    print(f"model {args.model}, mesh {spec.describe()} on {n} {devices[0].platform} device(s), "
          f"batch {args.batch}, segments of {args.segment or 'full'} tokens, remat {args.remat}",
          flush=True)
    for seq in (int(s) for s in args.seq.split(",")):
        step_s, temp = measure(config, spec, args.batch, seq, args.segment, args.steps, devices)
        print(f"a1jax long_context seq={seq} step_s={step_s:.3f} temp_bytes={temp}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
