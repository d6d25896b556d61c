"""Cells of the CSV files we write, made safe to open in a spreadsheet (CSV or "formula" injection).

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula
(``=cmd|' /C calc'!A0`` runs a program through DDE; ``=HYPERLINK(…)`` leaks data), and some also after a leading
TAB or CR. Following OWASP's advice, such a cell gets a leading single quote, which every spreadsheet reads as
"this is text". Two kinds of value keep their sign and stay as written, because a spreadsheet reads them as
exactly the number they are and nothing can hide in them: plain decimal numbers (``-5``, ``+1.5``, ``1e5``) and
with them E.164 phone numbers (``+8613812345678``). Anything else (``+1+1``, ``-1+2``, ``-``) is quoted.

Every CSV writer in the product goes through :func:`spreadsheet_cell`: the call lists, the reject files and the
coupon refusals of imports. Plugins reach it as ``orchestrator.api.spreadsheet_cell``.
"""

from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")  # also matches an E.164 number


def spreadsheet_cell(value: object) -> str:
    """``value`` as the text of a CSV cell that a spreadsheet shows as written and never evaluates."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text
