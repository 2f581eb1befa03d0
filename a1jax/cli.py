"""What every a1jax command shares: user errors become one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

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
