"""Loading preference pairs with the bad-row policy: stop at the first bad row (default), naming
file, row and field, or skip bad rows and report how many were skipped and why."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from dpolab.data.formats import BadRow, PreferenceExample, normalise
from dpolab.data.io import read_rows
from dpolab.errors import DpolabError, where

ON_BAD_ROWS = ("error", "skip")
# How a bad-row message tells the user to skip such rows, in the words of where it is shown: the
# training config (the default), or a command line with an `--on-bad-rows` flag.
CONFIG_SKIP_HINT = "set data.on_bad_rows=skip"
FLAG_SKIP_HINT = "pass --on-bad-rows skip"


def row_count(n: int, adjective: str = "") -> str:
    """`1 row`, `3 rows`, `1 bad row`."""
    return f"{n} {adjective}row{'' if n == 1 else 's'}"


@dataclass
class SkippedRow:
    row: int
    field: str | None
    reason: str


@dataclass
class BadRowReport:
    """The rows a source lost, with their reasons; empty when nothing was skipped."""

    source: str
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.skipped)

    def by_reason(self) -> dict[str, int]:
        return dict(
            Counter(f"{s.field}: {s.reason}" if s.field else s.reason for s in self.skipped).most_common()
        )

    def counts(self) -> str:
        """The count of each reason, most frequent first: `2 × chosen: missing; 1 × ...`."""
        return "; ".join(f"{n} × {reason}" for reason, n in self.by_reason().items())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.source}: no rows skipped"
        return f"{self.source}: skipped {row_count(len(self.skipped), 'bad ')} ({self.counts()})"

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "skipped": len(self.skipped),
            "by_reason": self.by_reason(),
            "rows": [{"row": s.row, "field": s.field, "reason": s.reason} for s in self.skipped],
        }


def bad_row_error(
    source: str | os.PathLike,
    row: int,
    fld: str | None,
    reason: str,
    *,
    skip_hint: str = CONFIG_SKIP_HINT,
) -> DpolabError:
    return DpolabError(
        f"{where(source, row, fld)}: {reason} (fix the row, or {skip_hint} to skip such rows and count them)"
    )


class BadRowPolicy:
    """Applies `on_bad_rows` to one source: raise at once, or remember the row and go on.
    `skip_hint` is the error's advice on how to skip (`CONFIG_SKIP_HINT`, `FLAG_SKIP_HINT`)."""

    def __init__(
        self, source: str | os.PathLike, on_bad_rows: str = "error", *, skip_hint: str = CONFIG_SKIP_HINT
    ):
        if on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, not {on_bad_rows!r}")
        self.source = str(source)
        self.on_bad_rows = on_bad_rows
        self.skip_hint = skip_hint
        self.report = BadRowReport(self.source)

    def bad(self, row: int, fld: str | None, reason: str) -> None:
        if self.on_bad_rows == "error":
            raise bad_row_error(self.source, row, fld, reason, skip_hint=self.skip_hint)
        self.report.skipped.append(SkippedRow(row, fld, reason))


def load_pairs(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    fmt: str = "auto",
    on_bad_rows: str = "error",
    limit: int | None = None,
    skip_hint: str = CONFIG_SKIP_HINT,
    columns: dict[str, str | None] | None = None,
) -> tuple[list[PreferenceExample], BadRowReport]:
    """All usable pairs of a source, normalised, with the report of the rows skipped.

    Raises `DpolabError` at the first bad row when `on_bad_rows` is `error` (its advice on skipping
    worded by `skip_hint`), and when no row at all is usable. `columns`: `data.columns`.
    """
    policy = BadRowPolicy(source, on_bad_rows, skip_hint=skip_hint)
    examples: list[PreferenceExample] = []
    for row in read_rows(source, split=split):
        if row.record is None:
            policy.bad(row.number, None, row.error or "unreadable")
            continue
        try:
            example = normalise(row.record, fmt, row=row.number, columns=columns)
            example.source = str(source)
            examples.append(example)
        except BadRow as err:
            policy.bad(row.number, err.field, err.reason)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise no_pairs_error(policy.report)
    return examples, policy.report


def no_pairs_error(report: BadRowReport, builder: str | None = None) -> DpolabError:
    """The error for a source that gave no pair at all, with the rows it lost."""
    if builder:
        return DpolabError(f"{report.source}: the {builder} builder made no pairs ({report.summary()})")
    if not report.skipped:
        return DpolabError(f"{report.source}: has no rows")
    return DpolabError(f"{report.source}: no usable preference pairs ({report.summary()})")
