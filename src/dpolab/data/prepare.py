"""The training data of a run: its sources loaded and normalised, tokenised and truncated as
training sees them, an eval set read or held out, and every row that could not be used reported
(`data.on_bad_rows`). Runs before any model loads (`dpolab.training.run`).

The stage of the run says how a pair is tokenised (`tokenize_pair` for preference training,
`tokenize_sft` for SFT, both in `dpolab.data.tokenize`)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpolab.config.schema import DataSection
from dpolab.data.formats import BadRow, PreferenceExample
from dpolab.data.pairs import BadRowPolicy, BadRowReport, load_pairs
from dpolab.data.tokenize import TokenizedPair
from dpolab.errors import DpolabError

Tokenize = Callable[..., TokenizedPair]


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] | None
    reports: list[BadRowReport] = field(default_factory=list)
    truncated_prompts: int = 0
    truncated_completions: int = 0


def _load_examples(
    spec, *, split, data: DataSection, seed: int, limit: int | None = None
) -> tuple[list[PreferenceExample], list[BadRowReport]]:
    """The examples of `data.train` or `data.eval`: a preference file or hub id, or a list of
    source specs (`{path, split, weight, builder}`, see dpolab.data.mixture), mixed with `seed`."""
    if isinstance(spec, list):
        from dpolab.data.mixture import load_sources  # sources with weights, or builders

        examples, reports = load_sources(
            spec,
            fmt=data.format,
            on_bad_rows=data.on_bad_rows,
            seed=seed,
            mix_strategy=data.mix_strategy,
            columns=data.columns,
        )
        return examples[:limit], reports
    examples, report = load_pairs(
        spec, split=split, fmt=data.format, on_bad_rows=data.on_bad_rows, limit=limit, columns=data.columns
    )
    return examples, [report]


def train_spec(data: DataSection):
    """What the training pairs come from: `data.train`, or `data.builder` applied to
    `data.source` (one builder spec). `data.eval` is always read as its own spec: a preference
    file, or a list of specs that may name a builder; it never falls back to `data.source`."""
    if data.builder:
        return [{"path": data.source, "builder": data.builder, "split": data.split}]
    return data.train


def merge_reports(reports: list[BadRowReport]) -> list[BadRowReport]:
    """One report per source file, for the rows it lost at loading and at tokenisation (or as
    train and eval): each row once, in row order; sources without skipped rows left out."""
    merged: dict[str, BadRowReport] = {}
    seen: dict[str, set] = {}
    for report in reports:
        target = merged.setdefault(report.source, BadRowReport(report.source))
        keys = seen.setdefault(report.source, set())
        for skipped in report.skipped:
            key = (skipped.row, skipped.field, skipped.reason)
            if key not in keys:  # a row a mixture repeats, or a builder made several pairs of
                keys.add(key)
                target.skipped.append(skipped)
    for report in merged.values():
        report.skipped.sort(key=lambda s: s.row)
    return [r for r in merged.values() if r.skipped]


def _tokenize_all(
    examples,
    source: str,
    tokenizer,
    data: DataSection,
    *,
    tokenize: Tokenize,
    prepared: PreparedData,
    origins=None,
):
    """The tokenised pairs of `examples`; when `origins` is a list, appends to it the
    `(source file, row)` each pair came from."""
    policies: dict[str, BadRowPolicy] = {}  # one per file, so that messages name the file of the row
    pairs = []
    for example in examples:
        try:
            pair = tokenize(
                example, tokenizer, max_length=data.max_length, max_prompt_length=data.max_prompt_length
            )
        except BadRow as err:
            name = example.source or source
            policies.setdefault(name, BadRowPolicy(name, data.on_bad_rows)).bad(
                example.row, err.field, err.reason
            )
            continue
        prepared.truncated_prompts += pair.prompt_truncated
        prepared.truncated_completions += pair.completion_truncated
        item = pair.to_dict()
        item["length"] = len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
        pairs.append(item)
        if origins is not None:
            origins.append((example.source or source, example.row))
    prepared.reports += [p.report for p in policies.values()]
    for index, item in enumerate(pairs):
        item["index"] = index
    if not pairs:
        raise DpolabError(
            f"{source}: no pair survives tokenisation (see data.max_length / max_prompt_length)"
        )
    return pairs


def _spec_name(spec) -> str:
    if isinstance(spec, list):
        return ", ".join(str(s.get("path") if isinstance(s, dict) else s) for s in spec)
    return str(spec)


def hold_out(
    pairs: list[dict[str, Any]], origins: list[tuple[str, int]], eval_size: float | int, *, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): `data.eval_size` of the pairs held out for evaluation, by source row.

    A weighted mixture may repeat a source row (and a builder makes several pairs of one raw row):
    the unit held out is the row, `origins[i]` = (source file, row) of `pairs[i]`, so that no row
    lies on both sides. The rows are shuffled with `seed` and held out in that order until the eval
    side has `eval_size` distinct pairs (a fraction < 1 of the distinct pairs, or a number); it
    keeps each distinct pair once (a mixture's copies would only weight the metrics), and training
    keeps every copy of the other rows. Without repeats (one file, no builder) this is a plain
    seeded hold-out of `eval_size` pairs."""

    def content(i: int):
        pair = pairs[i]
        return origins[i], *(tuple(pair[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))

    distinct = list(dict.fromkeys(content(i) for i in range(len(pairs))))
    n_eval = round(eval_size * len(distinct)) if eval_size < 1 else int(eval_size)
    if not 0 < n_eval < len(distinct):
        raise DpolabError(
            f"data.eval_size: {eval_size} leaves {n_eval} of {len(distinct)} distinct pairs for "
            f"evaluation; choose a size that keeps pairs on both sides"
        )
    rows = list(dict.fromkeys(origins))
    pairs_of_row: dict[tuple[str, int], int] = {}
    for key in distinct:
        pairs_of_row[key[0]] = pairs_of_row.get(key[0], 0) + 1
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held, count = set(), 0
    for index in order:
        if count >= n_eval:
            break
        held.add(rows[index])
        count += pairs_of_row[rows[index]]
    if len(held) == len(rows):
        raise DpolabError(f"data.eval_size: {eval_size} holds out every source row; choose a smaller size")
    seen, eval_pairs = set(), []
    for i, pair in enumerate(pairs):
        key = content(i)
        if origins[i] in held and key not in seen:
            seen.add(key)
            eval_pairs.append(pair)
    train_pairs = [pair for i, pair in enumerate(pairs) if origins[i] not in held]
    return train_pairs, eval_pairs


def prepare_data(
    data: DataSection, tokenizer, *, tokenize: Tokenize, seed: int = 42, data_seed: int | None = None
) -> PreparedData:
    """Load, normalise, tokenise (with the stage's `tokenize`) and truncate the train (and eval)
    pairs; apply on_bad_rows. Mixtures are drawn with `data_seed` (default `seed`), the eval pairs
    held out with `seed`. `reports` ends with one bad-row report per source file that lost rows."""
    prepared = PreparedData(train=[], eval=None)
    mix_seed = data_seed or seed
    spec = train_spec(data)
    train_examples, reports = _load_examples(
        spec, split=data.split, data=data, seed=mix_seed, limit=data.limit
    )
    prepared.reports += reports
    origins: list[tuple[str, int]] = []
    prepared.train = _tokenize_all(
        train_examples,
        _spec_name(spec),
        tokenizer,
        data,
        tokenize=tokenize,
        prepared=prepared,
        origins=origins,
    )
    if data.eval:
        eval_examples, reports = _load_examples(
            data.eval, split=data.eval_split or "test", data=data, seed=mix_seed
        )
        prepared.reports += reports
        prepared.eval = _tokenize_all(
            eval_examples, _spec_name(data.eval), tokenizer, data, tokenize=tokenize, prepared=prepared
        )
    elif data.eval_size is not None:
        prepared.train, prepared.eval = hold_out(prepared.train, origins, data.eval_size, seed=seed)
        for part in (prepared.train, prepared.eval):
            for index, item in enumerate(part):
                item["index"] = index
    prepared.reports = merge_reports(prepared.reports)
    return prepared
