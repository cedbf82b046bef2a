"""Writing outputs so that a crash or a kill never leaves half of one.

Files go to a temporary name in the same folder and are renamed over the
target (a rename within one filesystem is atomic). Output folders are built
under a temporary sibling name and swapped in only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def public_mode(path: str | Path, folder: bool = False) -> None:
    """Give a temporary file or folder the mode a plain ``open``/``mkdir`` would have.

    ``tempfile`` makes its files 0600 and folders 0700; outputs shared with
    other users (a multi-node run on a shared filesystem) must follow the umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False, encoding="utf-8") as out:
        out.write(text)
    public_mode(out.name)
    os.replace(out.name, path)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Build a folder that replaces ``out`` only if the ``with`` block succeeds.

    Yields an empty temporary folder beside ``out``. When the block returns, the
    previous ``out`` (if any) is renamed aside, the new folder renamed into
    place, and the old one deleted; when it raises, the temporary folder is
    deleted and ``out`` is left exactly as it was.
    """
    out = Path(os.path.abspath(out))  # `--out .` or `--out dir/` still has a name and a parent
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    public_mode(staging, folder=True)
    try:
        yield staging
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, aside / out.name)
            try:
                os.replace(staging, out)
            except OSError:
                os.replace(aside / out.name, out)  # put the previous one back rather than none
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
