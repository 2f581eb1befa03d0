"""Hugging Face <-> a1jax conversion commands.

    python -m a1jax.convert from-hf --hf HF_DIR --out CKPT_DIR [--model NAME] [--layout NAME]

`from-hf` writes step 0 of an Orbax checkpoint root (usable as a stage's `init_from`), its
arrays created already sharded for `--layout` on this job's devices. The other direction is
`python -m a1jax.export`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from a1jax import cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m a1jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    from_hf = commands.add_parser("from-hf", help="Hugging Face directory -> Orbax checkpoint")
    from_hf.add_argument("--hf", required=True, help="Hugging Face model directory")
    from_hf.add_argument("--out", required=True, help="checkpoint root to create (step 0)")
    from_hf.add_argument("--model", help="preset the directory must match (e.g. agents_a1_35b)")
    from_hf.add_argument("--layout", help="sharding layout of the arrays (default: FSDP)")
    args = parser.parse_args(argv)

    from a1jax.convert.hf_import import import_hf

    result = import_hf(args.hf, args.out, model=args.model, layout=args.layout)
    gb = result.bytes_read / 1e9
    print(f"imported {result.num_tensors} parameters ({result.report.expert_layout} experts, "
          f"text model under {result.report.prefix!r}) in {result.seconds:.1f}s "
          f"({gb / max(result.seconds, 1e-9):.2f} GB/s); wrote {result.step_dir}")
    if result.report.not_imported:
        print(f"not imported (carried over by `a1jax.export --source`): "
              f"{len(result.report.not_imported)} tensors, e.g. {result.report.not_imported[0]}")
    return 0


if __name__ == "__main__":
    cli.run(main)
