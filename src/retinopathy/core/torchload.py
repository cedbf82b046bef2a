"""Reading torch files safely: tensors and plain containers only, never code, and never advice to run it.

Every torch file the project reads (a checkpoint, ``--checkpoint``; a blend, ``--blend``;
``train.weights``) goes through :func:`load_tensors`, which loads with
``weights_only=True``. When that refuses a pickle, torch's own message advises
"Re-running torch.load with weights_only set to False", which would run whatever
code the file holds; that advice is never passed on. The message says instead that
the file is not what the project wrote, names it, and stops.

torch is imported inside the function: this module is light.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import warnings
from pathlib import Path
from typing import Any

from retinopathy.core.errors import RetinopathyError

# How torch's weights-only unpickler names what it refused: "Unsupported global: GLOBAL builtins.print ...".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]{1,100})")
_REASON_CHARS = 200  # of torch's message on a damaged file


def load_tensors(
    path: str | Path, what: str, fix: str, error: type[RetinopathyError] = RetinopathyError
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; every failure an ``error`` naming it.

    Args:
        path: The file.
        what: What it should be, as the message says it is not: e.g. "a readable checkpoint
            written by `retinopathy train`", "a plain state dict of tensors".
        fix: What the user should do instead (never: load it unsafely).
        error: The exception class to raise (a :class:`RetinopathyError`).

    Returns:
        What the file holds: tensors in dicts, lists and plain values.

    Raises:
        error: the file is missing or unreadable; it holds Python objects that a safe load
            refuses (a pickle of code or of classes other than tensors), which is not loaded;
            or it is not a torch file, truncated or damaged.
    """
    import torch  # here: importing this module must stay cheap

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: not found; {fix}") from None
    except OSError as failure:
        raise error(f"{path}: cannot read it ({failure.strerror}); {fix}") from None
    if not stat.S_ISREG(mode):  # a named pipe would block torch's read forever
        raise error(f"{path}: not a regular file, so not {what}; {fix}")
    try:
        with warnings.catch_warnings():
            # torch warns about foreign pickles (e.g. "Detected pickle protocol 4") before it refuses
            # them; the refusal below says all there is to say.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:  # removed since the check
        raise error(f"{path}: not found; {fix}") from None
    except Exception as failure:  # torch raises many types for a truncated or foreign file
        text = str(failure)
        if isinstance(failure, pickle.UnpicklingError) or "weights_only" in text:
            raise error(refused_message(path, what, fix, text)) from None
        lines = text.strip().splitlines()
        reason = lines[0][:_REASON_CHARS] if lines else type(failure).__name__
        raise error(f"{path}: not {what}: truncated, damaged or not a torch file ({reason}); {fix}") from None


def refused_message(path: Path, what: str, fix: str, torch_message: str = "") -> str:
    """The message for a file whose pickle a safe load refused: it is not ``what``, and it was not loaded.

    Only the name of the object torch refused is taken from ``torch_message``; its advice to
    load with ``weights_only=False`` (which would run the file's code) is dropped.
    """
    found = _REFUSED_GLOBAL.search(torch_message)
    holds = f"Python objects ({found[1]})" if found else "Python objects"
    return (
        f"{path}: not {what}: it holds {holds} that only an unsafe load would rebuild, and that load "
        f"could run any code in the file, so it was not loaded; {fix}"
    )
