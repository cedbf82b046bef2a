"""The readers of the public sets, by format: one per ``contract.EXTERNAL_FORMATS``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.external import aptos2019, ddr, deepdrid, eyepacs, idrid, messidor2
from retinopathy.data.external.listing import Listing

# One per format of contract.EXTERNAL_FORMATS, in its order (a test checks it).
READERS: dict[str, Callable[[Path], Listing]] = {
    "aptos2019": aptos2019.read,
    "messidor2": messidor2.read,
    "idrid": idrid.read,
    "ddr": ddr.read,
    "deepdrid": deepdrid.read,
    "eyepacs": eyepacs.read,
}


def reader_of(format: str) -> Callable[[Path], Listing]:
    """The reader of ``format``.

    Raises:
        RetinopathyError: an unknown format, naming the known ones (and the closest).
    """
    if format not in READERS:
        close = difflib.get_close_matches(format.lower(), READERS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise RetinopathyError(f"unknown format {format!r}{hint}; import-external reads {', '.join(READERS)}")
    return READERS[format]
