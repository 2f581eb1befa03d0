#!/usr/bin/env bash
# Sourced by launch/demo.sh and launch/test.sh: makes .venv (once) with a1jax and its pinned
# dependencies, and reinstalls when setup.cfg changes. Activates it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.a1jax-setup"
want="$(sha256sum "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing a1jax with pinned dependencies into $venv (a few minutes the first time)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # The test extra pins torch==2.13.0 exactly: that takes the CPU wheel already on the machine.
  "$venv/bin/python" -m pip install --quiet -e "$root[test]"
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
