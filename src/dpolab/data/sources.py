"""The pairs of a data spec (one file, or a mixture of sources and builders) on Arrow tables, with
the bad-row policy applied as `dpolab.data.pairs.load_pairs`, `dpolab.data.mixture.load_sources`
and the stage's tokenisation apply it to Python objects, in the same order:

1. each source is read (`rows.write_raw_rows`) and its rows made into examples
   (`rows.examples_batch`, in `data.num_proc` processes); its bad rows, in row order, stop the
   preparation at the first (`on_bad_rows: error`) or are counted;
2. the examples of all sources are mixed (`mixture.mixture_order`: the same draws as
   `load_sources`, so the same examples in the same order for a seed) and cut to `data.limit`;
3. the examples the mixture uses are tokenised once each (`rows.pairs_batch`), however often the
   mixture repeats them; the pairs that cannot be trained on stop it, or are counted, in the
   mixture's order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from dpolab.data import rows
from dpolab.data.builders import builder_fn
from dpolab.data.formats import PreferenceExample, normalise
from dpolab.data.mixture import check_specs, mixture_order
from dpolab.data.pairs import CONFIG_SKIP_HINT, BadRowPolicy, BadRowReport, SkippedRow, no_pairs_error
from dpolab.data.tokenize import batched
from dpolab.errors import DpolabError


def normalised(
    record: dict[str, Any], row: int, *, fmt: str, columns: dict[str, str | None] | None = None
) -> list[PreferenceExample]:
    """The row function of a preference file: its one normalised example (`columns`: `data.columns`)."""
    return [normalise(record, fmt, row=row, columns=columns)]


@dataclass
class SourceExamples:
    """The examples of one source: `table` holds every row `examples_batch` wrote (examples and
    the rows that gave none), `positions` the rows of `table` that are examples, in order."""

    name: str
    table: datasets.Dataset
    positions: np.ndarray
    report: BadRowReport


def read_source(
    spec: dict[str, Any],
    *,
    fmt: str,
    on_bad_rows: str,
    seed: int,
    work: Path,
    num_proc: int | None,
    limit: int | None = None,
    skip_hint: str = CONFIG_SKIP_HINT,
    columns: dict[str, str | None] | None = None,
) -> SourceExamples:
    """The examples of one source spec (`{path, split, builder}`), as `load_pairs` (with `limit`:
    the first `limit` examples, and the rows before the last of them) or `build_pairs` gives them.
    Raises `DpolabError` at the first bad row (`on_bad_rows: error`) and when none is usable."""
    name, builder = str(spec["path"]), spec.get("builder")
    work.mkdir(parents=True)
    raw = work / "rows.arrow"
    report = BadRowReport(name)
    if rows.write_raw_rows(name, spec.get("split"), raw) == 0:
        raise no_pairs_error(report, builder)
    fn = (
        builder_fn(builder, seed=seed) if builder else functools.partial(normalised, fmt=fmt, columns=columns)
    )
    table = rows.map_batches(
        rows.open_table(raw),
        functools.partial(rows.examples_batch, fn=fn),
        features=rows.EXAMPLES,
        path=work / "examples.arrow",
        num_proc=num_proc,
        desc=f"reading {Path(name).name}",
    )
    status = rows.column(table, "status")
    positions = np.flatnonzero(status == rows.OK)
    end = len(status)
    if limit is not None and len(positions) > limit:
        positions = positions[:limit]
        end = positions[-1] + 1  # load_pairs stops reading at the limit-th example
    policy = BadRowPolicy(name, on_bad_rows, skip_hint=skip_hint)
    skipped = np.flatnonzero(status[:end] != rows.OK)
    for row in rows.take(table, skipped, ["row", "status", "field", "reason"]):
        if row["status"] == rows.NO_PAIR:  # a valid row a builder makes no pair of: counted, never an error
            policy.report.skipped.append(SkippedRow(row["row"], row["field"], row["reason"]))
        else:
            policy.bad(row["row"], row["field"], row["reason"])
    if len(positions) == 0:
        raise no_pairs_error(policy.report, builder)
    return SourceExamples(name, table, positions, policy.report)


@dataclass
class Examples:
    """The examples of a spec: its sources, and the mixture as positions in the concatenation of
    their examples (source s's example j at `sum of the earlier sources' sizes + j`)."""

    sources: list[SourceExamples]
    order: np.ndarray

    @property
    def reports(self) -> list[BadRowReport]:
        return [s.report for s in self.sources]


def read_examples(
    spec, *, split: str | None, data, seed: int, work: Path, num_proc: int | None, limit: int | None = None
) -> Examples:
    """The examples of `data.train` or `data.eval`: one preference file or hub id (`limit` read as
    `load_pairs` reads it), or a list of source specs mixed with `seed` (and cut to `limit`)."""
    if not isinstance(spec, list):
        source = {"path": spec, "split": split, "builder": None}
        one = read_source(
            source,
            fmt=data.format,
            on_bad_rows=data.on_bad_rows,
            seed=seed,
            work=work / "source-1",
            num_proc=num_proc,
            limit=limit,
            columns=data.columns,
        )
        return Examples([one], np.arange(len(one.positions)))
    specs = check_specs(spec)
    sources = [
        read_source(
            s,
            fmt=data.format,
            on_bad_rows=data.on_bad_rows,
            seed=seed,
            work=work / f"source-{i + 1}",
            num_proc=num_proc,
            columns=s["columns"] if s.get("columns") is not None else data.columns,
        )
        for i, s in enumerate(specs)
    ]
    sizes = [len(s.positions) for s in sources]
    if specs[0]["weight"] is None:
        order = np.arange(sum(sizes))
    else:
        weights = [s["weight"] for s in specs]
        order = np.asarray(mixture_order(sizes, weights, seed=seed, mix_strategy=data.mix_strategy), np.int64)
    return Examples(sources, order[:limit])


@dataclass
class Pairs:
    """Tokenised pairs: `table` (rows.PAIRS) holds each example the mixture uses once, `positions`
    the rows of `table` in training order (repeats as the mixture has them; pairs that cannot be
    trained on left out)."""

    table: datasets.Dataset
    positions: np.ndarray
    names: list[str]  # of the sources
    source_of: np.ndarray  # the source of each row of `table`
    reports: list[BadRowReport] = field(default_factory=list)
    truncated_prompts: int = 0
    truncated_completions: int = 0

    def origins(self) -> list[tuple[str, int]]:
        """(source name, row) of each pair of `positions` (for the hold-out only: a list as long as the data)."""
        numbers = rows.column(self.table, "row")
        return [(self.names[self.source_of[i]], int(numbers[i])) for i in self.positions]

    def contents(self, origins: list[tuple[str, int]]) -> list[tuple[tuple[str, int], bytes]]:
        """What makes each pair distinct: its origin and its token ids (a digest of them)."""
        digests = rows.column(self.table, "content")
        return [(origin, digests[i]) for origin, i in zip(origins, self.positions)]


def tokenise(
    examples: Examples, name: str, tokenizer, data, *, tokenize, work: Path, num_proc: int | None
) -> Pairs:
    """The token ids of `examples` in mixture order, by the stage's `tokenize`; the pairs that
    cannot be trained on stop the preparation at the first in that order (`on_bad_rows: error`),
    or are reported under their source file. `name` (the spec) names an empty result."""
    sources, order = examples.sources, examples.order
    offsets = np.cumsum([0] + [len(s.positions) for s in sources])
    every = datasets.concatenate_datasets(
        [s.table.select(s.positions).select_columns(["row", "prompt", "chosen", "rejected"]) for s in sources]
    )
    needed = np.unique(order)  # each example the mixture uses, tokenised once
    fn = functools.partial(
        rows.pairs_batch,
        tokenize=batched(tokenize),
        tokenizer=tokenizer,
        max_length=data.max_length,
        max_prompt_length=data.max_prompt_length,
    )
    work.mkdir(parents=True)
    table = rows.map_batches(
        every.select(needed),
        fn,
        features=rows.PAIRS,
        path=work / "pairs.arrow",
        num_proc=num_proc,
        desc="tokenising",
        batch_size=rows.TOKENISE_BATCH,
    )
    at = np.searchsorted(needed, order)  # the row of `table` of each example of the mixture
    source_of = np.searchsorted(offsets, needed, side="right") - 1
    status = rows.column(table, "status")
    policies: dict[str, BadRowPolicy] = {}  # one per file, so that messages name the file of the row
    bad = np.flatnonzero(status[at] != rows.OK)
    for i, row in zip(bad, rows.take(table, at[bad], ["row", "field", "reason"])):
        source = sources[source_of[at[i]]].name
        policies.setdefault(source, BadRowPolicy(source, data.on_bad_rows)).bad(
            row["row"], row["field"], row["reason"]
        )
    positions = at[status[at] == rows.OK]
    if len(positions) == 0:
        raise DpolabError(f"{name}: no pair survives tokenisation (see data.max_length / max_prompt_length)")
    return Pairs(
        table,
        positions,
        [s.name for s in sources],
        source_of,
        reports=[p.report for p in policies.values()],
        truncated_prompts=int(rows.column(table, "prompt_truncated")[positions].sum()),
        truncated_completions=int(rows.column(table, "completion_truncated")[positions].sum()),
    )
