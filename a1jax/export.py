"""Export an a1jax checkpoint as a Hugging Face model directory that transformers, vLLM and SGLang
serve.

    python -m a1jax.export --checkpoint DIR[/STEP] --out HF_DIR [--dtype bfloat16] [--source HF_DIR]

DIR is a checkpoint root (its latest step is exported), one step of it, or a run workdir. The
output holds config.json (`Qwen3_5MoeForCausalLM`), safetensors shards with their index,
generation_config.json and the tokenizer with the chat template the model was trained on. With
--source (the Hugging Face directory stage 1 started from), the tensors a1jax does not train
(vision tower, MTP layer) are carried over unchanged and the output has the source's full
layout (`Qwen3_5MoeForConditionalGeneration`), a drop-in replacement for it.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from a1jax import cli


def main(argv: Sequence[str] | None = None) -> int:
    from a1jax.convert.hf_export import DTYPES, MAX_SHARD_BYTES, export

    parser = argparse.ArgumentParser(prog="python -m a1jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint root, step directory, or run workdir")
    parser.add_argument("--out", required=True, help="Hugging Face directory to create")
    parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES),
                        help="dtype of the exported text-model tensors")
    parser.add_argument("--source", help="Hugging Face directory to carry untrained tensors from")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--max-shard-bytes", type=int, default=MAX_SHARD_BYTES,
                        help="largest safetensors file (default 5 GB)")
    args = parser.parse_args(argv)

    result = export(args.checkpoint, args.out, dtype=args.dtype, source=args.source,
                    tokenizer=args.tokenizer, max_shard_bytes=args.max_shard_bytes)
    gb = result.bytes_written / 1e9
    carried = f", {len(result.carried_over)} carried over" if result.carried_over else ""
    print(f"exported {result.num_tensors} tensors{carried} ({gb:.2f} GB {args.dtype}, "
          f"{result.num_shards} shard(s)) in {result.seconds:.1f}s "
          f"({gb / max(result.seconds, 1e-9):.2f} GB/s); wrote {result.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
