"""Writing outputs so that a crash or a kill never leaves half of one.

Files go to a temporary name in the same folder and are renamed over the
target (a rename within one filesystem is atomic). Output folders are built
under a temporary sibling name and swapped in only when complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def public_mode(path: str | Path, folder: bool = False) -> None:
    """Give a temporary file or folder the mode a plain ``open``/``mkdir`` would have.

    ``tempfile`` makes its files 0600 and folders 0700; outputs shared with
    other users (a multi-node run on a shared filesystem) must follow the umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` that replaces ``path`` only if the ``with`` block succeeds.

    On success the file is flushed and fsynced (so the rename never exposes
    unwritten data after a power cut), given the mode a plain ``open`` would
    give it, and renamed over ``path``. When the block raises, the temporary
    file is deleted and ``path`` is left exactly as it was.

    Args:
        path: The file to write; missing parent folders are created.
        mode: ``"w"`` (text, UTF-8) or ``"wb"`` (bytes).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes with mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through :func:`atomic_file`."""
    with atomic_file(path) as out:
        out.write(text)


def write_csv_atomic(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV file (``\\n`` line ends) with ``header`` and ``rows`` through :func:`atomic_file`."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
