#!/usr/bin/env bash
# Prints launch/k8s/jobset.yaml with its ${...} fields filled from the environment (defaults
# below for the optional ones); every field must be set, and NODES a positive number.
set -euo pipefail
cd "$(dirname "$0")"
: "${PORT:=1234}" "${GPUS_PER_NODE:=8}" "${ARGS:=}" "${CKPT_MOUNT:=/ckpt}" "${CKPT_CLAIM:=a1jax-ckpt}"
for v in NAME NODES IMAGE EXPERIMENT WORKDIR; do
  if [[ -z "${!v:-}" ]]; then echo "error: set $v (see launch/k8s/jobset.yaml)" >&2; exit 2; fi
done
if ! [[ "$NODES" =~ ^[1-9][0-9]*$ ]]; then echo "error: NODES must be a positive number" >&2; exit 2; fi
export NAME NODES IMAGE EXPERIMENT WORKDIR PORT GPUS_PER_NODE ARGS CKPT_MOUNT CKPT_CLAIM
# Only ${UPPER_CASE} fields: the container's own $VARIABLES are left for its shell.
python3 -c 'import os, re, sys; sys.stdout.write(re.sub(r"\$\{([A-Z_]+)\}", lambda m: os.environ[m.group(1)], open("jobset.yaml").read()))'
