#!/usr/bin/env bash
# Makes .venv-gpu-aot: .venv plus the CUDA compile packages (setup.cfg's gpu-aot extra), for
# compiling for H100 / H200 on a machine without a GPU (python -m a1jax.plan --target, the
# GPU-compile tests). A separate environment because the CUDA plugin, once installed, makes
# every `import jax` print "Could not find cuda drivers" lines on a machine without a GPU.
# It layers on .venv (a .pth adds .venv's packages) and installs only the plugin on top.
#   launch/setup_gpu_aot.sh        # sourced by launch/test.sh; run it alone to plan for GPUs
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="$root/.venv"
venv="${A1JAX_GPU_AOT_VENV:-$root/.venv-gpu-aot}"
stamp="$venv/.a1jax-gpu-aot"
# The extra's pins, read from setup.cfg so that they are written once.
pins="$(awk '/^gpu-aot =/{f=1; next} f && /^    [a-z]/{print $1; next} f{exit}' "$root/setup.cfg")"
want="$(echo "$pins" | sha256sum | cut -c1-16)"
if [ ! -x "$base/bin/python" ]; then
  echo "[setup] $base is missing: run launch/test.sh or launch/demo.sh first" >&2; exit 2
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] creating $venv (.venv + the CUDA compile packages)"
  "$base/bin/python" -m venv --without-pip "$venv"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  base_site="$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$base_site')" > "$site/a1jax-base.pth"
  # shellcheck disable=SC2086
  "$base/bin/python" -m pip install --quiet --no-deps --target "$site" $pins
  echo "$want" > "$stamp"
fi
