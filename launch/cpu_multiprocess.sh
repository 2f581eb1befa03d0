#!/usr/bin/env bash
# N processes on this machine, each with 8/N simulated CPU devices, joined through
# jax.distributed (gloo collectives over TCP on 127.0.0.1): the multi-host code paths (each
# process reading its own rows, cooperative Orbax checkpoints) without a cluster.
#
#   launch/cpu_multiprocess.sh N [EXPERIMENT[:args]] [--workdir DIR] [--config.KEY=VALUE ...]
#   launch/cpu_multiprocess.sh 2                       # stage 1 smoke at model=tiny, in /tmp
#   launch/cpu_multiprocess.sh 2 experiments/curriculum/stage1_foundation.py:model=tiny,smoke=True \
#       --workdir /tmp/mp --config.steps=6
#
# Process 0's output is shown; every process's goes to WORKDIR/process_<i>.log. Exit status: the
# first non-zero one of the processes (2 on a configuration error), else 0.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: launch/cpu_multiprocess.sh N [EXPERIMENT[:args]] [--workdir DIR] [flags...]" >&2; }
N="${1:-}"
if ! [[ "$N" =~ ^[0-9]+$ ]] || (( N < 1 )); then
  usage; echo "error: N must be a positive number of processes, got '${N}'" >&2; exit 2
fi
shift
TOTAL=${A1JAX_CPU_DEVICES:-8}  # simulated devices in all, split evenly between the processes
if (( TOTAL % N )); then
  echo "error: $N processes cannot split $TOTAL devices evenly (N must divide $TOTAL)" >&2; exit 2
fi
PER=$(( TOTAL / N ))
CONFIG="experiments/curriculum/stage1_foundation.py:model=tiny,smoke=True"
if [[ $# -gt 0 && "$1" != --* ]]; then CONFIG="$1"; shift; fi
WORKDIR=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workdir) WORKDIR="$2"; shift 2;;
    --workdir=*) WORKDIR="${1#--workdir=}"; shift;;
    *) ARGS+=("$1"); shift;;
  esac
done
WORKDIR="${WORKDIR:-$(mktemp -d /tmp/a1jax-mp-XXXXXX)}"
mkdir -p "$WORKDIR"
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}"
# A free port for the coordinator (process 0 serves it).
PORT="${A1JAX_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

export JAX_PLATFORMS=cpu
export XLA_FLAGS="$(echo "${XLA_FLAGS:-}" | sed 's/--xla_force_host_platform_device_count=[0-9]*//g') --xla_force_host_platform_device_count=$PER"
export A1JAX_COORDINATOR="127.0.0.1:$PORT" A1JAX_NUM_PROCESSES="$N"
echo "cpu_multiprocess: $N processes x $PER devices, coordinator $A1JAX_COORDINATOR, workdir $WORKDIR" >&2

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for (( i = 0; i < N; i++ )); do
  A1JAX_PROCESS_ID=$i "$PYTHON" -m a1jax.train --config "$CONFIG" --workdir "$WORKDIR" \
    "${ARGS[@]}" > "$WORKDIR/process_$i.log" 2>&1 &
  PIDS+=($!)
done
STATUS=0
for (( i = 0; i < N; i++ )); do
  rc=0
  wait "${PIDS[$i]}" || rc=$?
  if (( rc != 0 )); then
    (( STATUS == 0 )) && STATUS=$rc
    cleanup  # one process failed: the others would wait for it in a collective
  fi
done
cat "$WORKDIR/process_0.log"
if (( STATUS != 0 )); then
  for (( i = 1; i < N; i++ )); do
    echo "--- process $i (last lines) ---" >&2; tail -n 5 "$WORKDIR/process_$i.log" >&2
  done
fi
exit $STATUS
