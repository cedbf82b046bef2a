"""The one exception type users see: a message that names the file, the line and the fix."""

from __future__ import annotations

import sys
from pathlib import Path


class RetinopathyError(Exception):
    """An error in the user's input or environment, reported without a traceback.

    The message should say where (file and line when there is one), what is
    wrong, and how to fix it. The CLI prints it and exits with status 2.
    """


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as ``path:line`` (or just ``path``) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr: every warning goes there, results go to stdout."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """Print a notice (what a command decided and why) on stderr, apart from its results."""
    print(message, file=sys.stderr, flush=True)
