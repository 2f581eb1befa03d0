r"""Plan a run before booking the hardware: compile its train step for a mesh of N GPUs (or
simulated CPU devices) on this machine and report, per device and per layout, what it needs.

    python -m a1jax.plan --config experiments/curriculum/stage3_frontier_hardening.py:model=agents_a1_35b \
        --devices 8 --seq 131072 --target h200-141gb --microbatches max --out plans/35b

For each layout (default: every named layout in a1jax.sharding.layouts that fits the device count)
the step is lowered against abstract arrays (ShapeDtypeStructs with the layout's shardings:
nothing is allocated) and compiled. `--backend gpu` (the default) compiles with XLA:GPU for
`--target`'s compile-only devices (a1jax.targets; no GPU needed, the gpu-aot extra is), `--nodes`
hosts of `--devices` each, taking the GPU's kernels; `--backend cpu` compiles with XLA:CPU for
N simulated CPU devices. Reported per device:

    params, optimizer   bytes of the state's shards (exact: from the shardings, not the compile)
    peak                XLA's buffer assignment: arguments + outputs - donated aliases + temporaries
    temp                the temporaries alone (activations, gradients, collective buffers)
    TFLOP               XLA's cost analysis of the per-device program (XLA:CPU only: a
                        compile-only GPU has none)
    model TFLOP         the model's matmul, attention and DeltaNet FLOPs per device
                        (a1jax.model_info.model_flops_per_step), the same on both backends
    collectives         count and result bytes of every all-gather, reduce-scatter, all-reduce,
                        all-to-all and collective-permute in the compiled program (ops inside a
                        loop body, e.g. the microbatch scan, are counted once)
    fits                peak <= the target's memory x (1 - headroom)

A model deeper than two periods of its layer pattern (agents_a1_35b: 40 layers, period 4) is
compiled at one and at two periods and every compiled figure extrapolated linearly to the full
depth (the decoder is a stack of identical periods, each adding its own weights, optimizer
state, saved activations and collectives; the embedding, head and loss are the constant part).
`--layers full` compiles the whole model instead; tests/test_plan.py checks the extrapolation
against a full compile.

With `scan_layers` (agents_a1_35b's setting; `--set model.scan_layers=false` plans it layer by
layer) the step's program holds one repeat of the pattern in a loop whatever the depth, so it
is compiled whole (the 35B's in one to two minutes, where its 40 layers one by one take six
and a half): peak and temp are its own. XLA's cost analysis counts a loop body once,
so TFLOP and collectives come from the same model layer by layer, as above.

On the GPU backend the model takes its GPU kernels (a1jax.model.platform: the Mosaic GPU
grouped matmuls for the experts) and XLA:GPU's fusion and buffer assignment; the scanned program
is compiled once and its collectives counted as written (a loop body once). XLA:CPU's
temporaries are larger (other kernels, other fusion). Parameter and optimizer bytes do not
depend on the backend.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import re
import sys
import time
from typing import Any, Sequence

from a1jax import cli, targets
from a1jax.errors import A1Error

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
                "c64": 8, "c128": 16}
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
# Only LLVM's work on the CPU executable: no effect on XLA's HLO passes, buffer assignment or
# cost analysis (checked: identical memory and FLOPs), a quarter less compile time. For
# compiling only: programs compiled this way and run gave different numbers (the score CLI's
# logits on a `tiny` variant moved by up to 0.2), so nothing the planner compiles is run.
_FAST_CODEGEN = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


class PlanError(A1Error):
    """A plan that cannot be made as asked."""


@dataclasses.dataclass
class Row:
    """One layout's figures, per device (bytes, FLOPs)."""

    layout: str
    mesh: str = ""
    microbatches: int = 0
    params: int = 0
    optimizer: int = 0
    peak: int = 0
    temp: int = 0
    flops: float = 0.0
    model_flops: float = 0.0
    collectives: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    layers: str = ""  # "40" (compiled whole) or "4,8->40" (extrapolated)
    # An RL update's second model beside the trained one, in `peak`: OPD's teacher or GRPO's
    # reference policy (parameters only, laid out as the student's).
    resident: int = 0
    seconds: float = 0.0
    error: str = ""

    def fits(self, capacity: int, headroom: float) -> bool:
        return not self.error and self.peak <= capacity * (1.0 - headroom)


# Compiling for an H100 without one: XLA:GPU has deviceless CUB sort data for the H100 (not the
# H200) and turns sorts into CUB radix sorts, whose thunk then needs the CUDA runtime to be
# created ("Error loading CUDA libraries", after codegen). Its own sort instead, as for the H200;
# the sort's scratch is the only memory this changes.
_GPU_COMPILE_FLAGS = "--xla_gpu_enable_cub_radix_sort=false"


def gpu_run_flags() -> str:
    """The XLA flags a GPU run is launched with (launch/gpu/xla_flags.sh's list: the latency
    hiding scheduler, collective combining and pipelining change what is live at once), so
    that the plan compiles the program the run will."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "launch", "gpu", "xla_flags.sh")
    extra = os.environ.get("A1JAX_XLA_FLAGS_EXTRA", "")  # as the launchers add it, last
    if not os.path.exists(path):  # an installed package without the launchers
        return extra
    text = open(path).read().split("_a1jax_flags=(", 1)[1].split("\n)", 1)[0]
    return " ".join([line.strip() for line in text.splitlines()
                     if line.strip().startswith("--")] + ([extra] if extra else []))


def setup_host(devices: int, gpu: bool = False) -> None:
    """N simulated CPU devices, and JAX on the CPU (also for a GPU target: its devices are
    compile-only): must run before JAX starts its backends (a process that already has enough
    CPU devices, as under the tests, is used as it is)."""
    flags = os.environ.get("XLA_FLAGS", "")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={devices} "
                               f"{_FAST_CODEGEN} "
                               f"{_GPU_COMPILE_FLAGS + ' ' + gpu_run_flags() if gpu else ''}"
                               ).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def collectives(hlo: str, where: str = "") -> dict[str, tuple[int, int]]:
    """{op: (count, result bytes)} over a compiled module's text. Async pairs count once (the
    -start; its tuple's last element is the result). `where`: only ops whose source op_name
    contains it (e.g. "all_to_all": those the program asked for, not XLA's resharding)."""
    out = {op: [0, 0] for op in COLLECTIVES}
    for line in hlo.splitlines():
        match = _OP.search(line)
        if not match or (where and where not in _op_name(line)):
            continue
        shape, op, start = match.groups()
        shapes = _SHAPE.findall(shape)
        if start and shapes:
            shapes = shapes[-1:]
        size = sum(_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
                   for dt, dims in shapes)
        out[op][0] += 1
        out[op][1] += size
    return {op: (n, b) for op, (n, b) in out.items()}


def _op_name(line: str) -> str:
    found = re.search(r'op_name="([^"]*)"', line)
    return found.group(1) if found else ""


def shard_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of `tree` (shapes) laid out by `shardings` (the largest shard)."""
    import jax
    leaves = jax.tree.leaves(tree)
    specs = jax.tree.leaves(shardings)
    assert len(leaves) == len(specs)
    return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
               for x, s in zip(leaves, specs))


def state_bytes(trainer) -> tuple[int, int]:
    """(parameter, optimizer-state) bytes one device holds, from the trainer's shardings."""
    shapes = trainer.abstract_state()
    return (shard_bytes(shapes.params, trainer.state_sharding.params),
            shard_bytes(shapes.opt_state, trainer.state_sharding.opt_state))


def layout_plan(config, layout: str, num_devices: int):
    """runner.check's plan of `config` under `layout` on `num_devices` (shapes only: no init
    checkpoint is read)."""
    from a1jax.train import runner
    c = config.copy_and_resolve_references()
    c.mesh.layout, c.mesh.axes = layout, ""
    c.init_from, c.requires_init = "", False
    c.mesh.num_devices = num_devices
    return runner.check(c, os.devnull, num_devices=num_devices, check_init=False)


def _max_microbatches(config, spec) -> int:
    from a1jax.sharding.mesh import _axes_of, logical_spec
    batch_axes = _axes_of(logical_spec(("act_batch",), spec.rules)[0])
    per_shard = config.batch_size // math.prod(spec.axes[a] for a in batch_axes)
    return max(per_shard, 1)


def compile_step(plan, devices, layers: int | None = None):
    """The compiled train step of `plan` (its model cut to the first `layers` layers)."""
    import jax
    import jax.numpy as jnp

    from a1jax.train import runner
    from a1jax.train.step import BATCH_KEYS

    c = plan.config
    if layers is not None:
        mc = plan.model_config
        plan = dataclasses.replace(plan, model_config=mc.replace(
            num_hidden_layers=layers, layer_types=tuple(mc.layer_types[:layers])))
    trainer = runner.build(plan, devices=devices)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         trainer.abstract_state(), trainer.state_sharding)
    if c.rl.algorithm != "sft":  # the learner's update (a1jax.rl.learner), not SFT's step
        from a1jax.rl import learner
        with trainer.context():
            return trainer, learner.make_update(c, trainer).lower(
                state, learner.abstract_batch(c, trainer)).compile()
    batch = {k: jax.ShapeDtypeStruct((c.batch_size, c.seq_len), jnp.int32,
                                     sharding=trainer.batch_sharding) for k in BATCH_KEYS}
    return trainer, trainer.lower(state, batch).compile()


def _measure(compiled) -> dict[str, Any]:
    m = compiled.memory_analysis()
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - XLA:GPU compile-only: UNIMPLEMENTED
        cost = None
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)
    return {"peak": peak, "temp": m.temp_size_in_bytes, "flops": float(cost.get("flops", 0.0)),
            "collectives": collectives(compiled.as_text())}


def _extrapolate(a: dict, b: dict, la: int, lb: int, target: int) -> dict:
    """Linear in the layer count through (la, a) and (lb, b), at `target` layers."""
    f = (target - la) / (lb - la)
    line = lambda x, y: x + f * (y - x)
    return {"peak": round(line(a["peak"], b["peak"])), "temp": round(line(a["temp"], b["temp"])),
            "flops": line(a["flops"], b["flops"]),
            "collectives": {op: (round(line(a["collectives"][op][0], b["collectives"][op][0])),
                                 round(line(a["collectives"][op][1], b["collectives"][op][1])))
                            for op in COLLECTIVES}}


def plan_layout(config, layout: str, num_devices: int, *, microbatches: str = "",
                layers: str = "auto", devices: Sequence[Any] | None = None) -> Row:
    """Compiles `config` under `layout` on `num_devices` devices (`devices`: compile-only GPUs
    from a1jax.targets; default this process's simulated CPU devices); the row of figures.
    `microbatches`: "" (the config's), a number, or "max" (one row per batch shard: the least
    activation memory the layout allows for the same global batch)."""
    import jax

    from a1jax.model_info import model_flops_per_step

    from a1jax.train import runner

    began = time.perf_counter()
    c = config.copy_and_resolve_references()
    c.mesh.layout, c.mesh.axes = layout, ""
    c.init_from, c.requires_init = "", False  # shapes only: no checkpoint is read
    if c.rl.algorithm == "opd" and not c.distill.teachers:
        c.distill.teachers = "*=unread"  # nor a teacher's
    c.mesh.num_devices = num_devices
    row = Row(layout)
    try:
        spec = runner.check(c, os.devnull, num_devices=num_devices, check_init=False).spec
        if microbatches == "max":
            c.microbatches = _max_microbatches(c, spec)
        elif microbatches:
            c.microbatches = int(microbatches)
        plan = runner.check(c, os.devnull, num_devices=num_devices, check_init=False)
    except A1Error as e:
        row.error = str(e)
        return row
    row.mesh, row.microbatches = plan.spec.describe(), c.microbatches
    gpu = devices is not None
    devices = list(devices)[:num_devices] if gpu else jax.devices()[:num_devices]
    depth = plan.model_config.num_hidden_layers
    period = plan.model_config.layer_period
    scanned = plan.model_config.scan_layers
    try:
        if gpu:
            # A compile-only GPU has no cost analysis, so there is nothing to take layer by
            # layer or extrapolate: the program as it runs, compiled whole.
            trainer, compiled = compile_step(plan, devices)
            figures = _measure(compiled)
            row.layers = f"{depth} (scanned)" if scanned else str(depth)
            del compiled
            scanned = False
        elif scanned:
            # XLA's cost analysis and the HLO text hold a loop's body once, so the layer scan's
            # FLOPs and collectives come from the same model layer by layer (below), and its
            # memory from the scanned program, compiled whole (its code is one repeat deep).
            trainer, compiled = compile_step(plan, devices)
            memory = _measure(compiled)
            del compiled
            plan = dataclasses.replace(
                plan, model_config=plan.model_config.replace(scan_layers=False))
        if gpu:
            pass
        elif (layers == "full" or depth <= 2 * period) and not scanned:
            trainer, compiled = compile_step(plan, devices)
            figures, row.layers = _measure(compiled), str(depth)
        elif layers == "full" or depth <= 2 * period:
            _, compiled = compile_step(plan, devices)
            figures, row.layers = _measure(compiled), f"{depth} (scanned)"
        else:
            la, lb = (period, 2 * period) if layers == "auto" else map(int, layers.split(","))
            if not 0 < la < lb <= depth or la % period or lb % period:
                raise PlanError(f"--layers {layers}: two layer counts, multiples of the layer "
                                f"pattern's period {period}, at most {depth}")
            _, small = compile_step(plan, devices, la)
            a = _measure(small)
            del small
            _, large = compile_step(plan, devices, lb)
            b = _measure(large)
            del large
            figures, row.layers = _extrapolate(a, b, la, lb, depth), f"{la},{lb}->{depth}"
            if scanned:
                row.layers = f"{depth} (scanned; FLOPs and collectives {la},{lb}->{depth})"
            else:
                trainer = runner.build(plan, devices=devices)  # the full model's state shardings
        if scanned:
            figures.update(peak=memory["peak"], temp=memory["temp"])
    except A1Error as e:
        row.error = str(e)
        return row
    except jax.errors.JaxRuntimeError as e:  # XLA refused the program: say so, plan the rest
        row.error = f"XLA could not compile it: {str(e).splitlines()[0]}"
        return row
    row.params, row.optimizer = state_bytes(trainer)
    second = c.rl.algorithm == "opd" or (c.rl.algorithm == "grpo" and c.rl.kl_coef)
    row.resident = row.params if second else 0
    row.peak, row.temp, row.flops = (figures["peak"] + row.resident, figures["temp"],
                                     figures["flops"])
    row.collectives = figures["collectives"]
    row.model_flops = model_flops_per_step(plan.model_config, c.batch_size,
                                           c.seq_len) / num_devices
    row.seconds = time.perf_counter() - began
    return row


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f}"


def _bytes(n: int) -> str:
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


COLUMNS = ("layout", "mesh", "micro", "params GiB", "optimizer GiB", "peak GiB", "temp GiB",
           "fits", "TFLOP", "model TFLOP", *COLLECTIVES)


def markdown(rows: Sequence[Row], capacity: int, headroom: float) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r.error:
            lines.append(f"| {r.layout} | cannot run: {r.error} |" + " |" * (len(COLUMNS) - 2))
            continue
        coll = [f"{n} / {_bytes(b)}" if n else "0" for n, b in
                (r.collectives[op] for op in COLLECTIVES)]
        lines.append("| " + " | ".join([
            r.layout, r.mesh.replace(" x ", "x"), str(r.microbatches), _gb(r.params),
            _gb(r.optimizer), _gb(r.peak), _gb(r.temp),
            "yes" if r.fits(capacity, headroom) else "no",
            f"{r.flops / 1e12:.1f}" if r.flops else "-", f"{r.model_flops / 1e12:.1f}",
            *coll]) + " |")
    return lines


def write_csv(path: str, rows: Sequence[Row], capacity: int, headroom: float) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layout", "mesh", "microbatches", "layers", "params_bytes",
                    "optimizer_bytes", "peak_bytes", "temp_bytes", "fits", "flops",
                    *(f"{op}_{k}" for op in COLLECTIVES for k in ("count", "bytes")),
                    "seconds", "error", "resident_bytes", "model_flops"])
        for r in rows:
            coll = [v for op in COLLECTIVES for v in r.collectives.get(op, (0, 0))]
            w.writerow([r.layout, r.mesh, r.microbatches, r.layers, r.params, r.optimizer,
                        r.peak, r.temp, r.fits(capacity, headroom), r.flops, *coll,
                        round(r.seconds, 1), r.error, r.resident, r.model_flops])


def write_chart(path: str, rows: Sequence[Row], capacity: int, headroom: float,
                target: str, compiler: str = "XLA:CPU") -> None:
    """Per layout, a bar of parameters + optimizer state + everything else at peak, against the
    target's memory and its usable share."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.error]
    names = [r.layout for r in rows]
    params = [r.params / 2**30 for r in rows]
    opt = [r.optimizer / 2**30 for r in rows]
    rest = [max(r.peak - r.params - r.optimizer, 0) / 2**30 for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 * max(len(rows), 3) + 2, 4.5))
    ax.bar(names, params, label="parameters")
    ax.bar(names, opt, bottom=params, label="optimizer state")
    ax.bar(names, rest, bottom=[p + o for p, o in zip(params, opt)],
           label="gradients, activations, buffers (peak)")
    ax.axhline(capacity / 2**30, color="k", lw=1, label=f"{target}")
    ax.axhline(capacity * (1 - headroom) / 2**30, color="k", lw=1, ls="--",
               label=f"usable ({headroom:.0%} headroom)")
    ax.set_ylabel("GiB per device")
    ax.set_yscale("symlog", linthresh=100)
    ax.legend(fontsize=8)
    ax.set_title(f"compiled train step per device ({compiler})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_layouts(num_devices: int) -> list[str]:
    from a1jax.sharding.layouts import LAYOUTS, resolve_axes
    names = []
    for name, layout in LAYOUTS.items():
        try:
            resolve_axes(layout.axes, num_devices)
        except A1Error:
            continue
        names.append(name)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m a1jax.plan", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment file, FILE.py[:args]")
    p.add_argument("--devices", type=int, default=8, help="devices per node")
    p.add_argument("--nodes", type=int, default=1, help="hosts of --devices each (GPU backend: "
                   "a multi-host topology; CPU: that many more simulated devices)")
    p.add_argument("--backend", default="gpu", choices=("gpu", "cpu"),
                   help="gpu: compile with XLA:GPU for --target's compile-only devices (the "
                   "gpu-aot extra); cpu: XLA:CPU on simulated CPU devices")
    p.add_argument("--layouts", default="", help="comma-separated; default every named layout "
                   "that fits the device count")
    p.add_argument("--seq", type=int, default=0, help="sequence length (default: the config's)")
    p.add_argument("--batch", type=int, default=0, help="sequences per step (default: config's)")
    p.add_argument("--microbatches", default="", help="a number, or max (default: config's)")
    p.add_argument("--target", default="h200-141gb", choices=sorted(targets.GPUS))
    p.add_argument("--headroom", type=float, default=0.1,
                   help="share of the target's memory kept free (allocator, cuDNN/NCCL "
                   "workspaces, fragmentation)")
    p.add_argument("--layers", default="auto", help="auto, full, or two counts 'A,B' to "
                   "compile and extrapolate from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable")
    p.add_argument("--out", default="", help="directory for plan.csv, plan.png and plan.md")
    args = p.parse_args(argv)
    if args.devices < 1 or args.nodes < 1:
        raise PlanError(f"--devices and --nodes must be positive, got {args.devices} and "
                        f"{args.nodes}")
    total = args.devices * args.nodes
    if args.backend == "gpu" and argv is None:  # the command line: to the CUDA plugin's venv
        targets.reexec_for_gpu(["-m", "a1jax.plan"])
    setup_host(total if args.backend == "cpu" else 1, gpu=args.backend == "gpu")

    import jax

    from a1jax import curriculum

    gpus = None
    if args.backend == "gpu":
        gpus = targets.topology(args.target, args.nodes, args.devices)
    elif len(jax.devices()) < total:
        raise PlanError(f"this process has {len(jax.devices())} devices; JAX started before "
                        f"--xla_force_host_platform_device_count={total} could be set")
    path, _, arg = args.config.partition(":")
    config = curriculum.load_experiment(path, arg or None)
    for assignment in args.set:
        curriculum.override(config, assignment)
    if args.seq:
        config.seq_len = args.seq
    if args.batch:
        config.batch_size = args.batch
    layouts = [s for s in args.layouts.split(",") if s] or default_layouts(total)
    from a1jax.sharding.layouts import get_layout
    for name in layouts:
        get_layout(name)  # unknown names: an error before any compile
    capacity = targets.get(args.target).usable_bytes
    where = (f"XLA:GPU for {args.nodes} x {args.devices} {args.target}" if gpus else
             f"XLA:CPU on {total} simulated devices, target {args.target}")
    print(f"plan: {path}:{arg} ({config.model.preset}), {config.batch_size} x {config.seq_len} "
          f"tokens per step, {where}", file=sys.stderr)
    rows = []
    for name in layouts:
        row = plan_layout(config, name, total, microbatches=args.microbatches,
                          layers=args.layers, devices=gpus)
        print(f"  {name}: {row.error or f'{row.seconds:.0f}s'}", file=sys.stderr, flush=True)
        rows.append(row)
    lines = markdown(rows, capacity, args.headroom)
    layers = {r.layers for r in rows if r.layers and "->" in r.layers}
    notes = [f"Per device, {args.target} ({_gb(capacity)} GiB usable, fits = peak <= "
             f"{1 - args.headroom:.0%} of it), compiled with "
             f"{'XLA:GPU' if gpus else 'XLA:CPU'}; collectives: count / result bytes in the "
             "compiled program."]
    if config.rl.algorithm != "sft":
        what = "the routed teacher's" if config.rl.algorithm == "opd" else \
            "the reference policy's (rl.kl_coef > 0)"
        resident = ", ".join(f"{r.layout}: {_gb(r.resident)} GiB" for r in rows if r.resident)
        notes.append(f"The {config.rl.algorithm} learner's update step (a1jax.rl.learner), "
                     f"batch {config.batch_size} x {config.seq_len}; peak includes {what} "
                     f"parameters, resident beside the student's and laid out like them "
                     f"({resident}). The rollout engine's cache and the teacher's scoring pass "
                     "are other programs, not compiled here.")
    if gpus and any("scanned" in r.layers for r in rows):
        notes.append("scan_layers: compiled whole; collectives as the program holds them (a "
                     "loop's body once); TFLOP: none from XLA:GPU without a GPU, model TFLOP "
                     "analytic.")
    elif any("scanned" in r.layers for r in rows):
        notes.append("scan_layers: peak and temp are the scanned program's, compiled whole; "
                     "TFLOP and collectives are the same model's compiled layer by layer (a "
                     "loop's body counts once in XLA's cost analysis).")
        layers = {r.layers.split("collectives ")[-1].rstrip(")") for r in rows
                  if "->" in r.layers}
    if layers:
        what = "TFLOP, collectives" if any("scanned" in r.layers for r in rows) else \
            "peak, temp, TFLOP, collectives"
        notes.append(f"Compiled at {', '.join(sorted(layers))} layers and extrapolated "
                     f"linearly ({what}); params and optimizer exact.")
    print("\n".join(lines + [""] + notes))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_csv(os.path.join(args.out, "plan.csv"), rows, capacity, args.headroom)
        write_chart(os.path.join(args.out, "plan.png"), rows, capacity, args.headroom,
                    args.target, "XLA:GPU" if gpus else "XLA:CPU")
        with open(os.path.join(args.out, "plan.md"), "w") as f:
            f.write("\n".join(lines + [""] + notes) + "\n")
    return 0 if any(not r.error for r in rows) else 2


if __name__ == "__main__":
    cli.run(main)
