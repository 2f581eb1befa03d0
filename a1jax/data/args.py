"""Argument parsing for the data commands: a usage mistake is one `error: ...` line, exit 2,
like every other user error (`a1jax.cli.run`)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one `error: ...` line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
