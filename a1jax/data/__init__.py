"""Agentic trajectory data: JSONL trajectories -> chat-format tokens with assistant-only loss
masks -> packed, sharded, checkpointable batches.

Modules, each with one job:
  schema           the trajectory JSONL schema and its validation (precise error locations)
  chat_template    the Qwen3.5 chat format: which template renders, and rendering with it
                   (templates/qwen3_5.jinja is the template a1jax ships)
  masks            which characters of a rendering the assistant produced, for any template
  tokenizer        loading tokenizer directories; trajectories to tokens + loss mask
  train_tokenizer  CLI: the small byte-level BPE tokenizer a1jax ships (assets/tokenizer)
  synth            CLI: deterministic synthetic long-horizon tool-use tasks (three domains)
  packing          next-token examples, the length policy, packing into fixed-length rows
  pipeline         the grain pipeline: source, shard, shuffle, mixture, encode, pack, batch
  tfds_builder     the TFDS ArrayRecord dataset (no TensorFlow) and its reader
  prepare          CLI: JSONL -> TFDS, with a per-line rejection report
  inspect          CLI: what the model learns from, per trajectory
  args             argument parsing shared by the CLIs (one-line usage errors)

Demo, end to end:

    python -m a1jax.data.synth --domain kb_search --horizon 8 --n 50 --seed 0 --out kb.jsonl
    python -m a1jax.data.inspect --input kb.jsonl | head -80
    python -m a1jax.data.prepare --input 'kb.jsonl' --out data/
"""
