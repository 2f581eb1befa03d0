"""Shared by the runner tests: the stage 1 smoke config, and running the CLI in a subprocess."""

import os
import subprocess
import sys
import time

import numpy as np

from a1jax import curriculum

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGE1 = os.path.join(REPO, "experiments", "curriculum", "stage1_foundation.py")
# Six steps of stage 1's smoke config, a checkpoint every two, evals at 3 and 6.
SETS = ("steps=6", "checkpoint.every=2", "eval_every=3")


def stage1(*sets: str):
    config = curriculum.load_experiment(STAGE1, "model=tiny,smoke=True")
    for assignment in SETS + sets:
        curriculum.override(config, assignment)
    return config


def cli(workdir: str, *sets: str) -> list[str]:
    return ([sys.executable, "-m", "a1jax.train", "--config", f"{STAGE1}:model=tiny,smoke=True",
             "--workdir", workdir] + [f"--config.{s}" for s in SETS + sets])


def start(workdir: str, *sets: str) -> subprocess.Popen:
    return subprocess.Popen(cli(workdir, *sets), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_step(workdir: str, proc: subprocess.Popen, step: int, timeout: float = 600) -> None:
    """Until metrics.jsonl records train step `step` (the process must still be running)."""
    from a1jax.train import metrics
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r["kind"] == "train" and r["step"] >= step for r in metrics.read(workdir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


def losses(workdir: str, kind: str = "train") -> dict[int, float]:
    from a1jax.train import metrics
    return {r["step"]: r["loss"] for r in metrics.read(workdir) if r["kind"] == kind}


def final_params(workdir: str, step: int | None = None) -> dict:
    import jax
    from a1jax.train.checkpoint import Checkpointer
    reader = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    return jax.tree.map(np.asarray, reader.restore_params(step=step))


def assert_trees_close(a, b, atol: float, outlier_share: float = 0.0,
                       outlier_atol: float = 0.0) -> None:
    """Every leaf within `atol`, but for at most `outlier_share` of each leaf's elements within
    `outlier_atol` (the few rows AdamW amplifies; a lost shard or a wrong gradient moves far
    more of a tensor)."""
    import jax
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
        where = jax.tree_util.keystr(path)
        off = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)) > atol
        if 0 < off.mean() <= outlier_share:
            np.testing.assert_allclose(x, y, rtol=0, atol=outlier_atol, err_msg=where)
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=where)


def tensorboard_scalars(directory: str, tag: str) -> list[float]:
    """The values logged under `tag` in the event files of `directory`, in order. Event files
    are TFRecords (length, crc, payload, crc) of Event protos; tensorboardX ships the proto."""
    import glob
    import struct

    from tensorboardX.proto import event_pb2
    values = []
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            values += [v.simple_value for v in event.summary.value if v.tag == tag]
    return values
