#!/usr/bin/env bash
# Sourced by launch/demo.sh and launch/test.sh: makes .venv (once) with a1jax and its pinned
# dependencies, and reinstalls when setup.cfg changes. Activates it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.a1jax-setup"
# The extras to install: launch/test.sh adds gpu-aot (compiling for GPUs without one). Extras a
# previous setup installed are kept (the stamp lists them after the files' hash).
files="$(sha256sum "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  python3 -m venv "$venv"
fi
have="$(cat "$stamp" 2>/dev/null || true)"
had="${have#* }"
[ "$had" = "$have" ] && had=""
extras="$(tr ',' '\n' <<< "${A1JAX_EXTRAS:-test},$had" | sed '/^$/d' | sort -u | paste -sd, -)"
if [ "$have" != "$files $extras" ]; then
  echo "[setup] installing a1jax with pinned dependencies into $venv (a few minutes the first time)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # The test extra pins torch==2.13.0 exactly: that takes the CPU wheel already on the machine.
  "$venv/bin/python" -m pip install --quiet -e "$root[$extras]"
  echo "$files $extras" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
