"""Opening a finished stage's checkpoints read-only prints nothing: Orbax's own warning for any
read-only manager (`Given directory is read only=DIR`) is not a problem a user must read."""

import logging

import orbax.checkpoint as ocp

from a1jax.train.checkpoint import Checkpointer


def _read_only_warnings(caplog):
    return [r for r in caplog.records if "Given directory is read only" in r.getMessage()]


def test_read_only_checkpointer_does_not_warn(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    # Orbax itself warns (so this test sees the line when it is printed)...
    ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False))
    assert len(_read_only_warnings(caplog)) == 1
    caplog.clear()
    # ...a1jax's reader does not, and the filter does not outlive it.
    filters = list(logging.getLogger("absl").filters)
    assert Checkpointer(str(tmp_path), read_only=True).steps() == []
    assert _read_only_warnings(caplog) == []
    assert logging.getLogger("absl").filters == filters
