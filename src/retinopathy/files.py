"""Writing outputs so that a crash, a kill or a second run never leaves half of one.

Files go to a temporary name in the same folder and are renamed over the
target (a rename within one filesystem is atomic). Output folders are built
under a temporary sibling name and swapped in only when complete.

A temporary's name says whose it is: ``.<target>.<host>-<pid>.<random>.tmp``
for a file, ``.<target>.tmp-<host>-<pid>-<random>`` for a folder. A process
killed mid-write (SIGKILL: no cleanup) leaves one behind; the next write of
the same target on the same host removes those whose process is gone. The
project's ``.dvcignore`` keeps them out of DVC's outputs meanwhile.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from retinopathy.errors import RetinopathyError


def public_mode(path: str | Path, folder: bool = False) -> None:
    """Give a temporary file or folder the mode a plain ``open``/``mkdir`` would have.

    ``tempfile`` makes its files 0600 and folders 0700; outputs shared with
    other users (a multi-node run on a shared filesystem) must follow the umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def _owner() -> str:
    """``<host>-<pid>``: who makes a temporary (read again by :func:`remove_stale_temporaries`)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Delete the temporaries of ``target`` left by processes of this host that no longer run.

    Returns:
        What was deleted.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    name = re.escape(target.name)
    pattern = re.compile(rf"\.{name}\.(?:(?P<host>.+)-(?P<pid>\d+)\.[^.]+\.tmp|"
                         rf"(?:tmp|old)-(?P<dhost>.+)-(?P<dpid>\d+)-[^-]+)")
    host, removed = socket.gethostname(), []
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match:
            continue
        owner_host = match["host"] or match["dhost"]
        pid = int(match["pid"] or match["dpid"])
        if owner_host != host or _alive(pid):
            continue  # another machine's, or still being written
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


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
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}.", suffix=".tmp")
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
    remove_stale_temporaries(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{_owner()}-", dir=out.parent))
    public_mode(staging, folder=True)
    try:
        yield staging
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{_owner()}-", dir=out.parent))
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


@contextmanager
def staged_files(folder: str | Path) -> Iterator[Path]:
    """Write files into a temporary folder; on success each replaces its namesake in ``folder``.

    For a stage that owns some files of a folder, not the folder (the report and
    the heat maps share ``plots/``). Each rename is atomic; when the block raises,
    nothing in ``folder`` changes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "staged"  # the name the temporaries are known by, for remove_stale_temporaries
    remove_stale_temporaries(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_owner()}-", dir=folder))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            public_mode(path)
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(folder: str | Path, what: str) -> None:
    """Make sure files can be created in ``folder`` (created if missing), by creating one.

    Raises:
        RetinopathyError: naming the folder, why, and what to fix, before any work is done.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=f".write-check.{_owner()}."):
            pass
    except OSError as error:
        raise RetinopathyError(
            f"{folder}: cannot write {what} there ({error.strerror}); make the folder writable "
            f"(e.g. `chmod u+w {folder}`) or run from a copy of the project you own"
        ) from None


@contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the ``with`` block, or fail at once.

    The lock is ``flock``'s: the kernel releases it when the process ends, even
    on SIGKILL, so a killed run never leaves a stale lock. The holder's host
    and pid are written into the file, so a second run can say who holds it.

    Raises:
        RetinopathyError: when another process holds the lock (naming it).
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RetinopathyError(
                f"{path}: {what} is already running ({holder}); wait for it to finish, or stop "
                "it, before starting another"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
