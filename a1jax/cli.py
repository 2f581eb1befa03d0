"""What every a1jax command shares: user errors become one line on stderr and exit status 2."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Sequence

from a1jax.errors import A1Error


def run(main: Callable[[Sequence[str] | None], int | None],
        argv: Sequence[str] | None = None) -> None:
    """Runs `main(argv)` and exits with its status; an A1Error is printed as `error: ...`, without
    a traceback (a traceback is for bugs in a1jax, not for a wrong path or a bad token id)."""
    try:
        status = main(argv)
    except A1Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def write_json(path: str, value: Any, indent: int | None = 1) -> None:
    """`value` as JSON at `path`, whole or not at all: written beside it and renamed, so a kill
    mid-write leaves the previous file (or none), never half of one."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent)
    os.replace(path + ".tmp", path)


def read_json(path: str) -> Any:
    """A JSON file's value; a missing file or invalid JSON is an A1Error naming the path."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise A1Error(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise A1Error(f"{path}: invalid JSON: {e}") from None
