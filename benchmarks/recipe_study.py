r"""The toy recipe study of docs/recipe.md: one full-domain SFT model, then for each training seed
the GRPO teachers and the distilled student, every model evaluated on the same held-out tasks.

    python benchmarks/recipe_study.py --workdir runs/recipe_study --seeds 0,1,2 [--eval-n 16]

Each seed is `python -m a1jax.recipe` in WORKDIR/seed-N with `teacher_grpo:seed=N` and
`opd_multi_teacher:seed=N` (the seed of their rollouts); the SFT part is the same for every seed
(run once in seed-0, linked into the others), so the spread over seeds is the spread of the RL
parts' training. Evaluation: `a1jax.eval`'s default sampling (the paper's release settings),
task seed offset 0, `--eval-runs` runs per task. Writes WORKDIR/study.md: per domain and horizon,
the SFT model's avg@runs and, over the seeds, the mean and the range of each teacher's (on its
own domain) and of the student's. Rerunning resumes: finished parts are skipped, evaluations
extend their episodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the study trains: sizes for the 2-core CPU (one simulated device), h1-2 tasks.
PARTS = [
    "--layout", "fsdp", "--set", "mesh.num_devices=1", "--set", "model.moe_dispatch=dropless",
    "--part-set", "sft_full_domain:steps=2000",
    "--part-set", "sft_full_domain:data.horizon_max=2",
    "--part-set", "sft_full_domain:data.synthetic_per_domain=3000",
    "--part-set", "sft_full_domain:checkpoint.every=250",
    "--part-set", "sft_full_domain:eval_every=250",
    "--part-set", "sft_full_domain:log_every=50",
    "--part-set", "teacher_grpo:rl.horizon_max=2", "--part-set", "teacher_grpo:steps=30",
    "--part-set", "teacher_grpo:batch_size=16",
    "--part-set", "teacher_grpo:optim.learning_rate=3e-4",
    "--part-set", "opd_multi_teacher:rl.horizon_max=2",
    "--part-set", "opd_multi_teacher:steps=30",
    "--part-set", "opd_multi_teacher:batch_size=12",
    "--part-set", "opd_multi_teacher:optim.learning_rate=3e-4",
]


def rows(path: str) -> dict[tuple[str, int], float]:
    with open(os.path.join(path, "results.json")) as f:
        results = json.load(f)
    key = f"avg@{results['runs']}"
    return {(r["domain"], r["horizon"]): r[key] for r in results["rows"]}


def table(workdir: str, seeds: list[int], runs: int) -> str:
    sft = rows(os.path.join(workdir, f"seed-{seeds[0]}", "eval", "sft_full_domain"))
    per_seed = []
    for seed in seeds:
        evals = os.path.join(workdir, f"seed-{seed}", "eval")
        got = {"opd": rows(os.path.join(evals, "opd_multi_teacher"))}
        for domain in sorted({d for d, _ in sft}):
            got.update({("teacher", d, h): v for (d, h), v in
                        rows(os.path.join(evals, f"teacher_grpo_{domain}")).items()})
        per_seed.append(got)

    def spread(values: list[float]) -> str:
        return (f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
                if len(values) > 1 else f"{values[0]:.3f}")

    lines = [f"| domain | horizon | SFT avg@{runs} | teacher avg@{runs} | OPD student "
             f"avg@{runs} |", "|---|---|---|---|---|"]
    for (domain, horizon), base in sorted(sft.items()):
        teacher = [s[("teacher", domain, horizon)] for s in per_seed]
        student = [s["opd"][(domain, horizon)] for s in per_seed]
        lines.append(f"| {domain} | {horizon} | {base:.3f} | {spread(teacher)} | "
                     f"{spread(student)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-n", type=int, default=16)
    p.add_argument("--eval-runs", type=int, default=3)
    p.add_argument("--eval-horizons", default="1,2")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = os.path.abspath(args.workdir)
    for seed in seeds:
        out = os.path.join(workdir, f"seed-{seed}")
        os.makedirs(out, exist_ok=True)
        shared = os.path.join(workdir, f"seed-{seeds[0]}", "sft_full_domain")
        if seed != seeds[0] and not os.path.exists(os.path.join(out, "sft_full_domain")):
            os.symlink(shared, os.path.join(out, "sft_full_domain"))
        cmd = [sys.executable, "-m", "a1jax.recipe", "--workdir", out, "--model", "tiny",
               *PARTS, "--part-set", f"teacher_grpo:seed={seed}",
               "--part-set", f"opd_multi_teacher:seed={seed}",
               "--eval-n", str(args.eval_n), "--eval-runs", str(args.eval_runs),
               "--eval-horizons", args.eval_horizons]
        print(f"== seed {seed}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    text = (f"Held-out success (task seed offset 0, {args.eval_n} tasks x {args.eval_runs} runs "
            f"per cell) of one SFT model and, over training seeds {args.seeds}, its GRPO "
            "teachers (each on its own domain) and the student distilled from them: mean "
            "[min, max] over the seeds. `python benchmarks/recipe_study.py --workdir "
            f"{args.workdir} --seeds {args.seeds} --eval-n {args.eval_n}`.\n\n"
            + table(workdir, seeds, args.eval_runs))
    with open(os.path.join(workdir, "study.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
