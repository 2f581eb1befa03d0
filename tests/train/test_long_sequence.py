"""Issue 4's end-to-end check: a 32,768-token packed row of synthetic trajectories trains on the
8-device CPU mesh with the time axis split 8 ways (context-parallel attention and DeltaNet)."""

import pytest

from a1jax.train import runner
from tests.train.runner_helpers import losses, stage1


@pytest.mark.slow
def test_32k_packed_row_trains_on_sequence_8(tmp_path):
    config = stage1("mesh.layout=sequence", "mesh.axes=", "seq_len=32768", "batch_size=1",
                    "steps=3", "eval_every=3", "model.moe_dispatch=dropless",
                    "optim.learning_rate=3e-3", "checkpoint.every=3")
    plan = runner.check(config, str(tmp_path))
    assert plan.spec.axes == {"data": 1, "expert": 1, "sequence": 8}
    summary = runner.run(config, str(tmp_path), report=lambda _: None)
    assert summary["status"] == "finished" and summary["tokens"] == 3 * 32768
    train, evals = losses(str(tmp_path)), losses(str(tmp_path), "eval")
    assert train[3] < train[1] and evals[3] < evals[0] - 0.3
