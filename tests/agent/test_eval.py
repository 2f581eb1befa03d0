"""`python -m a1jax.eval`: held-out task seeds, the three files, resuming, and a verifier path
that neither passes a random model nor fails the replayed references."""

import json
import re

import pytest

from a1jax import eval as evaluate
from a1jax import experiment
from a1jax.errors import A1Error
from a1jax.data import synth
from a1jax.data.tokenizer import SHIPPED_TOKENIZER_DIR, load_tokenizer
from a1jax.model import get_preset
from experiments.curriculum import (stage1_foundation, stage2_trajectory_extension,
                                    stage3_frontier_hardening)
from tests.conftest import hf_model, random_params


def test_evaluation_seeds_are_disjoint_from_every_training_seed():
    for stage in (stage1_foundation, stage2_trajectory_extension, stage3_frontier_hardening):
        for model in ("tiny", "bench", "agents_a1_35b"):
            assert stage.get_config(f"model={model}").seed < synth.EVAL_SEED_BASE
    assert evaluate.eval_seed(0) == synth.EVAL_SEED_BASE
    config = stage1_foundation.get_config("model=tiny")
    config.seed = synth.EVAL_SEED_BASE
    with pytest.raises(experiment.ExperimentError) as e:
        experiment.validate(config)
    assert str(e.value) == ("seed must be in [0, 1000000): seeds from 1000000 on make "
                            "a1jax.eval's held-out tasks")


def test_replay_scores_everything_writes_three_files_and_resumes(tmp_path, capsys):
    argv = ["--replay", "--horizons", "1,2", "--n", "2", "--runs", "2", "--out", str(tmp_path)]
    assert evaluate.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["rows"]) == 6  # 3 domains x 2 horizons
    for row in results["rows"]:
        assert (row["avg@2"], row["pass@2"], row["best@1"], row["finished"]) == (1, 1, 1, 1)
        assert row["tasks"] == 2 and row["episodes"] == 4 and row["reference"] == 1.0
    assert (tmp_path / "success_by_horizon.png").stat().st_size > 0
    assert "| calculator | 1 | 1.000 |" in (tmp_path / "results.md").read_text()
    records = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert len(records) == 24
    assert all(json.loads(r)["metadata"]["seed"] == synth.EVAL_SEED_BASE for r in records)
    capsys.readouterr()
    assert evaluate.main(argv) == 0  # nothing left to run
    assert "resuming: 24 episodes already in" in capsys.readouterr().out
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 24
    # Killed mid-write: the last record cut short. It is dropped and its episode runs again.
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(records[:23]) + "\n" + records[23][:40])
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert "its last line was cut short (an interrupted write); dropped" in out
    assert "resuming: 23 episodes already in" in out
    # The time it reports is this run's, for the one episode it ran.
    assert re.search(r"run\(s\) per cell; \d+ s for the 1 episodes run now \(23 resumed\)\.$",
                     (tmp_path / "results.md").read_text().splitlines()[0])
    assert sorted(path.read_text().splitlines()) == sorted(records)
    # Whole, but killed before its newline: the next record still starts on a line of its own.
    path.write_text("\n".join(records[:23]))
    assert evaluate.main(argv) == 0
    assert sorted(path.read_text().splitlines()) == sorted(records)
    path.write_text("\n".join(records[:5] + ["{cut", records[6]]) + "\n")
    with pytest.raises(A1Error, match=r"episodes.jsonl: line 6 is not JSON$"):
        evaluate.main(argv)


def test_reference_column_shows_the_cells_the_budgets_cut_off(tmp_path, capsys):
    # 1,024 tokens hold calculator's horizon-3 references but not kb_search's (about 1,125
    # tokens): replayed, those fail, and the column and the warning say so before any episode.
    argv = ["--replay", "--domains", "calculator,kb_search", "--horizons", "3", "--n", "2",
            "--runs", "1", "--max-turns", "12", "--max-turn-tokens", "256",
            "--max-context", "1024", "--out", str(tmp_path)]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    rows = {r["domain"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["calculator"]["reference"] == rows["calculator"]["avg@1"] == 1.0
    assert rows["kb_search"]["reference"] == rows["kb_search"]["avg@1"] == 0.0
    assert rows["kb_search"]["truncated"] == 1.0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: kb_search h3: the reference solutions solve 0 of 2 tasks within these budgets "
        "(--max-context 1024, --max-turns 12, --max-turn-tokens 256): a model imitating them is "
        "capped at 0.000 there (the 'reference' column)"]
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[2] == ("| domain | horizon | avg@1 | pass@1 | best@1 | reference | finished | "
                        "truncated | aborted | turns | tool_calls | malformed_calls | "
                        "assistant_tokens |")
    assert table[5].startswith("| kb_search | 3 | 0.000 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 |")


def test_a_random_model_solves_nothing(tmp_path):
    config = get_preset("tiny").replace(vocab_size=len(load_tokenizer()), eos_token_id=None)
    model_dir = tmp_path / "random"
    hf_model(config, random_params(config, seed=5)).save_pretrained(str(model_dir))
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(model_dir), "--tokenizer", str(SHIPPED_TOKENIZER_DIR),
                          "--horizons", "1", "--n", "2", "--runs", "1", "--greedy",
                          "--max-turn-tokens", "24", "--max-turns", "2", "--batch", "4",
                          "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["domain"] for r in rows] == ["calculator", "files", "kb_search"]
    assert all(r["avg@1"] == 0.0 and r["episodes"] == 2 for r in rows)
    for line in (out / "episodes.jsonl").read_text().splitlines():
        record = json.loads(line)["metadata"]["episode"]
        assert record["status"] in ("truncated", "finished")
        assert len(record["tokens"]) == len(record["model_mask"]) == len(record["logprobs"])
        assert all(lp <= 0 for lp, m in zip(record["logprobs"], record["model_mask"]) if m)
