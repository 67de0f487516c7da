"""Statistics of a preference dataset: lengths and how far apart the two completions are.

The Smaug paper's measure of a pair is the normalised edit distance: the token-level Levenshtein
distance between y_w and y_l divided by the longer one's length (MetaMath pairs ≈ 6.5 %, ARC ≈ 90 %).
Tokens are the tokenizer's when one is given (the completion ids the trainer sees, EOS included),
else numbers (`1,250.50` is one), words and single punctuation marks.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from dpolab.data.formats import PreferenceExample, Text

PERCENTILES = (5, 25, 50, 75, 95, 100)
_WORDS = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between two sequences of
    tokens or two strings (character level): rapidfuzz's bit-parallel Levenshtein (Hyyrö 2003), in
    C++; a sequence of hashable items is compared item by item. It equals `naive_levenshtein`
    (tested against it)."""
    return Levenshtein.distance(a, b)


def naive_levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """The textbook O(len(a)·len(b)) dynamic programme; the reference `levenshtein` is tested against."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def normalised_edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Levenshtein distance divided by the longer sequence's length, in [0, 1]; 0 for two empty ones."""
    longer = max(len(a), len(b))
    return levenshtein(a, b) / longer if longer else 0.0


def word_tokens(text: str) -> list[str]:
    """Numbers (with their `,` and `.` groups), words and single punctuation marks:
    `'$1,250.50/2 = 625.25 each.'` -> `['$', '1,250.50', '/', '2', '=', '625.25', 'each', '.']`."""
    return _WORDS.findall(text)


def text_of(value: Text) -> str:
    """A completion or prompt as plain text: a string as is, messages as their contents one per line."""
    if isinstance(value, str):
        return value
    return "\n".join(str(m.get("content", "")) for m in value)


def pair_token_lengths(example: PreferenceExample, tokenizer) -> tuple[int, int, int, list[int], list[int]]:
    """(prompt, chosen, rejected) lengths in tokens as the trainer tokenises the pair (no truncation),
    and the chosen and rejected completion ids."""
    from dpolab.data.tokenize import tokenize_prompt_completions

    prompt_ids, (chosen_ids, rejected_ids) = tokenize_prompt_completions(
        tokenizer, example.prompt, [example.chosen, example.rejected]
    )
    return len(prompt_ids), len(chosen_ids), len(rejected_ids), chosen_ids, rejected_ids


LEVELS = ("token", "char")


def pair_edit_distance(example: PreferenceExample, tokenizer=None, *, level: str = "token") -> float:
    """Normalised edit distance between the pair's chosen and rejected completions: over the
    tokenizer's tokens when one is given, else over words (`level="token"`) or characters
    (`level="char"`)."""
    (measures,) = pair_measures([example], tokenizer, level=level)
    return measures[3]


def pair_measures(
    examples: Sequence[PreferenceExample], tokenizer=None, *, level: str = "token"
) -> list[tuple[int, int, int, float]]:
    """(prompt, chosen, rejected length, normalised edit distance of the completions) of each pair.

    Lengths are in tokens when a tokenizer is given (as the trainer tokenises: BOS in the prompt,
    EOS or the template's end-of-turn in the completions; all pairs tokenised together), else in
    characters. The edit distance is over the tokenizer's tokens, or words without one;
    `level="char"` makes it over characters."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    out = []
    if tokenizer is not None:
        from dpolab.data.tokenize import prompt_completion_ids

        split = prompt_completion_ids(tokenizer, [(e.prompt, [e.chosen, e.rejected]) for e in examples])
        for example, (prompt_ids, (chosen_ids, rejected_ids)) in zip(examples, split):
            if level == "token":
                distance = normalised_edit_distance(chosen_ids, rejected_ids)
            else:
                distance = normalised_edit_distance(text_of(example.chosen), text_of(example.rejected))
            out.append((len(prompt_ids), len(chosen_ids), len(rejected_ids), distance))
        return out
    for example in examples:
        chosen, rejected = text_of(example.chosen), text_of(example.rejected)
        if level == "char":
            distance = normalised_edit_distance(chosen, rejected)
        else:
            distance = normalised_edit_distance(word_tokens(chosen), word_tokens(rejected))
        out.append((len(text_of(example.prompt)), len(chosen), len(rejected), distance))
    return out


def percentiles(values: Sequence[float], qs: Sequence[int] = PERCENTILES) -> dict[str, float]:
    """`{"p5": ..., "p50": ..., "p100": ...}` (linear interpolation, numpy's default; rounded to 3
    decimals); empty for no values."""
    if len(values) == 0:
        return {}
    points = np.percentile(np.asarray(values, dtype=float), list(qs))
    return {f"p{q}": round(float(v), 3) for q, v in zip(qs, points)}


def histogram(
    values: Sequence[float], *, bins: int = 10, lo: float = 0.0, hi: float = 1.0
) -> list[dict[str, float]]:
    """Counts of `values` in `bins` equal bins over [lo, hi]; the last bin includes `hi`.

    Returns `[{"lo": 0.0, "hi": 0.1, "count": 3}, ...]`.
    """
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(lo, hi))
    return [
        {"lo": round(float(edges[i]), 10), "hi": round(float(edges[i + 1]), 10), "count": int(counts[i])}
        for i in range(bins)
    ]


def dataset_stats(
    examples: Sequence[PreferenceExample], *, tokenizer=None, bins: int = 10, level: str = "token"
) -> dict[str, Any]:
    """Rows, length percentiles and the normalised edit distance distribution of a list of pairs
    (`pair_measures` says in which units)."""
    measures = np.asarray(pair_measures(examples, tokenizer, level=level), dtype=float).reshape(-1, 4)
    return summarise(measures, tokenized=tokenizer is not None, bins=bins, level=level)


def summarise(
    measures: np.ndarray, *, tokenized: bool, bins: int = 10, level: str = "token"
) -> dict[str, Any]:
    """The statistics of `(pairs, 4)` measures (`pair_measures`' columns)."""
    prompt, chosen, rejected, distances = (measures[:, i] for i in range(4))
    some = len(distances) > 0
    return {
        "rows": len(measures),
        "unit": "tokens" if tokenized else "characters",
        "edit_distance_unit": "characters"
        if level == "char"
        else "tokenizer tokens"
        if tokenized
        else "words and punctuation",
        "prompt_length": percentiles(prompt),
        "chosen_length": percentiles(chosen),
        "rejected_length": percentiles(rejected),
        "completion_length": percentiles(np.concatenate([chosen, rejected])),
        "edit_distance": {
            "mean": float(np.mean(distances)) if some else float("nan"),
            "median": float(np.median(distances)) if some else float("nan"),
            "min": float(np.min(distances)) if some else float("nan"),
            "max": float(np.max(distances)) if some else float("nan"),
            "histogram": histogram(distances, bins=bins),
        },
    }


MEASURES = ("prompt_length", "chosen_length", "rejected_length", "distance")


def measures_batch(batch: dict[str, list], *, tokenizer, level: str) -> dict[str, list]:
    """`pair_measures` of a batch of the examples table (`dpolab.data.rows.EXAMPLES`), for `datasets.map`."""
    import json

    examples = [
        PreferenceExample(json.loads(p), json.loads(c), json.loads(r))
        for p, c, r in zip(batch["prompt"], batch["chosen"], batch["rejected"])
    ]
    columns = list(zip(*pair_measures(examples, tokenizer, level=level))) or [[]] * 4
    return dict(zip(MEASURES, map(list, columns)))


def source_stats(
    source: str,
    *,
    split: str | None = None,
    fmt: str = "auto",
    on_bad_rows: str = "error",
    tokenizer=None,
    bins: int = 10,
    level: str = "token",
    num_proc: int | None = None,
    skip_hint: str | None = None,
    work: Path | None = None,
):
    """`dataset_stats` of a preference file or hub id, read and measured on Arrow tables in
    `num_proc` processes (`dpolab.data.sources`); returns (stats, the bad-row report). The
    tables go to a temporary folder in `work` (default: the data cache's folder), removed after."""
    import functools
    import tempfile

    import datasets

    from dpolab.data import rows
    from dpolab.data.cache import default_cache_dir
    from dpolab.data.pairs import CONFIG_SKIP_HINT
    from dpolab.data.sources import read_source

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    work = Path(work) if work is not None else default_cache_dir()
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".stats-", dir=work) as folder:
        spec = {"path": source, "split": split, "builder": None}
        examples = read_source(
            spec,
            fmt=fmt,
            on_bad_rows=on_bad_rows,
            seed=0,
            work=Path(folder) / "source",
            num_proc=num_proc,
            skip_hint=skip_hint or CONFIG_SKIP_HINT,
        )
        features = datasets.Features(
            {k: datasets.Value("int64") for k in MEASURES[:3]} | {"distance": datasets.Value("float64")}
        )
        measured = rows.map_batches(
            examples.table.select(examples.positions).select_columns(["prompt", "chosen", "rejected"]),
            functools.partial(measures_batch, tokenizer=tokenizer, level=level),
            features=features,
            path=Path(folder) / "measures.arrow",
            num_proc=num_proc,
            desc="measuring",
            batch_size=rows.TOKENISE_BATCH if tokenizer is not None else rows.BATCH,
        )
        measures = np.stack([rows.column(measured, k).astype(float) for k in MEASURES], axis=1)
    return summarise(measures, tokenized=tokenizer is not None, bins=bins, level=level), examples.report


def format_stats(stats: dict[str, Any], *, source: str = "", width: int = 40) -> str:
    """The statistics as a short human-readable report with a text histogram."""
    lines = [f"{source}: {stats['rows']} pairs" if source else f"{stats['rows']} pairs"]
    names = ("prompt_length", "chosen_length", "rejected_length", "completion_length")
    qs = list(stats["prompt_length"])
    lines.append(f"lengths in {stats['unit']}:".ljust(28) + "".join(q.rjust(9) for q in qs))
    for name in names:
        row = stats[name]
        lines.append(f"  {name.replace('_', ' ')}".ljust(28) + "".join(f"{row[q]:9.0f}" for q in qs))
    ed = stats["edit_distance"]
    lines.append(
        f"normalised edit distance ({stats['edit_distance_unit']}): mean {ed['mean']:.1%}, median {ed['median']:.1%}, "
        f"min {ed['min']:.1%}, max {ed['max']:.1%}"
    )
    peak = max((b["count"] for b in ed["histogram"]), default=0) or 1
    for b in ed["histogram"]:
        bar = "#" * round(width * b["count"] / peak)
        lines.append(f"  {b['lo']:4.0%}-{b['hi']:4.0%} {b['count']:7d} {bar}")
    return "\n".join(lines)
