"""Training data from one source or a weighted mixture of several.

A source is `{"path": ..., "split": None, "weight": None, "builder": None}`: `path` is a
preference file or hub id, or, with `builder` set (metamath, arc, hellaswag), the raw dataset the
builder makes its pairs from on the fly.

Mixing, as LLaMA-Factory users know it (`mix_strategy`, `interleave_probs`):
- No weights: the sources are concatenated, each example once (LLaMA-Factory's `concat`).
- Weights: relative sampling proportions, p_i = w_i / Σ w. The mixture has N examples, of which
  round(p_i · N) come from source i (largest remainders, so the counts sum to N exactly). A source
  asked for fewer examples than it has gives a seeded sample without repetition; one asked for
  more is repeated whole as often as fits, plus a seeded sample for the rest. N depends on
  `mix_strategy`:
  - `"sum"` (default): N = Σ n_i, the size of the concatenation; only the proportions change.
  - `"interleave_under"`: N = min_i n_i / p_i, the largest mixture in which no example repeats
    (LLaMA-Factory's `interleave_under`, stopping when the first source runs out).
  - `"interleave_over"`: N = max_i n_i / p_i, the smallest mixture that uses every example of
    every source at least once (LLaMA-Factory's `interleave_over`, going on until all have run out).
  Unlike LLaMA-Factory's random interleaving, the counts are exact, and the mixture is shuffled
  with `seed`, so the same specs and seed always give the same examples in the same order.

Weights must be given to every source or to none.

`load_sources` gives the examples as Python objects (for small data and the tests); training
prepares the same mixture on Arrow tables (`dpolab.data.sources`), with `mixture_order`.
"""

from __future__ import annotations

import math
import random
from typing import Any

from dpolab.data.builders import BUILDER_NAMES, build_pairs
from dpolab.data.formats import PreferenceExample, check_columns
from dpolab.data.pairs import BadRowReport, load_pairs
from dpolab.errors import DpolabError

SPEC_KEYS = ("path", "split", "weight", "builder", "columns")
MIX_STRATEGIES = ("sum", "interleave_under", "interleave_over")


def check_spec(spec: Any, index: int) -> dict[str, Any]:
    """A source spec with its defaults filled in; raises `DpolabError` naming the entry and key."""
    name = f"data source {index + 1}"
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise DpolabError(f"{name}: expected a path or a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise DpolabError(f"{name}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(SPEC_KEYS)}")
    path = spec.get("path")
    if not isinstance(path, str) or not path.strip():
        raise DpolabError(f"{name}: 'path' must name a file or hub dataset")
    weight = spec.get("weight")
    if weight is not None and (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise DpolabError(f"{name} ({path}): 'weight' must be a positive number, not {weight!r}")
    builder = spec.get("builder")
    if builder is not None and builder not in BUILDER_NAMES:
        raise DpolabError(
            f"{name} ({path}): unknown builder {builder!r}; use one of {', '.join(BUILDER_NAMES)}"
        )
    split = spec.get("split")
    if split is not None and not isinstance(split, str):
        raise DpolabError(f"{name} ({path}): 'split' must be a string")
    columns = spec.get("columns")
    if columns is not None:
        check_columns(columns, f"{name} ({path}): 'columns'")
    return {
        "path": path,
        "split": split,
        "weight": None if weight is None else float(weight),
        "builder": builder,
        "columns": columns,
    }


def mixture_counts(sizes: list[int], weights: list[float], *, mix_strategy: str = "sum") -> list[int]:
    """How many examples each source gives to the mixture (see the module docstring).

    >>> mixture_counts([100, 50], [1, 1])  # N = 150, p = (1/2, 1/2)
    [75, 75]
    >>> mixture_counts([100, 50], [1, 1], mix_strategy="interleave_under")  # N = min(200, 100)
    [50, 50]
    """
    if mix_strategy not in MIX_STRATEGIES:
        raise DpolabError(f"unknown mix_strategy {mix_strategy!r}; use one of {', '.join(MIX_STRATEGIES)}")
    total_weight = sum(weights)
    probs = [w / total_weight for w in weights]
    if mix_strategy == "sum":
        n = sum(sizes)
    elif mix_strategy == "interleave_under":
        n = math.floor(min(size / p for size, p in zip(sizes, probs)) + 1e-9)
    else:
        n = math.ceil(max(size / p for size, p in zip(sizes, probs)) - 1e-9)
    exact = [p * n for p in probs]
    counts = [math.floor(x) for x in exact]
    # largest remainders get the examples that rounding down left over (ties: earlier source first)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def resample(examples: list, count: int, rng: random.Random) -> list:
    """`count` examples: whole copies of the list as often as they fit, then a sample without repetition."""
    copies, rest = divmod(count, len(examples))
    return examples * copies + rng.sample(examples, rest)


def mixture_order(
    sizes: list[int], weights: list[float], *, seed: int, mix_strategy: str = "sum"
) -> list[int]:
    """The weighted mixture of sources of `sizes` examples, as positions in their concatenation
    (source i's example j is at `sum(sizes[:i]) + j`): each source `resample`d to its
    `mixture_counts`, one after the other, then shuffled with `seed`. The draws depend only on the
    sizes, so the engine (`dpolab.data.sources`) and `load_sources` pick the same examples in the
    same order."""
    counts = mixture_counts(sizes, weights, mix_strategy=mix_strategy)
    rng = random.Random(seed)
    order: list[int] = []
    offset = 0
    for size, count in zip(sizes, counts):
        order += [offset + j for j in resample(list(range(size)), count, rng)]
        offset += size
    rng.shuffle(order)
    return order


def check_specs(specs: list[dict[str, Any]] | dict[str, Any] | str) -> list[dict[str, Any]]:
    """The specs of one source or a mixture, checked (`check_spec`), with weights given to every
    source or to none."""
    if isinstance(specs, (dict, str)):
        specs = [specs]
    if not specs:
        raise DpolabError("no data sources given")
    specs = [check_spec(spec, i) for i, spec in enumerate(specs)]
    weighted = [spec["weight"] is not None for spec in specs]
    if any(weighted) and not all(weighted):
        missing = ", ".join(spec["path"] for spec in specs if spec["weight"] is None)
        raise DpolabError(f"give a weight to every data source or to none; no weight for: {missing}")
    return specs


def load_sources(
    specs: list[dict[str, Any]] | dict[str, Any] | str,
    *,
    fmt: str = "auto",
    on_bad_rows: str = "error",
    seed: int = 0,
    mix_strategy: str = "sum",
    columns: dict[str, str | None] | None = None,
) -> tuple[list[PreferenceExample], list[BadRowReport]]:
    """The training examples of one source or a mixture, and one bad-row report per source.

    Args:
        specs: a list of `{"path", "split", "weight", "builder"}` mappings (or a single one, or a path).
        fmt: the preference format of the non-builder sources (`auto` detects it per row).
        on_bad_rows: `error` stops at the first bad row naming file, row and field; `skip` counts.
        seed: seeds the builders (MetaMath's corruption) and the sampling and shuffling of a mixture.
        mix_strategy: how large a weighted mixture is (`sum`, `interleave_under`, `interleave_over`).
        columns: `data.columns`, for the sources whose spec names no `columns` of its own.

    Without weights the result is the sources' examples concatenated in order (not shuffled); with
    weights it is the mixture, shuffled with `seed`. Each example keeps its source row number.
    """
    specs = check_specs(specs)
    per_source: list[list[PreferenceExample]] = []
    reports: list[BadRowReport] = []
    for spec in specs:
        if spec["builder"]:
            examples, report = build_pairs(
                spec["builder"], spec["path"], split=spec["split"], seed=seed, on_bad_rows=on_bad_rows
            )
        else:
            examples, report = load_pairs(
                spec["path"],
                split=spec["split"],
                fmt=fmt,
                on_bad_rows=on_bad_rows,
                columns=spec["columns"] if spec["columns"] is not None else columns,
            )
        per_source.append(examples)
        reports.append(report)

    every = [example for examples in per_source for example in examples]
    if specs[0]["weight"] is None:
        return every, reports
    sizes, weights = [len(e) for e in per_source], [spec["weight"] for spec in specs]
    return [every[i] for i in mixture_order(sizes, weights, seed=seed, mix_strategy=mix_strategy)], reports
