"""The one exception type for mistakes a user can make (bad data, bad config, a missing file).

The command line catches it and prints its message alone, without a traceback. Anything else
that escapes is a bug in dpolab and keeps its traceback.
"""

from __future__ import annotations


class DpolabError(Exception):
    """A user-facing error: the message names the file, row and field, and what to write instead."""


def where(path: object = None, row: int | None = None, field: str | None = None) -> str:
    """Format a location as `file.jsonl, row 12, field 'chosen'` (parts that are None are left out)."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)
