"""Text from outside the code, rendered safely: in Markdown (report.md, compare.md) and in figures.

Names are refused where they are first read (:data:`~retinopathy.data.labels.IMAGE_NAME`),
but a report also shows what no name rule covers: experiment names, param values,
folders, the reasons of a skipped arm. So everything that is not the code's own text
goes through these helpers, as defence in depth:

- :func:`md_text` for Markdown text and table cells: every character that Markdown,
  GitHub's math or inline HTML give a meaning (``|`` ends a table cell, ``<!--`` hides
  the rest of the page, backticks open code, ``$...$`` is math) is backslash-escaped,
  and a line break becomes a space (it would end a table row).
- :func:`md_prose` for the code's own sentences that carry such text (a skipped
  arm's reason, with a user's path in it): what breaks a page or a table is escaped,
  the sentence's own `code spans` are kept.
- :func:`md_code` for a `code span` that no backtick inside can close early.
- :func:`plain_text` around every figure: matplotlib then draws every title, label
  and legend as the characters it is given (no mathtext, no LaTeX), so ``$x$`` or
  ``$\\frac`` in a name is text, not a crash.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import Any

# Markdown's (CommonMark + GitHub) active characters: backslash, code, emphasis and
# strike-through, links and images, inline HTML and entities, table cells, math.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>&|$~])")
# What breaks a page or a table, as opposed to styling: HTML, entities, cells, math.
_BREAKING = re.compile(r"([\\<>&|$])")
# Line breaks and other control characters: a table row or a list item is one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def _one_line(value: Any) -> str:
    return _CONTROL.sub(" ", str(value))


def md_text(value: Any) -> str:
    """``value`` as literal Markdown text, safe in a table cell: every active character escaped.

    ``a|b <!-- $y$`` becomes ``a\\|b \\<!-- \\$y\\$``.
    """
    return _MARKDOWN.sub(r"\\\1", _one_line(value))


def md_prose(value: Any) -> str:
    """The code's own Markdown sentence ``value`` carrying outside text: HTML, ``|``, ``$`` and line
    breaks escaped; its `code spans` and emphasis kept."""
    return _BREAKING.sub(r"\\\1", _one_line(value))


def md_code(value: Any) -> str:
    """``value`` as a Markdown code span that nothing in it can end early.

    The fence is one backtick longer than the longest run inside. A value with ``|`` is
    written as :func:`md_text` instead: in a table GitHub ends the cell at ``|`` even in
    code, and its escape ``\\|`` would show as such outside one.
    """
    text = _one_line(value)
    if "|" in text or not text.strip():
        return md_text(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plain_text() -> AbstractContextManager[Any]:
    """A matplotlib rc context in which every text object is drawn as given: no mathtext, no LaTeX.

    Text objects read these settings when they are made, so draw and save the whole figure
    inside it. (A user's matplotlibrc with ``text.usetex: True`` would otherwise hand every
    title to LaTeX.)
    """
    import matplotlib  # here: the Markdown helpers must not import matplotlib

    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})
