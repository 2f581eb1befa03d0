"""The GPUs a1jax plans for, and compiling for them on a machine that has none.

XLA:GPU compiles for a device it is given a description of: a `GpuTargetConfigProto` (text
format). XLA keeps such specs for its GPUs (openxla/xla, `xla/backends/gpu/target_config/specs/`,
Apache-2.0); the facts below are theirs, written here as a table (one Hopper SM, then what
differs per device) so that each figure is named, and rendered back to the proto's text by
`target_config`. jax 0.10.2's proto lacks the specs' `collective_memory_granularity`: left out.
tests/test_gpu_compile.py checks the rendered text against XLA's files field by field.

`topology(target, hosts, devices_per_host)` gives compile-only devices of that GPU
(`jax.experimental.topologies`): a mesh of them compiles with XLA:GPU and reports its buffer
assignment, with no GPU present. It needs the `gpu-aot` extra (the CUDA PJRT plugin and ptxas).
On a CPU machine `launch/setup_gpu_aot.sh` puts it in `.venv-gpu-aot`, beside `.venv` (installed
in `.venv`, the plugin makes every `import jax` print CUDA driver warnings); the planner and
`benchmarks/train_step.py --target` move to that interpreter by themselves (`gpu_aot_python`).
"""

from __future__ import annotations

import dataclasses
import os

from a1jax.errors import A1Error


class TargetError(A1Error):
    """A target that cannot be compiled for here."""


# XLA's PrimitiveType numbers, the keys of the proto's per-type rate tables.
S8, S32, U8, U32, F16, F32, F64, BF16 = 2, 4, 6, 8, 10, 11, 12, 16

# One Hopper (sm_90a) SM, as XLA's H100 and H200 specs describe it: (type, clock GHz, units per
# SM, ops per clock per unit). Matrix rows are the tensor cores (4 per SM); scalar rows the CUDA
# cores. Keys 19-36 are the fp8 (and narrower) types.
_HOPPER_SCALAR = ((S32, "1.98", 64, 1), (U32, "1.98", 64, 1), (F16, "1.98", 128, 2),
                  (F32, "1.98", 128, 1), (F64, "1.98", 64, 1), (BF16, "1.98", 128, 2))
_TC = "1.8295201"  # tensor-core clock, GHz
_HOPPER_MATRIX = ((S8, _TC, 4, 1024), (U8, _TC, 4, 1024), (F16, _TC, 4, 512),
                  (F32, _TC, 4, 256), (F64, "1.98", 4, 32), (BF16, _TC, 4, 512),
                  *((key, _TC, 4, 1024) for key in (19, 20, 23, 24, 25, 28, 29, 33, 35, 36)))
_HOPPER = {  # the proto's field names; per SM ("core") unless said
    "threads_per_block_limit": 1024,  # CUDA's per-block thread limit
    "threads_per_warp": 32,
    "shared_memory_per_block": 49152,  # bytes a block gets without opting in (48 KiB)
    "shared_memory_per_core": 233472,  # bytes of shared memory per SM (228 KiB)
    "threads_per_core_limit": 2048,  # resident threads per SM
    "core_count": 132,  # SMs on an H100 SXM / H200
    "fpus_per_core": 128,  # fp32 lanes per SM
    "block_dim_limit_x": 2147483647,  # grid dimension limits
    "block_dim_limit_y": 65535,
    "block_dim_limit_z": 65535,
}
# Then, in target_config's text: memory bandwidth (bytes/s) and size, the 50 MiB L2, the SM
# clock, 227 KiB of opt-in shared memory per block, compute capability 9.0a, 64K registers per
# SM and per block, the rate tables above, thread-dimension limits, the CUDA / cuDNN / CUB
# versions XLA's spec was written with, and 18 NVLink links.


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU's facts: what XLA's spec says, and what nvidia-smi reports as usable memory."""

    name: str  # the device's CUDA name (device_kind)
    memory_bytes: int  # device_memory_size: what XLA schedules against
    usable_bytes: int  # nvidia-smi's total (MiB): what a process can have, less the driver's
    bandwidth: int  # memory bandwidth, bytes/s
    memory_clock_khz: int
    dnn_version: tuple[int, int, int]  # the cuDNN version XLA's spec was made with
    cores: int = 132
    clock_ghz: str = "1.98"

    def peak_flops(self, key: int = BF16) -> float:
        """Dense matrix-unit FLOP/s for a type (an FMA counts 2)."""
        _, ghz, units, ops = next(r for r in _HOPPER_MATRIX if r[0] == key)
        return 2.0 * self.cores * units * ops * float(ghz) * 1e9


GPUS = {
    "h100-80gb": Gpu("NVIDIA H100 80GB HBM3", 84_942_979_072, 81_559 * 2**20, 3_352_320_000_000,
                     2_619_000, (8, 9, 4)),
    "h200-141gb": Gpu("NVIDIA H200 141GB HBM3e", 151_397_597_184, 143_771 * 2**20,
                      4_800_000_000_000, 3_750_000, (9, 10, 0)),
}


def _rates(rows) -> str:
    return "".join(f"    rate_infos {{\n      key: {key}\n      value {{\n        clock_rate_ghz: "
                   f"{ghz}\n        units_per_core: {units}\n        ops_per_clock: {ops}\n"
                   "      }\n    }\n" for key, ghz, units, ops in rows)


def target_config(name: str) -> str:
    """The GpuTargetConfigProto text XLA:GPU compiles for `name` with."""
    gpu = get(name)
    fields = "".join(f"  {k}: {v}\n" for k, v in _HOPPER.items())
    major, minor, patch = gpu.dnn_version
    return (
        "gpu_device_info {\n" + fields +
        f"  memory_bandwidth: {gpu.bandwidth}\n  l2_cache_size: 52428800\n"
        f"  clock_rate_ghz: {gpu.clock_ghz}\n  device_memory_size: {gpu.memory_bytes}\n"
        "  shared_memory_per_block_optin: 232448\n"
        "  cuda_compute_capability {\n    major: 9\n    feature_extension: ACCELERATED_FEATURES\n"
        "  }\n  registers_per_core_limit: 65536\n  registers_per_block_limit: 65536\n"
        "  scalar_unit_description {\n" + _rates(_HOPPER_SCALAR) + "  }\n"
        "  matrix_unit_description {\n" + _rates(_HOPPER_MATRIX) + "  }\n"
        "  thread_dim_limit_x: 1024\n  thread_dim_limit_y: 1024\n  thread_dim_limit_z: 64\n"
        '  device_vendor: "NVIDIA Corporation"\n  platform_version: "Compute Capability 9.0a"\n'
        f'  model_str: "sm_9.0a with {gpu.memory_bytes}B RAM, {gpu.cores} cores, '
        f'{round(float(gpu.clock_ghz) * 1e6)}KHz clock, {gpu.memory_clock_khz}KHz mem clock, '
        '52428800B L2$"\n'
        "  device_address_bits: 64\n  pcie_bandwidth: 34359738368\n  ecc_enabled: true\n"
        f'  name: "{gpu.name}"\n'
        '  driver_version: "13.0.0"\n  runtime_version: "12.8.0"\n'
        '  compile_time_toolkit_version: "12.8.0"\n  dnn_version: "9.10.0"\n'
        '  cub_version: "3.1.2"\n  device_interconnect_info {\n    active_links: 18\n  }\n'
        "}\n"
        'platform_name: "CUDA"\n'
        f"dnn_version_info {{\n  major: {major}\n  minor: {minor}\n  patch: {patch}\n}}\n"
        f'device_description_str: "{gpu.name}"\n')


def plugin_installed() -> bool:
    import importlib.util
    try:  # a submodule's find_spec imports its package, and raises when that is missing
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ImportError:
        return False


def gpu_aot_python() -> str | None:
    """The interpreter to compile for GPUs with: this one if it has the CUDA plugin, else
    .venv-gpu-aot's (launch/setup_gpu_aot.sh) if it exists."""
    import sys
    if plugin_installed():
        return sys.executable
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = os.environ.get("A1JAX_GPU_AOT_VENV", os.path.join(root, ".venv-gpu-aot"))
    python = os.path.join(python, "bin", "python")
    return python if os.access(python, os.X_OK) else None


def reexec_for_gpu(module_or_script: list[str]) -> None:
    """Runs this command again under .venv-gpu-aot's interpreter when this one lacks the CUDA
    plugin (for `__main__` only: it replaces the process)."""
    import sys
    python = gpu_aot_python()
    if python and python != sys.executable:
        os.execv(python, [python, *module_or_script, *sys.argv[1:]])


def get(name: str) -> Gpu:
    if name not in GPUS:
        raise TargetError(f"unknown target {name!r}; known: {', '.join(sorted(GPUS))}")
    return GPUS[name]


def topology(name: str, hosts: int = 1, devices_per_host: int = 8):
    """Compile-only devices of GPU `name`: `hosts` x `devices_per_host`, in process order.
    JAX must run on the CPU (JAX_PLATFORMS=cpu) and have the CUDA plugin installed."""
    import jax
    config = target_config(name)
    try:
        from jax.experimental import topologies
        topo = topologies.get_topology_desc(platform="cuda", target_config=config,
                                            topology=f"1x{hosts}x{devices_per_host}")
    except (ImportError, RuntimeError, ValueError) as e:
        if jax.config.jax_platforms not in ("cpu", None) and "cpu" not in str(
                jax.config.jax_platforms):
            raise TargetError(f"compiling for {name} needs JAX on the CPU (JAX_PLATFORMS=cpu), "
                              f"got JAX_PLATFORMS={jax.config.jax_platforms}") from e
        raise TargetError(f"cannot compile for {name} here: {str(e).splitlines()[0]} (the CUDA "
                          "compile packages: launch/setup_gpu_aot.sh makes .venv-gpu-aot with "
                          "them, or pip install -e '.[gpu-aot]'; or plan with --backend cpu)"
                          ) from e
    return list(topo.devices)
