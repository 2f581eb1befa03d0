"""PNG plots of a run or a whole curriculum, from the metrics.jsonl files it wrote.

    python -m a1jax.plot --workdir runs/demo/curriculum [--out DIR]

Writes `loss.png` (train and eval loss; the stages of a curriculum one after another on a shared
step axis, split by dashed lines), `expert_load.png` (each layer's expert shares at the last
logged step: one row per layer, 1/num_experts * top_k is perfect balance) and, for each GRPO or
OPD run, `rl_NAME.png` (its per-step panels: success by domain, reward, groups kept, KL, entropy,
clip fraction, response length; for OPD the reverse KL, coverage and teacher top-k mass). A
workdir is a single run (holding metrics.jsonl), a curriculum (its stage directories in order) or
a recipe (`a1jax.recipe`: SFT, the teachers, OPD).
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

from a1jax import cli
from a1jax.errors import A1Error


def runs(workdir: str) -> list[tuple[str, str]]:
    """(name, directory) of each run under `workdir`, in curriculum order."""
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return [(os.path.basename(os.path.abspath(workdir)), workdir)]
    from a1jax.curriculum import STAGES
    found = [(s, os.path.join(workdir, s)) for s in STAGES
             if os.path.exists(os.path.join(workdir, s, "metrics.jsonl"))]
    if not found:  # a recipe's parts, in the order it runs them
        names = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
        order = (["sft_full_domain"] + [n for n in names if n.startswith("teacher_grpo_")]
                 + ["opd_multi_teacher"])
        found = [(n, os.path.join(workdir, n)) for n in order
                 if os.path.exists(os.path.join(workdir, n, "metrics.jsonl"))]
    if not found:
        raise A1Error(f"{workdir}: no metrics.jsonl there or in its stage directories")
    return found


def plot(workdir: str, out: str | None = None) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from a1jax.train.metrics import read

    out = out or workdir
    os.makedirs(out, exist_ok=True)
    stages = runs(workdir)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    offset, last_load = 0, None
    for k, (name, directory) in enumerate(stages):
        records = read(directory)
        train = [(r["step"], r["loss"]) for r in records
                 if r["kind"] == "train" and np.isfinite(r.get("loss", np.nan))]
        evals = [(r["step"], r["loss"]) for r in records if r["kind"] == "eval"]
        color = f"C{k}"
        if train:
            s, l = zip(*train)
            ax.plot(np.array(s) + offset, l, color=color, alpha=0.6, label=f"{name} train")
        if evals:
            s, l = zip(*evals)
            ax.plot(np.array(s) + offset, l, "o--", color=color, label=f"{name} eval")
        loads = [r for r in records if "expert_load" in r]
        if loads:
            last_load = (name, loads[-1]["step"], np.asarray(loads[-1]["expert_load"]))
        end = max([r["step"] for r in records] or [0])
        if k < len(stages) - 1:
            ax.axvline(offset + end, color="grey", linestyle=":", linewidth=1)
        offset += end
    ax.set_xlabel("step (stages in sequence)")
    ax.set_ylabel("cross-entropy per trained token")
    ax.set_title("Loss across the curriculum" if len(stages) > 1 else f"Loss: {stages[0][0]}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    loss_png = os.path.join(out, "loss.png")
    fig.tight_layout()
    fig.savefig(loss_png, dpi=110)
    plt.close(fig)
    written = [loss_png]
    if last_load is not None:
        name, step, load_le = last_load
        fig, ax = plt.subplots(figsize=(max(5, load_le.shape[1] * 0.5), 1 + 0.5 * len(load_le)))
        image = ax.imshow(load_le, aspect="auto", cmap="viridis")
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_title(f"Share of routed tokens per expert ({name}, step {step})")
        fig.colorbar(image, ax=ax)
        load_png = os.path.join(out, "expert_load.png")
        fig.tight_layout()
        fig.savefig(load_png, dpi=110)
        plt.close(fig)
        written.append(load_png)
    for name, directory in stages:
        records = [r for r in read(directory) if r["kind"] == "train"]
        if records and any("policy_version" in r for r in records):
            written.append(plot_rl(name, records, os.path.join(out, f"rl_{name}.png")))
    return written


RL_PANELS = ("reward_mean", "groups_kept", "kl", "entropy", "clip_fraction", "importance_weight",
             "reverse_kl", "coverage", "teacher_mass", "student_entropy", "response_tokens",
             "turns")


def plot_rl(name: str, records: list[dict], path: str) -> str:
    """A GRPO or OPD run's per-step metrics, one panel each; success per domain in the first."""
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    panels = [k for k in RL_PANELS if any(k in r for r in records)]
    cols = 4
    rows = -(-(len(panels) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    axes = axes.ravel()
    domains = sorted({k.split("/", 1)[1] for r in records for k in r
                      if k.startswith("success/")})
    for domain in domains:
        axes[0].plot(steps, [r.get(f"success/{domain}", np.nan) for r in records], label=domain)
    axes[0].set_title("success (training episodes)", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, key in zip(axes[1:], panels):
        ax.plot(steps, [r.get(key, np.nan) for r in records], marker=".")
        ax.set_title(key, fontsize=9)
    for ax in axes[len(panels) + 1:]:
        ax.axis("off")
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m a1jax.plot", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=None, help="where the PNGs go (default: the workdir)")
    args = p.parse_args(argv)
    for path in plot(args.workdir, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
