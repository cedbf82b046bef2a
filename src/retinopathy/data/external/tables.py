"""Reading the label tables of the public sets: CSVs with their quirks, every row with its line.

The sets' files come from spreadsheets and several operating systems, so what
is harmless is accepted and noted (a UTF-8 BOM, CRLF line ends, spaces around
a header or a value, empty columns after the last header, blank rows); what
would change a label is an error naming the file and the line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retinopathy.core.errors import RetinopathyError, where
from retinopathy.data.external.listing import missing_file
from retinopathy.data.labels import utf8_text


@dataclass(frozen=True)
class Row:
    """One data row: its 1-based line and its values by (stripped) column name."""

    line: int
    values: dict[str, str]

    def __getitem__(self, column: str) -> str:
        return self.values[column]


@dataclass(frozen=True)
class Table:
    """A label table: its path, its rows and what was normalised."""

    path: Path
    rows: list[Row]
    notes: list[str]

    def at(self, row: Row) -> str:
        """``path:line`` of ``row``, for messages."""
        return where(self.path, row.line)


def _text(path: Path, notes: list[str]) -> str:
    text = utf8_text(path, notes, "save the file as UTF-8 (or copy it again from the set)")
    if "\r\n" in text:
        notes.append(f"{path.name}: CRLF line endings")
    return text


def read_table(path: Path, columns: Sequence[str], what: str, fix: str, delimiter: str = ",") -> Table:
    """Read a label table with a header row that has (at least) ``columns``.

    Args:
        path: The file.
        columns: The columns needed, as the set spells them (compared after stripping spaces).
        what: What the file is, for the message when it is missing.
        fix: How to get it, for the same message.
        delimiter: The field separator.

    Raises:
        RetinopathyError: a missing file, text that is not UTF-8, a header without ``columns``
            (or with an empty or repeated name), or a row with values beyond the header.
    """
    if not path.is_file():
        raise missing_file(what, path, fix)
    notes: list[str] = []
    reader = csv.reader(io.StringIO(_text(path, notes), newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    rows: list[Row] = []
    blank = 0
    for fields in reader:
        line = reader.line_num
        values = [value.strip() for value in fields]
        if not any(values):
            blank += 1
            continue
        if header is None:
            header, header_line = list(values), line
            while header and not header[-1]:
                header.pop()  # a spreadsheet's empty columns after the last named one
            if len(header) < len(values):
                notes.append(
                    f"{path.name}: {len(values) - len(header)} empty column(s) after the header's "
                    "last name ignored"
                )
            if any(raw != raw.strip() for raw in fields):
                notes.append(f"{path.name}: spaces around the header's names ignored")
            if "" in header or len(set(header)) != len(header):
                raise RetinopathyError(
                    f"{where(path, line)}: the header {fields!r} has an empty or repeated "
                    "column name; use the file as the set ships it"
                )
            absent = [name for name in columns if name not in header]
            if absent:
                raise RetinopathyError(
                    f"{where(path, line)}: expected the column(s) {', '.join(map(repr, absent))} in the "
                    f"header, found {', '.join(map(repr, header))}; is this the {what}?"
                )
            continue
        extra = values[len(header) :]
        if any(extra):
            raise RetinopathyError(
                f"{where(path, line)}: {len(values)} values but the header (line "
                f"{header_line}) names {len(header)} columns; fix or delete the row"
            )
        if len(values) < len(header):
            raise RetinopathyError(
                f"{where(path, line)}: {len(values)} value(s) but the header (line "
                f"{header_line}) names {len(header)} columns; fix or delete the row"
            )
        rows.append(Row(line, dict(zip(header, values[: len(header)], strict=True))))
    if header is None:
        raise RetinopathyError(
            f"{path}: empty; expected the {what} with the header {delimiter.join(columns)}"
        )
    if blank:
        notes.append(f"{path.name}: {blank} blank row(s) ignored")
    return Table(path, rows, notes)


def check_unique(table: Table, column: str) -> None:
    """Refuse a value of ``column`` listed twice, naming both lines.

    Raises:
        RetinopathyError: the duplicated id, with both ``file:line``.
    """
    seen: dict[str, int] = {}
    for row in table.rows:
        value = row[column]
        if value in seen:
            raise RetinopathyError(
                f"{table.at(row)}: {column} {value!r} is listed twice, also at line "
                f"{seen[value]}; delete one of the two rows"
            )
        seen[value] = row.line


def choice(table: Table, row: Row, column: str, allowed: Sequence[str]) -> str:
    """The value of ``column`` in ``row``, which must be one of ``allowed``.

    Raises:
        RetinopathyError: naming the file, the line, the value and what is allowed.
    """
    value = row[column]
    if value not in allowed:
        shown = value if len(value) <= 40 else f"{value[:40]}... ({len(value)} characters)"
        raise RetinopathyError(
            f"{table.at(row)}: {column} {shown!r} is not one of "
            f"{', '.join(repr(a) for a in allowed)}; fix the value"
        )
    return value
