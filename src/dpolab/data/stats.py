"""Statistics of a preference dataset: lengths and how far apart the two completions are.

The Smaug paper's measure of a pair is the normalised edit distance: the token-level Levenshtein
distance between y_w and y_l divided by the longer one's length (MetaMath pairs ≈ 6.5 %, ARC ≈ 90 %).
Tokens are the tokenizer's when one is given (the completion ids the trainer sees, EOS included),
else numbers (`1,250.50` is one), words and single punctuation marks.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from dpolab.data.formats import PreferenceExample, Text

PERCENTILES = (5, 25, 50, 75, 95, 100)
_WORDS = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between two sequences of
    tokens or two strings (character level).

    Bit-parallel (Myers 1999, in Hyyrö's 2001 formulation): each column of the dynamic-programming
    table is two bit vectors held in Python integers, so the cost is O(len(b)) big-integer steps
    instead of O(len(a)·len(b)) cell updates. It equals `naive_levenshtein` (tested against it).
    The common prefix and suffix are stripped first; they never change the distance.
    """
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    m = len(a)
    if m == 0 or len(b) == 0:
        return max(m, len(b))
    peq: dict[Hashable, int] = {}  # token -> bit mask of its positions in a
    for i, token in enumerate(a):
        peq[token] = peq.get(token, 0) | (1 << i)
    full = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = full, 0, m  # vertical +1 / -1 deltas of the current column; D[m][j]
    for token in b:
        eq = peq.get(token, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = ((ph << 1) | 1) & full  # | 1: row 0 of the table grows by one per column (global distance)
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


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
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    if level == "char":
        return normalised_edit_distance(text_of(example.chosen), text_of(example.rejected))
    if tokenizer is not None:
        *_, chosen_ids, rejected_ids = pair_token_lengths(example, tokenizer)
        return normalised_edit_distance(chosen_ids, rejected_ids)
    return normalised_edit_distance(
        word_tokens(text_of(example.chosen)), word_tokens(text_of(example.rejected))
    )


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
    """Rows, length percentiles and the normalised edit distance distribution of a list of pairs.

    Lengths are in tokens when a tokenizer is given (as the trainer tokenises: BOS in the prompt,
    EOS or the template's end-of-turn in the completions), else in characters. The edit distance
    is over the tokenizer's tokens, or words without one; `level="char"` makes it over characters.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    prompt_lengths, chosen_lengths, rejected_lengths, distances = [], [], [], []
    for example in examples:
        if tokenizer is not None:
            p, c, r, chosen_ids, rejected_ids = pair_token_lengths(example, tokenizer)
            distances.append(
                normalised_edit_distance(chosen_ids, rejected_ids)
                if level == "token"
                else pair_edit_distance(example, level="char")
            )
        else:
            p, c, r = (len(text_of(t)) for t in (example.prompt, example.chosen, example.rejected))
            distances.append(pair_edit_distance(example, level=level))
        prompt_lengths.append(p)
        chosen_lengths.append(c)
        rejected_lengths.append(r)
    return {
        "rows": len(examples),
        "unit": "tokens" if tokenizer is not None else "characters",
        "edit_distance_unit": "characters"
        if level == "char"
        else "tokenizer tokens"
        if tokenizer is not None
        else "words and punctuation",
        "prompt_length": percentiles(prompt_lengths),
        "chosen_length": percentiles(chosen_lengths),
        "rejected_length": percentiles(rejected_lengths),
        "completion_length": percentiles(chosen_lengths + rejected_lengths),
        "edit_distance": {
            "mean": float(np.mean(distances)) if distances else float("nan"),
            "median": float(np.median(distances)) if distances else float("nan"),
            "min": float(min(distances)) if distances else float("nan"),
            "max": float(max(distances)) if distances else float("nan"),
            "histogram": histogram(distances, bins=bins),
        },
    }


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
