# The XLA and runtime settings every GPU launcher uses (node.sh, slurm/train.sbatch, k8s/), in
# one place. Sourced, not run. Each flag was checked to exist in the pinned jaxlib's XLA flag
# table (jaxlib/libjax_common.so); XLA rejects an unknown flag at start-up.
# Set A1JAX_XLA_FLAGS_EXTRA to add flags for one run without editing this file.

_a1jax_flags=(
  # Schedule collectives to overlap with independent compute (FSDP's weight all-gathers and
  # gradient reduce-scatters hide behind the previous layer's matmuls).
  --xla_gpu_enable_latency_hiding_scheduler=true
  # Combine small collectives into larger ones up to these sizes: one NCCL call per group of
  # parameters instead of one per tensor (the 35B model has ~700 parameter tensors).
  --xla_gpu_all_gather_combine_threshold_bytes=1073741824
  --xla_gpu_reduce_scatter_combine_threshold_bytes=1073741824
  --xla_gpu_all_reduce_combine_threshold_bytes=1073741824
  # Pipeline collectives across loop iterations (the microbatch scan, blockwise attention):
  # start the next iteration's all-gather / reduce-scatter / all-reduce during this one.
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  # Unroll while loops by two so that collectives of one iteration overlap the next one's
  # compute (helps the pipelined collectives above).
  --xla_gpu_enable_while_loop_double_buffering=true
  # Run collectives on the highest-priority stream so that they are not starved by compute.
  --xla_gpu_enable_highest_priority_async_stream=true
)
export XLA_FLAGS="${XLA_FLAGS:-} ${_a1jax_flags[*]} ${A1JAX_XLA_FLAGS_EXTRA:-}"
unset _a1jax_flags

# cuDNN attention is a model setting, not an XLA flag: --config.model.extra=attention_impl=cudnn
# (jax.nn.dot_product_attention's cuDNN fused kernel; a1jax.model.attention).

# Let XLA take 92% of each GPU (default 75%); the rest is for cuDNN / NCCL workspaces. The
# planner's default 10% headroom (python -m a1jax.plan --headroom) assumes this.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
# One process per node drives all its GPUs: fewer, larger NCCL launches.
export NCCL_LAUNCH_MODE="${NCCL_LAUNCH_MODE:-GROUP}"
