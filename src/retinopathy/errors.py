"""The one exception type users see: a message that names the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path


class RetinopathyError(Exception):
    """An error in the user's input or environment, reported without a traceback.

    The message should say where (file and line when there is one), what is
    wrong, and how to fix it. The CLI prints it and exits with status 2.
    """


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as ``path:line`` (or just ``path``) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
