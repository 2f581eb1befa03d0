"""Training-step throughput, MFU and memory for a model on a layout: the tool to ablate layouts.

    python benchmarks/train_step.py --model bench --batch 4 --seq 1024 --steps 5
    python benchmarks/train_step.py --model bench --layout expert --batch 8 --seq 1024
    python benchmarks/train_step.py --model bench --mesh data=2,expert=2,sequence=2 --batch 4
    python benchmarks/train_step.py --model bench --mesh data=2 --devices 2 \
        --rules "embed=;vocab=;linear_conv="     # data parallel with replicated parameters

The batch comes from a fixed seed whatever the layout, so first-step losses compare across
layouts. MFU is model FLOPs per second over the matmul rate this machine reaches, measured in
the same run, or over a GPU's datasheet rate (`--peak h200-141gb`). The last line reads
`a1jax tokens_per_s=N mfu=M first_loss=L losses=L0,L1,... peak_bytes=B`.

`--target h200-141gb` compiles the same step for that GPU without one (a1jax.targets; JAX on
the CPU, the gpu-aot extra) and prints only XLA:GPU's buffer assignment for it
(`a1jax plan_peak_bytes=B temp_bytes=T`): what launch/gpu/check.sh sets beside a real run.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--layout", help="a named layout (a1jax.sharding.LAYOUTS)")
    parser.add_argument("--mesh", help="axis sizes, e.g. data=2,expert=2,sequence=2")
    parser.add_argument("--rules", default="",
                        help="logical-rule overrides, as an experiment's mesh.rules: "
                             "'embed=;act_seq=sequence' (an empty value: no mesh axis)")
    parser.add_argument("--devices", type=int, default=8,
                        help="simulated CPU devices for --layout/--mesh on a CPU")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--dispatch", default=None, help="dense | dropless | expert_parallel")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--layers", type=int, help="keep only the first N layers (a slice)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any ModelConfig field, e.g. --set deltanet_chunk_size=32")
    parser.add_argument("--peak", default="", help="MFU against this GPU's dense matmul rate "
                        "(a1jax.targets: h100-80gb, h200-141gb) instead of a measured one")
    parser.add_argument("--precision", default="", choices=["", "highest"],
                        help="highest: fp32 matmuls in full precision (no TF32 on a GPU)")
    parser.add_argument("--target", default="", help="compile only, for this GPU without one "
                        "(a1jax.targets), and print its planned memory")
    return parser.parse_args()


ARGS = _parse()
if ARGS.target:  # compile-only GPU devices: JAX itself on the CPU (a1jax.plan's setup)
    from a1jax import targets
    from a1jax.plan import setup_host
    targets.reexec_for_gpu([os.path.abspath(__file__)])  # to .venv-gpu-aot where needed
    setup_host(ARGS.devices, gpu=True)
# Layouts need several devices; on a CPU they are simulated (a one-device run uses the first).
if "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={ARGS.devices}").strip()

import dataclasses  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from a1jax.errors import A1Error  # noqa: E402
from a1jax.experiment import parse_rules  # noqa: E402
from a1jax.model import get_preset  # noqa: E402
from a1jax.model_info import model_flops_per_step  # noqa: E402
from a1jax.sharding import MeshSpec  # noqa: E402
from a1jax.train.optim import OptimConfig  # noqa: E402
from a1jax.train.sharded import build_trainer, release_host_memory  # noqa: E402
from a1jax.train.step import BATCH_KEYS  # noqa: E402


def matmul_peak(dtype: str) -> float:
    """FLOP/s of a large square matmul on one device, best of a few runs."""
    n = 2048 if jax.devices()[0].platform == "cpu" else 8192
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def main() -> None:
    args = ARGS
    config = get_preset(args.model)
    changes = {"dtype": args.dtype, "remat": args.remat}
    if args.dispatch:
        changes["moe_dispatch"] = args.dispatch
    if args.layers:
        changes.update(num_hidden_layers=args.layers,
                       layer_types=config.layer_types[:args.layers])
    for assignment in args.set:  # values as JSON where they parse (numbers, booleans)
        name, _, value = assignment.partition("=")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            changes[name] = value
    config = dataclasses.replace(config, **changes)
    if args.precision:
        jax.config.update("jax_default_matmul_precision", args.precision)
    gpus = None
    if args.target:
        from a1jax import targets
        gpus = targets.topology(args.target, 1, args.devices if args.layout or args.mesh else 1)
    try:
        rules = parse_rules(args.rules, "--rules")
        if args.layout or args.mesh:
            axes = dict((k, int(v)) for k, v in (kv.split("=") for kv in args.mesh.split(","))) \
                if args.mesh else None
            spec = MeshSpec.create(layout=args.layout, axes=axes, rules=rules)
            devices = gpus
        else:
            spec = MeshSpec.create(axes={"data": 1}, rules=rules, num_devices=1)
            devices = gpus or jax.devices()[:1]
        trainer = build_trainer(config, OptimConfig(warmup_fraction=0.0, total_steps=1000),
                                spec, batch=args.batch, seq=args.seq,
                                microbatches=args.microbatches, devices=devices)
    except A1Error as e:  # a layout that cannot work: say which, before compiling anything
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.target:
        return plan_only(trainer, args)
    rs = np.random.RandomState(0)  # the same batch whatever the layout
    tokens = rs.randint(0, config.vocab_size, (args.batch, args.seq + 1))
    loss_mask = np.ones((args.batch, args.seq), np.int32)
    batch = trainer.put_batch(dict(
        tokens=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=loss_mask,
        segment_ids=np.ones_like(loss_mask), positions=np.tile(np.arange(args.seq),
                                                               (args.batch, 1))))
    print(f"model {args.model} ({config.num_hidden_layers} layers, {config.dtype}, "
          f"{config.moe_dispatch}), mesh {spec.describe()} on {len(trainer.mesh.devices.flat)} "
          f"{jax.devices()[0].platform} device(s), batch {args.batch} x {args.seq}"
          + (f", rules {args.rules}" if args.rules else ""), flush=True)
    state = trainer.init(jax.random.key(0))
    # Parameters and optimizer state on the first device: what the rules shard or replicate.
    state_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)
                      if hasattr(x, "addressable_shards"))
    print(f"parameters and optimizer state {state_bytes / 2**20:,.1f} MiB on the first device",
          flush=True)
    start = time.perf_counter()
    compiled = trainer.lower(state, batch).compile()
    release_host_memory()  # as Trainer.step does after compiling
    memory = compiled.memory_analysis()
    print(f"compiled in {time.perf_counter() - start:.1f}s; per-device temp "
          f"{getattr(memory, 'temp_size_in_bytes', 0) / 2**30:.2f} GiB", flush=True)
    state, metrics = compiled(state, batch)
    first_loss = float(metrics["loss"])
    losses, times = [first_loss], []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
        losses.append(float(metrics["loss"]))
    step_s = float(np.median(times))
    tokens_per_s = args.batch * args.seq / step_s
    if args.peak:
        from a1jax import targets
        peak = targets.get(args.peak).peak_flops() * len(trainer.mesh.devices.flat)
    elif jax.devices()[0].platform == "cpu":
        peak = matmul_peak(args.dtype)  # simulated devices share the same cores
    else:
        peak = matmul_peak(args.dtype) * len(trainer.mesh.devices.flat)
    flops = model_flops_per_step(config, args.batch, args.seq)
    mfu = flops / step_s / peak
    if jax.devices()[0].platform == "cpu":
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mem = f"peak RSS {peak_bytes / 2**30:.2f} GiB"
    else:
        stats = jax.devices()[0].memory_stats() or {}
        peak_bytes = stats.get("peak_bytes_in_use", 0)
        mem = f"peak device memory {peak_bytes / 2**30:.2f} GiB"
    print(f"first loss {first_loss:.4f}; step {step_s:.3f}s (median of {args.steps}; fastest "
          f"{min(times):.3f}s); "
          f"{tokens_per_s:,.0f} tokens/s; model {flops / 1e9:.1f} GFLOP/step; "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s; MFU {mfu:.3f}; {mem}")
    print(f"a1jax tokens_per_s={tokens_per_s:.0f} mfu={mfu:.4f} first_loss={first_loss:.6f} "
          f"losses={','.join(f'{x:.6f}' for x in losses)} peak_bytes={peak_bytes}")


def plan_only(trainer, args) -> int:
    """XLA:GPU's buffer assignment of this step for `args.target` (no GPU): the planner's
    figure for the very program a GPU run of the same arguments compiles."""
    sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    state = jax.tree.map(sds, trainer.abstract_state(), trainer.state_sharding)
    batch = {k: jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32,
                                     sharding=trainer.batch_sharding)
             for k in BATCH_KEYS}
    start = time.perf_counter()
    m = trainer.lower(state, batch).compile().memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)
    print(f"planned for {args.target} in {time.perf_counter() - start:.0f}s: peak "
          f"{peak / 2**30:.2f} GiB per device (temp {m.temp_size_in_bytes / 2**30:.2f} GiB)")
    print(f"a1jax plan_peak_bytes={peak} temp_bytes={m.temp_size_in_bytes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
