"""Result files of the evaluation and analysis commands, and the plain-text tables they print.

Every result is one JSON object with a `kind` key (`winrate`, `tasks`, `forgetting`, `layers`,
`tokens`) and `schema` (its version), so that `dpolab report` can find them in a run directory
(suggested place: `RUN_DIR/eval/<name>.json`).
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from typing import Any

from dpolab import __version__
from dpolab.data.io import write_json_atomic

SCHEMA_VERSION = 1
KINDS = ("winrate", "tasks", "forgetting", "layers", "tokens")


def result_header(kind: str) -> dict[str, Any]:
    """The keys every result starts with."""
    if kind not in KINDS:
        raise ValueError(f"unknown result kind {kind!r}")
    return {
        "kind": kind,
        "schema": SCHEMA_VERSION,
        "dpolab_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """Write a result JSON atomically (NaN written as null)."""
    write_json_atomic(path, _finite(result))


def fmt(value: Any, digits: int = 4) -> str:
    """A value for a table: floats to `digits` significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A fixed-width text table (numbers right-aligned)."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)
    ]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    out = [line([str(h) for h in headers]), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)
