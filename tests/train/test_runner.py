r"""The runner: resume after kill -9 and SIGTERM, restore onto another layout, non-finite steps,
and the errors it gives before compiling anything."""

import hashlib
import json
import os
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest
import safetensors.numpy

from a1jax import experiment
from a1jax.convert import hf_export
from a1jax.convert.mapping import to_hf_tensors
from a1jax.data import tokenizer as tok_lib
from a1jax.infer.load import tokenizer_dir
from a1jax.model.transformer import unstack_layers
from a1jax.train import runner
from a1jax.train.checkpoint import Checkpointer
from tests.train.runner_helpers import (REPO, assert_trees_close, cli, final_params, losses,
                                        stage1, start, tensorboard_scalars, wait_for_step)

quiet = dict(report=lambda _: None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Stage 1 smoke, six steps, uninterrupted, in this process."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    summary = runner.run(stage1("agent_eval.every=3", "agent_eval.n=1", "agent_eval.horizons=1",
                                "agent_eval.max_turn_tokens=48"), workdir, **quiet)
    assert summary["status"] == "finished" and summary["steps"] == 6
    return workdir


def assert_same_run(workdir: str, reference: str, tol: float) -> None:
    """Same data order and same updates as the uninterrupted run: every step's loss (relative
    `tol`) and the final parameters (absolute `tol`)."""
    ours, theirs = losses(workdir), losses(reference)
    assert sorted(ours) == sorted(theirs)
    np.testing.assert_allclose([ours[s] for s in sorted(ours)],
                               [theirs[s] for s in sorted(theirs)], rtol=tol)
    assert_trees_close(final_params(workdir), final_params(reference), atol=tol)


def test_checkpoints_kept_and_summary(reference):
    steps = Checkpointer(os.path.join(reference, "checkpoints"), read_only=True).steps()
    assert steps == [4, 6]  # the latest 2 (every 2 steps); 6 is also the final
    train = losses(reference)
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    assert sorted(losses(reference, "eval")) == [0, 3, 6]
    # The same records as TensorBoard events (read back with tensorboardX's own event reader).
    assert tensorboard_scalars(os.path.join(reference, "tensorboard"), "train/loss") == [
        pytest.approx(train[s], rel=1e-6) for s in range(1, 7)]
    # A second run of a finished stage does nothing.
    again = runner.run(stage1(), reference, **quiet)
    assert again["status"] == "already finished"


def test_kill_9_then_rerun_equals_uninterrupted(reference, tmp_path):
    workdir = str(tmp_path / "killed")
    proc = start(workdir)
    wait_for_step(workdir, proc, 3)  # a checkpoint at 2 exists (or is being written)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert max(losses(workdir)) < 6
    rerun = subprocess.run(cli(workdir), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from step" in rerun.stdout
    assert_same_run(workdir, reference, tol=1e-6)


def test_sigterm_checkpoints_then_resume_equals_uninterrupted(reference, tmp_path):
    workdir = str(tmp_path / "preempted")
    proc = start(workdir)
    wait_for_step(workdir, proc, 1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    # Where it stops depends on how fast this machine is; the test holds for any step.
    stopped = max(losses(workdir))
    assert f"preempted at step {stopped}" in out
    assert Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).latest_step() \
        == stopped
    said = []
    summary = runner.run(stage1(), workdir, report=said.append)
    assert summary["status"] == "finished"
    assert any(line.startswith(f"stage1_foundation: resumed from step {stopped} ")
               for line in said), said
    assert_same_run(workdir, reference, tol=1e-6)


def test_resume_on_another_layout(reference, tmp_path):
    """The reference's step-4 checkpoint, written on data 2 x expert 2 x sequence 2 (8 devices),
    resumed on expert 4 (4 devices) for steps 5 and 6: always the same two steps on the other
    layout, so the test does not depend on timing. The layouts round their sums in different
    orders; here that leaves the parameters 6e-8 apart. (More steps there leave more: resumed
    from step 1, five steps on expert 4 left some experts 1.9e-4 apart, as AdamW's normalised
    update amplifies rounding in parameters with tiny gradients; see test_cpu_multiprocess.py.)"""
    workdir = str(tmp_path / "moved")
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    os.remove(os.path.join(workdir, "summary.json"))
    other = stage1("mesh.layout=expert", "mesh.axes=", "mesh.num_devices=4")
    said = []
    summary = runner.run(other, workdir, report=said.append)
    assert summary["status"] == "finished"
    assert any(line.startswith("stage1_foundation: resumed from step 4 ") for line in said), said
    assert_same_run(workdir, reference, tol=1e-6)


def test_resume_with_scan_layers_then_export(reference, tmp_path):
    """The reference's step-4 checkpoint (layer by layer) resumed with `scan_layers` for steps 5
    and 6: the state is stacked on restore, the run goes on as the reference did, and its
    step-6 checkpoint (stacked) exports to the tensors the same parameters give unstacked."""
    workdir = str(tmp_path / "scanned")
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    os.remove(os.path.join(workdir, "summary.json"))
    said = []
    summary = runner.run(stage1("model.scan_layers=True"), workdir, report=said.append)
    assert summary["status"] == "finished"
    assert any(line.startswith("stage1_foundation: resumed from step 4 ") for line in said), said
    stacked = final_params(workdir)
    assert sorted(stacked["layers"]) == ["layers_0", "layers_1"] and "layers_0" not in stacked
    config = experiment.model_config(stage1())
    ours, theirs = losses(workdir), losses(reference)
    np.testing.assert_allclose([ours[s] for s in range(1, 7)], [theirs[s] for s in range(1, 7)],
                               rtol=1e-6)
    assert_trees_close(unstack_layers(stacked, config), final_params(reference), atol=1e-6)

    out = str(tmp_path / "hf")
    hf_export.export(workdir, out, dtype="float32", max_shard_bytes=1 << 20)
    expected = to_hf_tensors(stacked, config)
    got = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".safetensors"):
            got.update(safetensors.numpy.load_file(os.path.join(out, name)))
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        np.testing.assert_array_equal(got[name], tensor, err_msg=name)


def _poison(at_step, vocab_size):
    def hook(step, batch):
        if step == at_step:  # a token id past the vocabulary: its embedding lookup gives NaN
            batch = dict(batch, tokens=batch["tokens"].copy())
            batch["tokens"][0, 5] = vocab_size
        return batch
    return hook


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    config = stage1("steps=3", "checkpoint.every=1", "checkpoint.keep=3", "nonfinite=skip")
    workdir = str(tmp_path)
    summary = runner.run(config, workdir, batch_hook=_poison(2, 4096), **quiet)
    assert summary["status"] == "finished" and summary["skipped"] == 1
    assert np.isnan(losses(workdir)[2]) and np.isfinite(losses(workdir)[3])
    # The skipped step left the parameters exactly as they were; the next one changed them.
    assert_trees_close(final_params(workdir, 2), final_params(workdir, 1), atol=0)
    after = final_params(workdir, 3)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))
    assert not np.array_equal(after["norm"]["weight"], final_params(workdir, 2)["norm"]["weight"])


def test_nonfinite_step_stops_with_last_good_checkpoint(tmp_path):
    config = stage1("steps=3", "checkpoint.every=1", "nonfinite=stop")
    workdir = str(tmp_path)
    with pytest.raises(runner.RunError) as e:
        runner.run(config, workdir, batch_hook=_poison(2, 4096), **quiet)
    root = os.path.join(workdir, "checkpoints")
    assert str(e.value) == (f"stage1_foundation: non-finite loss at step 2 (nonfinite='stop'); "
                            f"the last good checkpoint is step 1 in {root}")
    assert Checkpointer(root, read_only=True).steps() == [1]


def test_errors_before_compiling(reference, tmp_path):
    with pytest.raises(runner.RunError) as e:
        runner.check(stage1("init_from=/no/such/dir"), str(tmp_path))
    assert str(e.value) == "init_from /no/such/dir: no such file or directory"

    with pytest.raises(runner.RunError) as e:
        runner.check(stage1("seed=1"), reference)
    assert str(e.value) == (f"workdir {reference} holds checkpoints of another experiment "
                            "(stage1_foundation); differs in seed (0 there, 1 here). Use another "
                            "--workdir, or delete that one to start over")

    with pytest.raises(runner.RunError) as e:
        runner.check(stage1("model.vocab_size=1000"), str(tmp_path))
    assert str(e.value) == ("the tokenizer has 1490 tokens but the model's vocab_size is 1000; "
                            "set --config.model.vocab_size")

    with pytest.raises(runner.RunError) as e:
        runner.check(stage1("init_from=" + reference, "model.extra=num_experts=4"),
                     str(tmp_path))
    assert str(e.value) == (f"init_from {reference} is a different model: num_experts (8 there, "
                            "4 here)")

    # The command line: a misspelt key, one line, exit status 2.
    result = subprocess.run(cli(str(tmp_path), "optim.lr=1e-4"), cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown config key '--config.optim.lr': the experiment file's config "
        "(a1jax.experiment.base) has no such key")


def test_a_checkpoint_is_read_with_the_tokenizer_it_learned(reference, tmp_path, monkeypatch):
    """Checkpoints record their tokenizer.json's sha256; reading one with another tokenizer
    (data.tokenizer set to another, or a1jax's own retrained since) stops before anything runs."""
    digest = lambda d: hashlib.sha256((d / "tokenizer.json").read_bytes()).hexdigest()
    shipped, other = tok_lib.SHIPPED_TOKENIZER_DIR, tmp_path / "retrained"
    meta = Checkpointer(os.path.join(reference, "checkpoints"), read_only=True).meta()
    assert meta["tokenizer_sha256"] == digest(shipped) and tokenizer_dir(reference) is None
    shutil.copytree(shipped, other)  # the same tokens in other bytes: another digest
    (other / "tokenizer.json").write_text(json.dumps(json.loads(
        (shipped / "tokenizer.json").read_text())))
    mismatch = (f" was trained with another tokenizer than {{}} (tokenizer.json sha256 "
                f"{digest(shipped)[:12]} there, {digest(other)[:12]} here; a1jax's own is "
                "retrained when its synthetic data changes): ")
    with pytest.raises(tok_lib.TokenizerMismatch) as e:
        runner.check(stage1("init_from=" + reference, f"data.tokenizer={other}"),
                     str(tmp_path / "run"))
    assert str(e.value) == (f"init_from {reference}" + mismatch.format(other)
                            + "set data.tokenizer to the one it was trained with")

    monkeypatch.setattr(tok_lib, "SHIPPED_TOKENIZER_DIR", other)  # retrained after the run
    ships = mismatch.format("the one a1jax ships")
    with pytest.raises(tok_lib.TokenizerMismatch) as e:
        tokenizer_dir(reference)  # a1jax.eval's and a1jax.generate's
    assert str(e.value) == reference + ships + "pass the one it was trained with (--tokenizer)"
    with pytest.raises(tok_lib.TokenizerMismatch) as e:
        hf_export.export(reference, str(tmp_path / "hf"))
    assert str(e.value) == (f"checkpoint {os.path.join(reference, 'checkpoints', '6')}" + ships
                            + "pass the one it was trained with (--tokenizer)")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(tok_lib.TokenizerMismatch) as e:  # resuming the run
        runner.check(stage1("agent_eval.every=3", "agent_eval.n=1", "agent_eval.horizons=1",
                            "agent_eval.max_turn_tokens=48"), reference)
    assert str(e.value) == (f"the run in workdir {reference}" + ships + "set data.tokenizer to "
                            "the one it was trained with, or use another --workdir")
    # A recorded tokenizer directory since removed: named, rather than a1jax's own taken.
    from a1jax.convert import orbax_io
    gone = orbax_io.write_params_checkpoint(
        tmp_path / "moved", 0, {"w": np.zeros(2, np.float32)},
        {"tokenizer": str(tmp_path / "nowhere"), "tokenizer_sha256": digest(shipped)})
    with pytest.raises(tok_lib.TokenizerMismatch) as e:
        tokenizer_dir(str(gone))
    assert str(e.value) == (f"{gone} was trained with tokenizer {tmp_path / 'nowhere'}, which "
                            "is not there: pass it (--tokenizer)")


def test_score_reads_a_run_checkpoint(reference, tmp_path):
    from a1jax import score
    from a1jax.model import ModelConfig

    tokens_path, out = tmp_path / "tokens.json", tmp_path / "scores.npz"
    tokens_path.write_text("[[5, 17, 300, 2, 9, 4095]]")
    assert score.main(["--model", reference, "--tokens", str(tokens_path), "--out", str(out)]) == 0
    meta = Checkpointer(os.path.join(reference, "checkpoints"), read_only=True).meta()
    config = ModelConfig.from_json_dict(meta["model_config"])
    logits, _ = score.score(config, final_params(reference),
                            np.array([[5, 17, 300, 2, 9, 4095]], np.int32))
    np.testing.assert_array_equal(np.load(out)["logits"], logits)


def test_agent_eval_during_training_equals_the_eval_cli_on_the_checkpoint(reference, tmp_path):
    """The runner evaluates the training state's parameters in place, on the training mesh
    (data x expert x sequence); a1jax.eval on the saved checkpoint, on one device, decodes the
    same greedy episodes."""
    from a1jax import eval as evaluate
    from a1jax.train import metrics

    records = [r for r in metrics.read(reference) if r["kind"] == "agent_eval"]
    assert [r["step"] for r in records] == [3, 6]
    final = records[-1]
    assert set(final) == {"step", "kind", "success", "finished", "assistant_tokens",
                          "success/calculator/h1", "success/files/h1", "success/kb_search/h1"}
    assert evaluate.main(["--model", os.path.join(reference, "checkpoints"), "--greedy",
                          "--horizons", "1", "--n", "1", "--runs", "1", "--max-turns", "8",
                          "--max-turn-tokens", "48", "--max-context", "4096",
                          "--out", str(tmp_path)]) == 0
    import json
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert final["success"] == np.mean([r["avg@1"] for r in rows])
    assert final["assistant_tokens"] == np.mean([r["assistant_tokens"] for r in rows])
    assert final["finished"] == np.mean([r["finished"] for r in rows])
