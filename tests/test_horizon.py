"""`python -m a1jax.horizon`: the horizon-versus-parameters study runs from one command, resumes
after kill -9 without redoing finished cells, evaluates on task seeds no training run used,
and puts intervals over training seeds."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from a1jax import experiment, horizon, sweep
from a1jax.curriculum import REPO, load_experiment
from a1jax.data.synth import EVAL_SEED_BASE
from a1jax.errors import A1Error

STUDY = os.path.join(REPO, "experiments", "horizon", "study.py")
CONDITIONS = ["short", "medium", "curriculum", "mixed", "short_large"]


def _files(root):
    """path -> (size, mtime_ns) of every file under root."""
    out = {}
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if os.path.isfile(path):
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The smoke study killed (-9) in its second cell, as the second part of its chain starts
    (the first cell trained and evaluated), then rerun."""
    workdir = str(tmp_path_factory.mktemp("horizon") / "study")
    cmd = [sys.executable, "-m", "a1jax.horizon", "--workdir", workdir, "--smoke",
           "--conditions", "short,curriculum"]  # one part; parts chained
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    second_part = os.path.join(horizon.part_dir(workdir, "curriculum", 0, 1), "experiment.json")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    while not os.path.exists(second_part):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the second cell did not start in 15 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_output = proc.stdout.read()
    before = {name: _files(os.path.join(workdir, part, "short", "seed-0"))
              for name, part in (("cells", "cells"), ("eval", "eval"))}
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return workdir, killed_output, before, rerun.stdout


def test_the_smoke_study_resumes_after_kill_9_without_redoing_finished_cells(
        killed_and_resumed):
    workdir, killed_output, before, output = killed_and_resumed
    assert "[2/4] curriculum, seed 0" in killed_output  # killed in the second cell
    assert "horizon_short_part0: already finished" in output
    assert "horizon_curriculum_part0: already finished" in output
    assert "horizon_curriculum_part1: already finished" not in output
    assert "== short, seed 0, horizon 1: evaluated, skipped" in output
    assert "== short, seed 0, horizon 2: evaluated, skipped" in output
    assert "[1/4] short, seed 0: evaluating" not in output
    for name, part in (("cells", "cells"), ("eval", "eval")):
        assert _files(os.path.join(workdir, part, "short", "seed-0")) == before[name]
    with open(os.path.join(workdir, "horizon.csv")) as f:
        table = list(csv.DictReader(f))
    assert [(r["condition"], r["eval_horizon"]) for r in table] == [
        (c, h) for c in ("short", "curriculum") for h in ("1", "2")]
    assert all(len(r["per_seed"].split()) == 2 for r in table)
    with open(os.path.join(workdir, "horizon.md")) as f:
        text = f.read()
    assert "| condition | trained on | h1 | h2 |" in text
    assert "`python -m a1jax.horizon --workdir" in text
    assert os.path.getsize(os.path.join(workdir, "horizon.png")) > 10_000
    # The curriculum's parts chain: each starts from the previous part's final weights.
    for part in (1, 2):
        with open(os.path.join(horizon.part_dir(workdir, "curriculum", 1, part),
                               "experiment.json")) as f:
            assert json.load(f)["init_from"] == horizon.part_dir(workdir, "curriculum", 1,
                                                                 part - 1)


def test_evaluation_tasks_come_from_seeds_no_training_run_used(killed_and_resumed):
    workdir = killed_and_resumed[0]
    trained = set()
    for path in glob.glob(os.path.join(workdir, "cells", "*", "*", "*", "data", "jsonl",
                                       "*.jsonl")):
        with open(path) as f:
            for line in f:
                t = json.loads(line)
                assert t["metadata"]["seed"] < EVAL_SEED_BASE
                trained.add(t["id"])
    evaluated = set()
    for path in glob.glob(os.path.join(workdir, "eval", "*", "*", "*", "episodes.jsonl")):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                assert r["metadata"]["seed"] >= EVAL_SEED_BASE
                evaluated.add(r["id"].rsplit("-run", 1)[0])
    # 4 parts x 2 seeds x 30 trajectories, some shared; 2 horizons x 1 task
    assert len(trained) > 100 and len(evaluated) == 2
    assert not trained & evaluated


def test_conditions_differ_only_in_horizons_and_size_at_an_equal_token_budget():
    def identity(condition, part, seed=0):
        c = load_experiment(STUDY, f"condition={condition},part={part},seed={seed}")
        out = experiment.identity(c)
        tokens = experiment.num_steps(c) * c.batch_size * c.seq_len
        return out, tokens, c

    short, tokens, _ = identity("short", 0)
    for condition in CONDITIONS:
        parts = [identity(condition, k) for k in range(len(horizon._study_module().parts(
            condition)))]
        total = sum(t for _, t, _ in parts)
        assert 0 <= total - tokens < len(parts) * 2 * 4096, condition  # whole steps per part
        for ident, _, c in parts:
            differ = {k for k in ident if ident[k] != short[k]}
            if condition == "short_large":
                assert differ == {"stage", "model"}
                assert c.model.extra == horizon._study_module().LARGE
            else:
                assert differ <= {"stage", "data"}
                assert ident["data"]["mixture"] == short["data"]["mixture"]
    _, _, seed1 = identity("short", 0, seed=1)
    assert seed1.seed == 1


def test_the_interval_is_over_training_seeds_not_evaluation_runs(tmp_path):
    """Per seed, Avg@runs averaged over domains; the interval is the t-interval of those."""
    settings = {"conditions": ["short", "mixed"], "seeds": [0, 1, 2],
                "domains": ["calculator", "files"], "eval_horizons": [1, 4], "eval_n": 2,
                "eval_runs": 4, "budget_tokens": 10, "eval_seed": 0, "smoke": False}
    values = {}
    rng = np.random.default_rng(0)
    for cond in settings["conditions"]:
        for seed in settings["seeds"]:
            for h in settings["eval_horizons"]:
                out = horizon.eval_dir(str(tmp_path), cond, seed, h)
                os.makedirs(out)
                per_domain = rng.integers(0, 9, size=2) / 8
                values[(cond, seed, h)] = per_domain.mean()
                rows = [{"domain": d, "horizon": h, "avg@4": float(v), "pass@4": 1.0,
                         "turns": 2.0 + seed + k} for k, (d, v) in enumerate(zip(
                             settings["domains"], per_domain))]
                with open(os.path.join(out, "results.json"), "w") as f:
                    json.dump({"runs": 4, "rows": rows}, f)
    text = horizon.report(str(tmp_path), settings, "python -m a1jax.horizon --workdir X", 60.0)
    with open(tmp_path / "horizon.csv") as f:
        table = list(csv.DictReader(f))
    t = 4.302652729911275  # the 0.975 quantile of Student's t with 2 degrees of freedom
    for r in table:
        seeds = [values[(r["condition"], s, int(r["eval_horizon"]))] for s in range(3)]
        mean, half = np.mean(seeds), t * np.std(seeds, ddof=1) / np.sqrt(3)
        assert float(r["mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(r["ci95_low"]) == pytest.approx(max(0.0, mean - half), abs=1e-4)
        assert float(r["ci95_high"]) == pytest.approx(min(1.0, mean + half), abs=1e-4)
        assert r["per_seed"] == " ".join(f"{v:.4f}" for v in seeds)
        assert float(r["turns"]) == 3.5  # the mean over domains (2.5 + seed) and seeds
    assert [r["beyond_training"] for r in table] == ["False", "True", "False", "False"]
    assert "| short | horizons 1-2 only | " in text
    assert "| short | 3.5 | 3.5 |" in text
    # calculator at horizon 1: call, answer; files at 1: list, read, (move,) answer
    assert "| (reference trajectories) | " in text


def test_bad_settings_are_refused_before_anything_trains(tmp_path, monkeypatch):
    workdir = str(tmp_path / "w")
    with pytest.raises(A1Error, match=r"^--seeds 1: an interval over training seeds needs at "
                       r"least 2$"):
        horizon.main(["--workdir", workdir, "--seeds", "1"])
    with pytest.raises(A1Error, match=r"^--conditions 'short,long': known conditions are "
                       r"short, medium, curriculum, mixed, short_large$"):
        horizon.main(["--workdir", workdir, "--conditions", "short,long"])
    with pytest.raises(A1Error, match=r"^--eval-horizons: expected positive integers"):
        horizon.main(["--workdir", workdir, "--eval-horizons", "0,2"])
    os.makedirs(workdir)
    with open(os.path.join(workdir, "study.json"), "w") as f:
        json.dump({"budget_tokens": 5}, f)
    with pytest.raises(A1Error, match=r"holds a study with other settings \(budget_tokens=5, "
                       r"not 5000000\): use another --workdir or the same settings$"):
        horizon.main(["--workdir", workdir])
    # Written before a1jax recorded the configs' digest: adopted; then an edit is refused.
    settings = horizon.settings_from_args(horizon.parse_args(["--workdir", workdir]))
    with open(os.path.join(workdir, "study.json"), "w") as f:
        json.dump(settings, f)
    horizon._claim_settings(workdir, settings)
    with open(os.path.join(workdir, "study.json")) as f:
        assert json.load(f)["configs"] == horizon.configs_digest(settings)
    monkeypatch.setattr(horizon, "MAX_TURN_TOKENS", 161)
    with pytest.raises(A1Error, match=r"other settings \(experiments/horizon/study.py's "
                       r"training configs or the evaluation budgets\)"):
        horizon._claim_settings(workdir, settings)


def test_the_sweep_trains_three_seeds_of_one_condition(tmp_path):
    cmds = sweep.commands(f"{STUDY}:condition=mixed", str(tmp_path))
    assert [c[-1] for c in cmds] == ["--config.seed=0", "--config.seed=1", "--config.seed=2"]
    assert [os.path.basename(c[c.index("--workdir") + 1]) for c in cmds] == [
        "seed=0", "seed=1", "seed=2"]
    with pytest.raises(experiment.ExperimentError, match="condition curriculum has parts 0-2, "
                       "not 3"):
        load_experiment(STUDY, "condition=curriculum,part=3")


def test_work_built_on_a_part_that_was_trained_again_is_refused(tmp_path):
    """A later part (or an evaluation) records which run of its source it was made from; if
    that source is trained again (its directory removed and rerun), the rerun stops."""
    source, later = str(tmp_path / "part-0"), str(tmp_path / "part-1")
    os.makedirs(source)
    summary = {"checkpoint": "c/611", "fingerprint": "f", "seconds": 368.7, "train_loss": 0.1}
    with open(os.path.join(source, "summary.json"), "w") as f:
        json.dump(summary, f)
    horizon._check_source(later, source)  # the first time: recorded
    horizon._check_source(later, source)  # the same run: fine
    with open(os.path.join(source, "summary.json"), "w") as f:
        json.dump(dict(summary, seconds=371.2, train_loss=0.11), f)
    with pytest.raises(A1Error, match=f"^{later} was made from an earlier run of {source}, which "
                       f"has been trained again since: remove {later} and rerun$"):
        horizon._check_source(later, source)
