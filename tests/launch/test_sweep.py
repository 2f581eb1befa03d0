"""a1jax.sweep: a layouts file expands into one train command per point, each parsing."""

import os
import subprocess
import sys

import pytest

from a1jax import sweep
from a1jax.errors import A1Error

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABLATE = os.path.join(REPO, "experiments", "layouts", "ablate_35b.py")


def test_layouts_file_expands_to_train_commands(tmp_path):
    cmds = sweep.commands(f"{ABLATE}:model=agents_a1_35b", str(tmp_path),
                          extra=["--config.steps=5"])
    layouts = [c[c.index("--workdir") + 2].split("=", 1)[1] for c in cmds]
    assert layouts == ["fsdp", "expert", "expert_sequence", "sequence", "data_expert_sequence"]
    for c in cmds:
        assert c[1:3] == ["-m", "a1jax.train"] and c[-1] == "--config.steps=5"
        assert c[c.index("--workdir") + 1].startswith(str(tmp_path) + "/mesh.layout=")
    script = sweep.commands(f"{ABLATE}:model=tiny", str(tmp_path), launcher="launch/gpu/node.sh")
    assert script[0][:2] == ["launch/gpu/node.sh", f"{ABLATE}:model=tiny"]


def test_bad_sweeps_fail_before_running(tmp_path):
    with pytest.raises(A1Error, match="unknown config key 'optim.lr'"):
        sweep.commands(f"{ABLATE}:model=tiny", str(tmp_path), extra=["--config.optim.lr=1"])
    stage = os.path.join(REPO, "experiments", "curriculum", "stage1_foundation.py")
    result = subprocess.run([sys.executable, "-m", "a1jax.sweep", "--config", stage,
                             "--workdir", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "has no sweep()" in result.stderr
