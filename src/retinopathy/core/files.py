"""Writing outputs so that a crash, a kill or a second run never leaves half of one.

Files go to a temporary name in the same folder and are renamed over the
target (a rename within one filesystem is atomic). Output folders are built
under a temporary sibling name and swapped in only when complete. The several
files of one command's output change together or not at all
(:func:`write_together`, :func:`staged_files`): all are written first, then
renamed into place, and a failed rename puts back those already replaced.

A temporary's name says whose it is: ``.<target>.<host>-<pid>.<random>.tmp``
for a file, ``.<target>.tmp-<host>-<pid>-<random>`` for a folder. Its writer
holds an ``flock`` on it while it writes; the kernel drops that lock when the
writer ends, even on SIGKILL. A process killed mid-write leaves its temporary
behind; the next write of the same target removes it when nobody holds its
lock and either its process is gone (same host) or it has not changed for
:data:`STALE_AFTER` seconds (another host: a container restarted under a new
name). The project's ``.dvcignore`` and ``.gitignore`` keep them out of DVC's
outputs and ``git status`` meanwhile.

No command may destroy what it did not create. Before any work a command
checks its outputs (:func:`check_output_file`, :func:`check_output_folder`):
an output that is an input, a folder or a special file (a device, a pipe),
or an existing file or folder whose content the command does not recognise as
its own, is refused with the fix. A symbolic link is written through (its
target replaced atomically) unless its target is read-only, as DVC's
symlinked cache files are: then the link itself is replaced, as DVC expects.
A write that fails (a full disk, a file size limit) is a
:class:`~retinopathy.core.errors.RetinopathyError` that names the file and the cause.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from retinopathy.core.errors import RetinopathyError


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
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all
        return False
    except PermissionError:  # another user's process
        return True
    return True


STALE_AFTER = 3600.0  # seconds unchanged after which another host's unlocked temporary is stale


def _lock(fd: int, block: bool = True) -> bool:
    """``flock`` ``fd`` exclusively; False when another open file holds it (only with ``block=False``)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _hold(path: Path) -> int:
    """Open ``path`` (a file or a folder) and hold an exclusive ``flock`` on it; returns the descriptor."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    _lock(fd)
    return fd


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Delete the temporaries of ``target`` that no process is writing any more.

    A temporary is stale when nobody holds its ``flock`` (its writer has ended,
    however it ended) and either it is this host's and its process is gone, or
    it has not changed for :data:`STALE_AFTER` seconds (a process of another
    host, or of this host under an earlier name, whose pid means nothing here).

    Returns:
        What was deleted.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    name = re.escape(target.name)
    pattern = re.compile(
        rf"\.{name}\.(?:(?P<host>.+)-(?P<pid>\d+)\.[^.]+\.tmp|"
        rf"(?:tmp|old)-(?P<dhost>.+)-(?P<dpid>\d+)-[^-]+)"
    )
    host, removed = socket.gethostname(), []
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink():
            continue
        owner_host = match["host"] or match["dhost"]
        pid = int(match["pid"] or match["dpid"])
        try:  # O_NONBLOCK: a named pipe of that name must not hang us
            fd = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not (stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISDIR(os.fstat(fd).st_mode)):
            os.close(fd)
            continue  # not something we make
        try:
            if not _lock(fd, block=False):
                continue  # still being written
            idle = time.time() - os.fstat(fd).st_mtime
            if not ((owner_host == host and not _alive(pid)) or idle > STALE_AFTER):
                continue  # a live process of this host between creating and locking it, or too recent
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        finally:
            os.close(fd)
    return removed


# ------------------------------------------------------------------ what an output may be

NAME_MAX = 255  # bytes per file name on Linux's filesystems (ext4, XFS, Btrfs, tmpfs); pathconf's, if it says
PATH_MAX = 4096  # bytes per path, with its terminating NUL (Linux)
_PID_DIGITS = 7  # Linux's largest pid, 4194304: a later run's temporaries may carry one this long


def _name_limit(path: Path) -> int:
    """The file-name limit of the filesystem ``path`` would be on (that of its nearest existing folder)."""
    folder = Path(os.path.abspath(path)).parent
    while not os.path.isdir(folder) and folder != folder.parent:  # os.path: False, not an OSError
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def _shown(name: bytes | str, limit: int = 60) -> str:
    """A name or path for a message: its start and end when it is longer than ``limit`` characters."""
    text = os.fsdecode(name)
    return text if len(text) <= limit else f"{text[: limit // 2 - 2]}...{text[-(limit // 2 - 2) :]}"


def check_name_length(path: str | Path, temporaries: bool = True) -> None:
    """Refuse ``path`` when a name in it, or a temporary made beside it, is over the filesystem's limit.

    An output is written under a temporary name first (``.<name>.<host>-<pid>.<random>.tmp``, or
    ``.<name>.tmp-<host>-<pid>-<random>`` for a folder), some 30 bytes longer than its own; a name
    that fits alone may not fit then, and the write would fail with ``File name too long`` after
    the work. Called before anything is read or written, it makes that a clear error.

    Args:
        path: The output (a file or a folder).
        temporaries: Whether temporaries are made beside it (False: a folder only created).

    Raises:
        RetinopathyError: naming the path, the name's length, the limit, and the longest name that fits.
    """
    path = Path(path)
    limit = _name_limit(path)
    extra = len(f"..{socket.gethostname()}-{'0' * _PID_DIGITS}.{'x' * 8}.tmp".encode()) if temporaries else 0
    where = _shown(str(path), 120)
    for part in path.parts:
        name = os.fsencode(part)
        if len(name) > limit:
            raise RetinopathyError(
                f"{where}: the name {_shown(name)!r} is {len(name)} bytes, over this "
                f"filesystem's limit of {limit} bytes per file name; choose a shorter one"
            )
    name = os.fsencode(path.name)
    if len(name) + extra > limit:
        raise RetinopathyError(
            f"{where}: the name {_shown(name)!r} is {len(name)} bytes; it is written under a temporary "
            f"name {extra} bytes longer first (`.<name>.<host>-<pid>.<random>.tmp`), which is over this "
            f"filesystem's limit of {limit} bytes per file name. Choose a name of at most {limit - extra} "
            "bytes (for an output named after an input, rename that input)"
        )
    if len(os.fsencode(os.path.abspath(path))) + extra >= PATH_MAX:
        raise RetinopathyError(
            f"{where}: the path is over the limit of {PATH_MAX} bytes (with its temporary "
            "name); write to a shorter one"
        )


KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _special(path: Path) -> str | None:
    """What kind of special file ``path`` is (a device, a pipe, a socket), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for test, kind in KINDS if test(mode)), None)


def write_target(path: str | Path) -> Path:
    """The file a write of ``path`` must replace: ``path``, or the target of the link ``path`` is.

    A link is written through (its target replaced), so ``--out link`` updates
    the file the user linked to. A link whose target is read-only is replaced
    itself instead: DVC's cache files are read-only and DVC links outputs to
    them (``cache.type: symlink``); writing through would corrupt the cache.

    Raises:
        RetinopathyError: the path is a folder or a special file (a device, a pipe, a socket).
    """
    path = Path(path)
    check_name_length(path)  # first: even a stat of an over-long name fails with an OSError
    target = path
    if path.is_symlink():
        resolved = Path(os.path.realpath(path))
        read_only = resolved.exists() and not os.stat(resolved).st_mode & 0o222  # even for root
        target = path if read_only or ".dvc" in resolved.parts else resolved
    if target != path:
        check_name_length(target)  # the link's target is what is written, beside its own folder's files
    kind = _special(target)
    if kind:
        raise RetinopathyError(
            f"{path}: is {kind}, not a file; refusing to replace it. Pass the path "
            "of a regular file to write (an output is written as a new file and "
            "renamed into place)"
        )
    if target.is_dir():
        raise RetinopathyError(
            f"{path}: is a folder, not a file; pass the path of a file to write "
            "(one inside that folder, for example)"
        )
    return target


def _write_error(path: Path, error: OSError) -> RetinopathyError:
    """A failed write as the user needs it: the file, the cause, the fix."""
    fixes = {
        errno.ENOSPC: "free some space on that disk, or write elsewhere",
        errno.EDQUOT: "free some of your disk quota, or write elsewhere",
        errno.EFBIG: "the file size limit (`ulimit -f`) is too small: raise it, or write elsewhere",
        errno.EROFS: "the filesystem is read-only: write elsewhere",
    }
    fix = fixes.get(error.errno or 0, "check the folder's permissions and free space, or write elsewhere")
    return RetinopathyError(
        f"{path}: could not be written ({error.strerror or error}); {fix}. "
        "The previous file, if any, is unchanged"
    )


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` that replaces ``path`` only if the ``with`` block succeeds.

    On success the file is flushed and fsynced (so the rename never exposes
    unwritten data after a power cut), given the mode a plain ``open`` would
    give it, and renamed over ``path`` (over the target of a link ``path``:
    :func:`write_target`). When the block raises, the temporary file is
    deleted and ``path`` is left exactly as it was. The temporary is
    ``flock``-ed while it exists, so no other process takes it for stale.

    Args:
        path: The file to write; missing parent folders are created.
        mode: ``"w"`` (text, UTF-8) or ``"wb"`` (bytes).

    Yields:
        The open temporary file.

    Raises:
        RetinopathyError: ``path`` is a folder or a special file, or writing it failed
            (a full disk, a file size limit, no permission): naming it, the cause and the fix.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes with mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    target, fd, tmp = _temporary_beside(path)
    held = os.dup(fd)  # the lock lives as long as this descriptor: until after the rename
    try:
        _lock(held)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        public_mode(tmp)
        os.replace(tmp, target)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno in _WRITE_ERRNOS:
            raise _write_error(path, error) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(held)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _new_temporary(target: Path) -> tuple[int, str]:
    """A new empty temporary file beside ``target``, named as :func:`remove_stale_temporaries` knows."""
    return tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_owner()}.", suffix=".tmp")


def _temporary_beside(path: Path) -> tuple[Path, int, str]:
    """The file a write of ``path`` replaces (:func:`write_target`), and a new temporary beside it.

    Its folder is created, and the stale temporaries of earlier runs are removed first.

    Raises:
        RetinopathyError: ``path`` is a folder or a special file, or the temporary cannot be made.
    """
    target = write_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = _new_temporary(target)
    except OSError as error:
        raise _write_error(path, error) from None
    return target, fd, tmp


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through :func:`atomic_file`."""
    with atomic_file(path) as out:
        out.write(text)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP: what makes a spreadsheet read a formula


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_field(value: Any) -> str:
    r"""One CSV field as :mod:`csv` writes it (minimal quoting), made safe for text from users.

    Following OWASP's advice on CSV injection, text that starts with ``=``,
    ``+``, ``-``, ``@``, a tab or a carriage return and is not a number gets a
    leading ``'`` (a spreadsheet then shows it as text, not a formula); a field
    with a comma, a quote, a line feed or a bare carriage return is quoted
    (:mod:`csv` leaves a bare ``\r`` unquoted, which splits the row). Numbers,
    and numbers written as text (``-0.25``), are unchanged. A file name that
    is not valid UTF-8 keeps its bytes as ``\xNN`` escapes.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if isinstance(value, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a name from the filesystem: its undecodable bytes as \xNN
            raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else None
            text = (
                raw.decode("utf-8", "backslashreplace")
                if raw is not None
                else text.encode("utf-8", "backslashreplace").decode("utf-8")
            )
        if text.startswith(FORMULA_STARTS) and not _is_number(text):
            text = "'" + text
    if any(char in text for char in ',"\r\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def _only_escapes(text: str) -> bool:
    """Whether every surrogate in ``text`` is one of ``surrogateescape``'s (an undecodable byte)."""
    return all(not 0xD800 <= ord(char) <= 0xDFFF or 0xDC80 <= ord(char) <= 0xDCFF for char in text)


def csv_text(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    r"""A CSV file's text (``\n`` line ends): ``header`` and ``rows``, fields by :func:`csv_field`."""
    lines = [header, *rows]
    return "".join(",".join(csv_field(value) for value in row) + "\n" for row in lines)


def write_csv_atomic(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV file (:func:`csv_text`) through :func:`atomic_file`."""
    write_text_atomic(path, csv_text(header, rows))


def json_text(path: str | Path, data: dict[str, Any]) -> str:
    """``data`` as the indented JSON text of the file ``path``; never NaN or infinity, which JSON lacks.

    Raises:
        RetinopathyError: ``data`` holds a NaN or an infinite number (naming ``path``): a number
            that went wrong upstream must stop the command, not reach a file that readers refuse.
    """
    try:
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise RetinopathyError(
            f"{path}: not written: it would hold a NaN or infinite number, which no "
            "reader accepts; a computation before it diverged or overflowed (a run "
            "with a lower learning rate may not), or this is a bug to report"
        ) from None


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (:func:`json_text`) to ``path``, atomically."""
    write_text_atomic(path, json_text(path, data))


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------ whose is an existing output

Ours = Callable[[Path], bool]  # does this existing file (or folder) hold what the command writes?


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(size)
    except OSError:
        return b""


def starts_with(*prefixes: bytes) -> Ours:
    """A file is ours when it starts with one of ``prefixes`` (a header only we write)."""
    return lambda path: path.is_file() and _head(path).startswith(prefixes)


def csv_with(*columns: str) -> Ours:
    """A file is ours when its first line is a CSV header that starts with ``columns[0]`` and has them all."""

    def ours(path: Path) -> bool:
        header = _head(path).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace").split(",")
        return path.is_file() and header[0] == columns[0] and set(columns) <= set(header)

    return ours


def json_with(*keys: str) -> Ours:
    """A file is ours when it is a JSON object with all of ``keys``."""

    def ours(path: Path) -> bool:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # RecursionError: nested thousands of levels deep
            return False
        return isinstance(data, dict) and all(key in data for key in keys)

    return ours


PNG_SOFTWARE = "retinopathy"  # the PNG `Software` text of figures that must be told apart later


def png_ours(path: Path) -> bool:
    """A PNG whose ``Software`` text chunk says :data:`PNG_SOFTWARE`."""
    return _head(path, 1 << 16).find(b"tEXtSoftware\x00" + PNG_SOFTWARE.encode()) > 0


def holds_only(files: dict[str, Ours]) -> Ours:
    """A folder is ours when each entry is one of ``files`` and recognised as ours by its check."""

    def ours(folder: Path) -> bool:
        return all(entry.name in files and files[entry.name](entry) for entry in folder.iterdir())

    return ours


def _listing(folder: Path, count: int = 5) -> str:
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir())
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def real_paths(paths: Iterable[str | Path]) -> frozenset[str]:
    """``os.path.realpath`` of each of ``paths``: inputs to check many outputs against at once."""
    return frozenset(os.path.realpath(path) for path in paths)


def check_output_file(
    path: str | Path,
    command: str,
    ours: Ours,
    inputs: Iterable[str | Path] | frozenset[str] = (),
    writable: bool = True,
) -> None:
    """Before any work: ``path`` can be written and replaces nothing ``command`` did not write.

    Refused: an input of the command; a folder or a special file; an existing
    file that ``ours`` does not recognise; a folder where it cannot be created.

    Args:
        path: The output file.
        command: The command that writes it (for the message).
        ours: Recognises a file the command wrote earlier.
        inputs: What the command reads (or their :func:`real_paths`).
        writable: Also check that its folder takes new files (once per folder is enough).

    Raises:
        RetinopathyError: naming the path, what is wrong and the fix.
    """
    path = Path(path)
    target = write_target(path)
    reals = inputs if isinstance(inputs, frozenset) else real_paths(inputs)
    if os.path.realpath(target) in reals:
        raise RetinopathyError(
            f"{path}: is also an input of `retinopathy {command}`; writing it would "
            "replace that input. Pass another output path"
        )
    if target.exists() and not ours(target):
        raise RetinopathyError(
            f"{path}: exists and was not written by `retinopathy {command}`; refusing to replace it. "
            "Pass another output path, or move that file away first"
        )
    if writable:
        check_writable(target.parent, f"the output of `retinopathy {command}`")


def _folder_target(out: Path) -> Path:
    """``out`` as an absolute path, through a link to a folder (the folder is replaced, not the link)."""
    out = Path(os.path.abspath(out))  # `--out .` or `--out dir/` still has a name and a parent
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def check_output_folder(out: str | Path, command: str, ours: Ours | None) -> None:
    """Before any work: the folder ``out`` may be replaced by ``command``'s output.

    It may be absent, empty, or hold only what ``command`` writes (``ours``;
    None: only absent or empty). It must not be the current folder or hold it.

    Raises:
        RetinopathyError: naming the folder, what is in it and the fix.
    """
    check_name_length(out)  # before any stat: that of an over-long name fails with an OSError
    given, out = Path(out), _folder_target(Path(out))
    check_name_length(out)
    kind = _special(out)
    if kind or (out.exists() and not out.is_dir()) or (given.is_symlink() and not given.exists()):
        what = kind or ("a link to nothing" if given.is_symlink() and not given.exists() else "a file")
        raise RetinopathyError(
            f"{given}: is {what}, not a folder; pass another --out (a new or empty folder)"
        )
    cwd = Path(os.path.realpath(os.getcwd()))
    if Path(os.path.realpath(out)) in (cwd, *cwd.parents):
        raise RetinopathyError(
            f"{given}: is the current folder or holds it; `retinopathy {command}` "
            "replaces its output folder as a whole. Pass another --out (a new or "
            "empty folder)"
        )
    if out.is_dir() and any(out.iterdir()) and not (ours is not None and ours(out)):
        raise RetinopathyError(
            f"{given}: holds files that `retinopathy {command}` did not write ({_listing(out)}); "
            "refusing to replace the folder, which would delete them. Pass another --out (a new or "
            f"empty folder), or move {given} away first"
        )
    check_writable(out.parent, f"the output of `retinopathy {command}`")


@contextmanager
def _temporary_folder(target: Path, failed: Path) -> Iterator[Path]:
    """A new empty folder beside ``target``, locked while the block runs and deleted when it ends.

    The one prologue and epilogue of :func:`staged_folder`, :func:`draft_folder` and
    :func:`staged_files`: named ``.<target>.tmp-<host>-<pid>-<random>`` and ``flock``-ed, so the
    folder of a killed run is found and removed by the next write of ``target``
    (:func:`remove_stale_temporaries`), and never while its writer lives. A write in the block
    that fails for want of space, quota or permission to write is a
    :class:`~retinopathy.core.errors.RetinopathyError` naming ``failed``, the output.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_owner()}-", dir=target.parent))
    held = _hold(folder)
    try:
        yield folder
    except OSError as error:
        if error.errno in _WRITE_ERRNOS:
            raise _write_error(failed, error) from None
        raise
    finally:
        os.close(held)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def staged_folder(out: str | Path, command: str | None = None, ours: Ours | None = None) -> Iterator[Path]:
    """Build a folder that replaces ``out`` only if the ``with`` block succeeds.

    Yields an empty temporary folder beside ``out`` (beside the folder a link
    ``out`` points to). When the block returns, the previous ``out`` (if any)
    is renamed aside, the new folder renamed into place, and the old one
    deleted; when it raises, the temporary folder is deleted and ``out`` is
    left exactly as it was.

    Args:
        out: The folder to write.
        command: The command that writes it; given, :func:`check_output_folder`
            refuses (on entry and again before the swap) a folder ``ours`` does not recognise.
        ours: Recognises a folder the command wrote (None: only an absent or empty one).
    """
    if command is not None:
        check_output_folder(out, command, ours)
    out = _folder_target(Path(out))
    with _temporary_folder(out, out) as staging:
        public_mode(staging, folder=True)
        yield staging
        if command is not None:
            check_output_folder(out, command, ours)  # filled meanwhile?
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


@contextmanager
def draft_folder(target: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` for work towards it, deleted when the block ends.

    Named and locked as :func:`staged_folder`'s, so the draft of a killed run
    is removed by the next run that writes ``target``.
    """
    with _temporary_folder(write_target(target), Path(target)) as draft:
        yield draft


@contextmanager
def staged_files(
    folder: str | Path, command: str | None = None, ours: dict[str, Ours] | None = None
) -> Iterator[Path]:
    """Write files into a temporary folder; on success each replaces its namesake in ``folder``.

    For a stage that owns some files of a folder, not the folder (the report and
    the heat maps share ``plots/``). The files change together, or none does
    (:func:`write_together`); when the block raises, nothing in ``folder`` changes.
    A namesake that is a link is written through (:func:`write_target`).

    Args:
        folder: Where the files go.
        command: The command that writes them; given, an existing namesake that
            ``ours[name]`` does not recognise (or that ``ours`` does not name) is
            refused before the block runs, and again before anything is replaced.
        ours: Recognises each file the command writes, by name.
    """
    folder = Path(folder)
    # "staged": the name the temporaries are known by, for remove_stale_temporaries
    with _temporary_folder(folder / "staged", folder) as staging:
        yield staging
        written = sorted(staging.iterdir())
        if command is not None:
            for path in written:
                check_output_file(folder / path.name, command, (ours or {}).get(path.name, lambda _: False))
        write_together({folder / path.name: path.read_bytes() for path in written})


# ------------------------------------------------------------------ several files as one output


@dataclass
class _Swap:
    """One file of a set that changes together: its new content, complete, and the file it replaces.

    Attributes:
        path: The file as the command names it (for messages).
        target: What is replaced (:func:`write_target` of ``path``).
        staged: The new content, written and fsynced, on ``target``'s filesystem.
        previous: The replaced file, kept under a temporary name until the whole set is in place.
    """

    path: Path
    target: Path
    staged: Path
    previous: Path | None = None


def _stage(path: Path, content: str | bytes, locks: list[int]) -> _Swap:
    """Write ``content`` to a temporary beside ``path``'s target (locked: ``locks`` gets the descriptor)."""
    target, fd, tmp = _temporary_beside(path)
    locks.append(os.dup(fd))
    _lock(locks[-1])
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(content.encode("utf-8") if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        public_mode(tmp)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, error) from None
    return _Swap(path, target, Path(tmp))


def _keep_previous(swap: _Swap, locks: list[int]) -> None:
    """Keep the file that ``swap`` replaces under a temporary name: a hard link (no copy), else a copy."""
    if not os.path.lexists(swap.target):
        return
    kept = swap.target.parent / f".{swap.target.name}.{_owner()}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(swap.target, kept, follow_symlinks=False)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(swap.target, kept)
    swap.previous = kept
    try:  # locked like any temporary, so that no other process takes it for a killed run's
        locks.append(os.open(kept, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)))
        _lock(locks[-1])
    except OSError:
        pass  # a kept link (DVC's symlink to its cache): remove_stale_temporaries never removes links


def _publish(swaps: list[_Swap], locks: list[int]) -> None:
    """Put every staged file in place, or none: a failure restores the files already replaced.

    Raises:
        RetinopathyError: a file could not be kept or replaced (naming it, the cause and the fix).
    """
    try:
        for swap in swaps:
            _keep_previous(swap, locks)
    except OSError as error:  # nothing replaced yet
        for swap in swaps:
            if swap.previous is not None:
                swap.previous.unlink(missing_ok=True)
        raise _write_error(swap.path, error) from None
    done: list[_Swap] = []
    try:
        for swap in swaps:
            os.replace(swap.staged, swap.target)
            done.append(swap)
    except OSError as error:
        lost = []
        for replaced in reversed(done):
            try:
                if replaced.previous is not None:
                    os.replace(replaced.previous, replaced.target)
                else:  # it did not exist before
                    replaced.target.unlink(missing_ok=True)
            except OSError:
                lost.append(f"{replaced.path} (its previous content is in {replaced.previous})")
        for swap in swaps[len(done) :]:
            if swap.previous is not None:
                swap.previous.unlink(missing_ok=True)
        restored = (
            "and so are the other outputs of the command"
            if not lost
            else f"but {len(lost)} other output(s) could not be put back: {'; '.join(lost)}"
        )
        raise RetinopathyError(f"{_write_error(swap.path, error)}, {restored}") from None
    for swap in swaps:
        if swap.previous is not None:
            swap.previous.unlink(missing_ok=True)


@contextmanager
def _together() -> Iterator[tuple[list[_Swap], list[int]]]:
    """The swaps of one set and the descriptors of their locks; unused temporaries removed, locks dropped."""
    swaps: list[_Swap] = []
    locks: list[int] = []
    try:
        yield swaps, locks
    finally:
        for swap in swaps:
            swap.staged.unlink(missing_ok=True)  # gone once it replaced its target
        for fd in locks:
            os.close(fd)


def write_together(contents: Mapping[Path, str | bytes]) -> None:
    """Write the files of one command's output so that they change together or not at all.

    Every file's content is first written and fsynced to a temporary beside it:
    a full disk stops the command here, with nothing changed. Then each file
    is replaced by a rename, its previous content kept (a hard link) until the
    whole set is in place; a rename that fails puts the files already replaced
    back as they were (and removes those that did not exist). Only a kill
    during the renames, a window of microseconds, can leave some files new and
    some old; each of them is whole either way.

    Args:
        contents: Each file (text is written as UTF-8) and its new content, in the order to replace them.

    Raises:
        RetinopathyError: a file is a folder or a special file, or writing failed; naming the file,
            the cause and the fix, with every file as it was.
    """
    with _together() as (swaps, locks):
        for path, content in contents.items():
            swaps.append(_stage(Path(path), content, locks))
        _publish(swaps, locks)


def check_writable(folder: str | Path, what: str) -> None:
    """Make sure files can be created in ``folder`` (created if missing), by creating one.

    Raises:
        RetinopathyError: naming the folder, why, and what to fix, before any work is done.
    """
    folder = Path(folder)
    check_name_length(folder, temporaries=False)
    if folder.exists() and not folder.is_dir():
        kind = _special(folder) or "a file"
        raise RetinopathyError(
            f"{folder}: cannot write {what} there: it is {kind}, not a folder; pass "
            "another folder, or move that file away"
        )
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


def rescue_text(path: str | Path, text: str, what: str, error: RetinopathyError) -> RetinopathyError:
    """Keep ``text``, which could not be written to ``path``, and say where it went.

    It goes to a new file in the system's temporary folder (often another
    disk); when even that fails, to standard output.

    Returns:
        The error to raise: ``error``'s message, then where ``what`` is now.
    """
    name = Path(path).name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        fd, kept = tempfile.mkstemp(prefix="retinopathy-kept-", suffix=f"-{name}")
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        public_mode(kept)
        where = f"they were kept in {kept}"
    except OSError:
        sys.stdout.write(text)
        sys.stdout.flush()
        where = "they were printed above, on standard output"
    return RetinopathyError(f"{error}. The {what} are not lost: {where}")
