"""The training data of a run: its sources loaded and normalised, tokenised and truncated as
training sees them, an eval set read or held out, and every row that could not be used reported
(`data.on_bad_rows`). Runs before any model loads (`dpolab.training.run`).

The stage of the run says how a pair is tokenised (`tokenize_pair` for preference training,
`tokenize_sft` for SFT, both in `dpolab.data.tokenize`).

The pairs are Arrow tables (`dpolab.data.sources`, `dpolab.data.rows`), prepared in
`data.num_proc` processes and kept in the data cache (`dpolab.data.cache`): a second run of the
same config reads them back. `prepare_data` gives them as memory-mapped `datasets.Dataset`s with
the columns the collator receives (`prompt_ids`, `chosen_ids`, `rejected_ids`, `row`, `length`,
`index`)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from dpolab import __version__
from dpolab.config.schema import DataSection
from dpolab.data import cache
from dpolab.data.pairs import BadRowReport, SkippedRow
from dpolab.data.rows import write_prepared
from dpolab.data.sources import read_examples, tokenise
from dpolab.data.tokenize import TokenizedPair
from dpolab.errors import DpolabError

log = logging.getLogger("dpolab")

Tokenize = Callable[..., TokenizedPair]
# data settings that change how the pairs are prepared, not what they are: not in the cache key
# (pack_tokens: how the collator lays prepared pairs out in rows)
NOT_IN_KEY = ("num_proc", "cache_dir", "pack_tokens")


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    reports: list[BadRowReport] = field(default_factory=list)
    truncated_prompts: int = 0
    truncated_completions: int = 0
    cache: Path | None = None  # the cache entry the pairs are read from
    from_cache: bool = False  # True when an earlier run prepared them


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


def _spec_name(spec) -> str:
    if isinstance(spec, list):
        return ", ".join(str(s.get("path") if isinstance(s, dict) else s) for s in spec)
    return str(spec)


def hold_out_positions(
    origins: Sequence[Hashable], contents: Sequence[Sequence[Hashable]], eval_size: float | int, *, seed: int
) -> tuple[list[int], list[int]]:
    """(train, eval) positions: `data.eval_size` of the pairs held out for evaluation, by source row.

    `origins[i]` = (source file, row) of pair i, `contents[i]` what makes it distinct (its origin
    first, then its token ids or a digest of them). A weighted mixture may repeat a source row
    (and a builder makes several pairs of one raw row): the unit held out is the row, so that no
    row lies on both sides. The rows are shuffled with `seed` and held out in that order until the
    eval side has `eval_size` distinct pairs (a fraction < 1 of the distinct pairs, or a number);
    it keeps each distinct pair once (a mixture's copies would only weight the metrics), and
    training keeps every copy of the other rows. Without repeats (one file, no builder) this is a
    plain seeded hold-out of `eval_size` pairs."""
    distinct = list(dict.fromkeys(contents))
    n_eval = round(eval_size * len(distinct)) if eval_size < 1 else int(eval_size)
    if not 0 < n_eval < len(distinct):
        raise DpolabError(
            f"data.eval_size: {eval_size} leaves {n_eval} of {len(distinct)} distinct pairs for "
            f"evaluation; choose a size that keeps pairs on both sides"
        )
    rows = list(dict.fromkeys(origins))
    pairs_of_row = Counter(key[0] for key in distinct)
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
    seen, eval_positions = set(), []
    for i, key in enumerate(contents):
        if origins[i] in held and key not in seen:
            seen.add(key)
            eval_positions.append(i)
    train_positions = [i for i, origin in enumerate(origins) if origin not in held]
    return train_positions, eval_positions


def hold_out(
    pairs: list[dict[str, Any]], origins: list[tuple[str, int]], eval_size: float | int, *, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`hold_out_positions` applied to a list of tokenised pairs (dicts of token ids)."""
    contents = [
        (origins[i], *(tuple(pair[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")))
        for i, pair in enumerate(pairs)
    ]
    train, held = hold_out_positions(origins, contents, eval_size, seed=seed)
    return [pairs[i] for i in train], [pairs[i] for i in held]


def _sources(data: DataSection) -> list[tuple[str, str | None]]:
    """(path or hub id, split) of every source the train and eval pairs are made of."""
    found = []
    for spec, split in ((train_spec(data), data.split), (data.eval, data.eval_split or "test")):
        for item in spec if isinstance(spec, list) else [spec] if spec else []:
            if isinstance(item, dict):
                found.append((str(item.get("path")), item.get("split")))
            else:
                found.append((str(item), None if isinstance(spec, list) else split))
    return list(dict.fromkeys(found))


def _seeds(data: DataSection, seed: int, mix_seed: int) -> dict[str, int]:
    """The seeds the pairs depend on: the mixture's (weights, MetaMath's corruption) and the
    hold-out's; a config that uses neither gets one entry for every seed."""
    specs = [s for spec in (train_spec(data), data.eval) if isinstance(spec, list) for s in spec]
    drawn = any(
        isinstance(s, dict) and (s.get("weight") is not None or s.get("builder") == "metamath") for s in specs
    )
    seeds = {"mixture": mix_seed} if drawn else {}
    if data.eval_size is not None:
        seeds["hold_out"] = seed
    return seeds


def cache_settings(
    data: DataSection, tokenizer, *, tokenize: Tokenize, seed: int, mix_seed: int
) -> dict[str, Any]:
    """Everything the prepared pairs depend on, the data cache's key (`dpolab.data.cache`)."""
    return {
        "dpolab": __version__,
        "tokenize": f"{tokenize.__module__}.{getattr(tokenize, '__qualname__', repr(tokenize))}",
        "data": {k: v for k, v in dataclasses.asdict(data).items() if k not in NOT_IN_KEY},
        "seeds": _seeds(data, seed, mix_seed),
        "sources": [
            {"source": source, "split": split, **cache.source_fingerprint(source, split)}
            for source, split in _sources(data)
        ],
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }


def cache_folder(data: DataSection) -> Path:
    return Path(data.cache_dir).expanduser() if data.cache_dir else cache.default_cache_dir()


def _pairs_of(
    spec, *, split, limit=None, data: DataSection, tokenizer, tokenize: Tokenize, seed: int, work: Path
):
    """The tokenised pairs of `data.train` or `data.eval`, and the reports of the rows they lost."""
    examples = read_examples(
        spec, split=split, data=data, seed=seed, work=work / "rows", num_proc=data.num_proc, limit=limit
    )
    pairs = tokenise(
        examples,
        _spec_name(spec),
        tokenizer,
        data,
        tokenize=tokenize,
        work=work / "pairs",
        num_proc=data.num_proc,
    )
    return pairs, examples.reports + pairs.reports


def _build(
    folder: Path, data: DataSection, tokenizer, *, tokenize: Tokenize, seed: int, mix_seed: int
) -> dict[str, Any]:
    """Prepare the pairs into `folder` (`train.arrow`, `eval.arrow`); what meta.json records."""
    work = folder / "work"
    how = {"data": data, "tokenizer": tokenizer, "tokenize": tokenize, "seed": mix_seed}
    train, reports = _pairs_of(
        train_spec(data), split=data.split, limit=data.limit, work=work / "train", **how
    )
    files = {"train.arrow": (train.table, train.positions)}
    counted = [train]
    if data.eval:
        held, lost = _pairs_of(data.eval, split=data.eval_split or "test", work=work / "eval", **how)
        reports += lost
        counted.append(held)
        files["eval.arrow"] = (held.table, held.positions)
    elif data.eval_size is not None:
        origins = train.origins()
        kept, held = hold_out_positions(origins, train.contents(origins), data.eval_size, seed=seed)
        files = {
            "train.arrow": (train.table, train.positions[kept]),
            "eval.arrow": (train.table, train.positions[held]),
        }
    pairs = {name: write_prepared(folder / name, table, at) for name, (table, at) in files.items()}
    shutil.rmtree(work)
    return {
        "pairs": pairs,
        "reports": [r.to_dict() for r in merge_reports(reports)],
        # as training sees them before a hold-out (a repeated pair counts each time)
        "truncated_prompts": sum(p.truncated_prompts for p in counted),
        "truncated_completions": sum(p.truncated_completions for p in counted),
    }


def prepare_data(
    data: DataSection,
    tokenizer,
    *,
    tokenize: Tokenize,
    seed: int = 42,
    data_seed: int | None = None,
    build: bool = True,
) -> PreparedData:
    """Load, normalise, tokenise (with the stage's `tokenize`) and truncate the train (and eval)
    pairs; apply on_bad_rows. Mixtures are drawn with `data_seed` (default `seed`), the eval pairs
    held out with `seed`. `reports` ends with one bad-row report per source file that lost rows.

    The pairs come from the data cache when it holds them (checked), else they are prepared and
    cached. `build=False` (the other processes of a distributed run, once the main one is done)
    only reads the cache: nothing is prepared twice."""
    mix_seed = data_seed or seed
    settings = cache_settings(data, tokenizer, tokenize=tokenize, seed=seed, mix_seed=mix_seed)
    folder = cache_folder(data) / cache.key_of(settings)
    entry = cache.lookup(folder, repair=build)
    from_cache = entry is not None
    if entry is not None:
        log.info("data: read from the cache %s", folder)
    elif not build:
        raise DpolabError(f"{folder}: the main process did not prepare the data (see its message)")
    else:
        start = time.perf_counter()
        make = functools.partial(
            _build, data=data, tokenizer=tokenizer, tokenize=tokenize, seed=seed, mix_seed=mix_seed
        )
        entry = cache.write_entry(folder, make, settings)
        log.info("data: prepared in %.1f s, cached in %s", time.perf_counter() - start, folder)
    meta = entry.meta
    reports = [
        BadRowReport(r["source"], [SkippedRow(s["row"], s["field"], s["reason"]) for s in r["rows"]])
        for r in meta["reports"]
    ]
    return PreparedData(
        train=entry.train,
        eval=entry.eval,
        reports=reports,
        truncated_prompts=meta["truncated_prompts"],
        truncated_completions=meta["truncated_completions"],
        cache=folder,
        from_cache=from_cache,
    )
