"""Padding-free packing: which examples of a batch share a row (`data.pack_tokens`), and how much
of a collated batch is padding.

    pack_rows(lengths, budget)   the rows of a batch: examples grouped, each row within the budget
    padding(batch)               (real tokens, token slots) of a collated batch

The collators (`dpolab.modeling.collate`) lay the rows out; the masks keep each pair (or
sequence) of a row to itself and its positions restart at 0 (`dpolab.modeling.attention`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def pack_rows(lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """The rows of a batch whose examples take `lengths` tokens each: lists of example indices,
    each in increasing order, the rows ordered by their first example.

    With no budget, one example per row. Otherwise the layout with the fewest token slots (rows ×
    the fullest row's tokens), among equals the one with the most rows (the narrowest: attention
    under a dense mask costs a row's width squared), of those `fill` makes for each number of
    rows from the fewest the tokens allow to one per example: never more padding than one example
    a row. An example longer than the budget goes in a row of its own, as long as it is."""
    if budget is None:
        return [[i] for i in range(len(lengths))]
    if budget < 1:
        raise ValueError(f"a row's token budget must be at least 1, got {budget}")
    alone = [[i] for i in range(len(lengths)) if lengths[i] > budget]
    fitting = sorted((i for i in range(len(lengths)) if lengths[i] <= budget), key=lambda i: (-lengths[i], i))
    floor = max((lengths[row[0]] for row in alone), default=0)
    best: tuple[tuple[int, int], list[list[int]]] = ((0, 0), [])
    for n in range(-(-sum(lengths[i] for i in fitting) // budget), len(fitting) + 1):
        rows = fill(fitting, lengths, n, budget)
        width = max([floor, *(sum(lengths[i] for i in row) for row in rows)])
        key = ((len(rows) + len(alone)) * width, -len(rows))
        if not best[1] or key < best[0]:
            best = (key, rows)
    return sorted(sorted(row) for row in best[1] + alone)


def fill(order: Sequence[int], lengths: Sequence[int], n: int, budget: int) -> list[list[int]]:
    """`n` rows filled in `order` (longest first), each example into the least filled row (the
    first of equals), a new row opened when that one cannot take it within `budget`: the rows
    come out about equally full."""
    rows: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for i in order:
        r = min(range(len(rows)), key=lambda r: (loads[r], r)) if rows else 0
        if not rows or loads[r] + lengths[i] > budget:
            rows.append([])
            loads.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        loads[r] += lengths[i]
    return [row for row in rows if row]


def padding(batch: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, token slots) of a collated batch of any layout: the slots are its rows × its
    width, the real tokens those with a segment (packed rows) or an attention mask of 1."""
    real = batch["segment_ids"] > 0 if "segment_ids" in batch else batch["attention_mask"].bool()
    return int(real.sum()), real.numel()
