"""The absl flags every experiment CLI shares: `--config FILE[:args]` (ml_collections'
config_flags, with `--config.KEY=VALUE` overrides) and one-line errors for bad flags."""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from a1jax.errors import A1Error


def config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":")[0]
    return None


def add_experiments_to_path(argv: Sequence[str]) -> None:
    """Experiment files import their siblings as `experiments.<module>`: put the directory holding
    the file's `experiments` package on sys.path, wherever the command runs from."""
    path = config_path(argv)
    if not path:
        return
    here = os.path.dirname(os.path.abspath(path))
    while here != os.path.dirname(here):
        if os.path.basename(here) == "experiments":
            parent = os.path.dirname(here)
            if parent not in sys.path:
                sys.path.insert(0, parent)
            return
        here = os.path.dirname(here)


def define_config(name: str = "config"):
    return config_flags.DEFINE_config_file(
        name, None, "experiment file, with arguments after a colon: FILE.py:model=tiny,smoke=True",
        lock_config=True)


def _parse(argv: list[str]) -> list[str]:
    path = config_path(argv)
    if path and not os.path.isfile(path):
        _fail(f"--config: no experiment file {path}")
    try:
        return flags.FLAGS(argv)
    except (flags.Error, A1Error, KeyError, AttributeError, ValueError, TypeError) as e:
        # config_flags reports a bad file, a misspelt key or a wrongly typed value through these;
        # one line says which, without a traceback or the whole usage text.
        cause = e.__cause__ or e
        if isinstance(cause, (KeyError, AttributeError)):
            key = str(cause).strip("'\"")
            bad = [a.split("=")[0] for a in argv if a.startswith("--config.")
                   and a.split("=")[0].split(".")[-1] == key]
            _fail(f"unknown config key {bad[0] if bad else key!r}: the experiment file's "
                  "config (a1jax.experiment.base) has no such key")
        message = str(cause).strip().strip('"')
        if "Traceback" in message:  # an exception inside the experiment file: its last line
            last = message.splitlines()[-1]
            name, sep, text = last.partition(": ")
            message = f"{config_path(argv)}: {text if sep and '.' in name else last}"
        _fail(message)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[list[str]], None]) -> None:
    app.run(main, flags_parser=_parse)
