"""CSV cells that a spreadsheet will not run: neutralising formula injection (OWASP).

Titles, annotators' names and notes are user text. A cell that begins with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return is read by Excel, LibreOffice and Google
Sheets as a formula (``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``). OWASP's advice
(https://owasp.org/www-community/attacks/CSV_Injection): prefix such a cell with a
single quote, which spreadsheets show as text. Plain numbers (``-0.5``, ``+3``) are
left alone so numeric columns stay numeric. Every CSV the project writes goes through
`safe_writer` (or `safe_cell`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` if it is text a spreadsheet would run as a formula."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    if _PLAIN_NUMBER.fullmatch(value):
        return value
    return "'" + value


class SafeWriter:
    """A `csv.writer` whose every cell goes through `safe_cell`."""

    def __init__(self, stream: Any, **kwargs: Any):
        self._writer = csv.writer(stream, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def safe_writer(stream: Any, **kwargs: Any) -> SafeWriter:
    """Like ``csv.writer(stream, **kwargs)``, with formula-looking cells neutralised."""
    return SafeWriter(stream, **kwargs)
