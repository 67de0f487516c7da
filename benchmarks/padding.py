"""How much of a batch is padding, with and without packing (`data.pack_tokens`) and length-grouped
batches, on the benchmark's two workloads (`_workload.REGIMES`), counted from the collated
batches: no model runs, no clock is read, so the figures are the same on any machine.

For each workload, batch size and row budget it collates every batch of an epoch with dpolab's
`PairCollator` (one pair a row, or packed) in the order the Trainer's sampler draws them (random,
or transformers' `LengthGroupedSampler` order for `group_by_length`), and reports

- padding: the token slots (rows × width) that hold no token, the work every projection and MLP
  does for nothing;
- attention cells: what one head of one layer computes for the batch, relative to the cells the
  masks allow: sdpa computes every cell of every row (rows × width²); FlexAttention only the
  128 × 128 blocks its BlockMask keeps (`dpolab.modeling.attention.segment_block_mask`).
  Both count one head of one layer; the MLP and projections scale with the token slots instead.

    python benchmarks/padding.py                      # both workloads, batches of 4 and 8
    python benchmarks/padding.py --pairs 64 --batch 4 --budgets 1024   # a quick look
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _workload as workload
from dpolab.modeling.attention import segment_attention_mask
from dpolab.modeling.collate import PairCollator
from dpolab.modeling.packing import padding

BLOCK = 128  # FlexAttention's default block size (torch 2.13)


def token_pairs(regime: str, n: int, seed: int) -> list[dict[str, list[int]]]:
    """The workload's pairs as token ids of the right lengths (the ids do not matter here)."""
    pairs = []
    for pair in workload.build_pairs(regime, n, seed=seed):
        p, c, r = workload.pair_token_counts(pair)
        pairs.append({"prompt_ids": [5] * p, "chosen_ids": [6] * c, "rejected_ids": [7] * r})
    return pairs


def epoch_order(lengths: list[int], batch: int, grouped: bool, seed: int) -> list[int]:
    """The order the Trainer draws an epoch in: a seeded permutation, or transformers'
    length-grouped order (megabatches sorted by length)."""
    if grouped:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        return get_length_grouped_indices(lengths, batch, generator=torch.Generator().manual_seed(seed))
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return order


def block_cells(allowed: torch.Tensor, size: int = BLOCK) -> int:
    """The cells of the `size` × `size` blocks that hold an allowed cell: what FlexAttention
    computes under the BlockMask `segment_block_mask` builds (the same blocks, as
    tests/modeling/test_flex_attention.py checks; counted here from the dense mask, which is faster
    on a CPU than building the BlockMask)."""
    rows, width, _ = allowed.shape
    n = -(-width // size)
    padded = torch.nn.functional.pad(allowed, (0, n * size - width, 0, n * size - width))
    return int(padded.reshape(rows, n, size, n, size).any(4).any(2).sum()) * size * size


def count(pairs, batch: int, budget: int | None, grouped: bool, seed: int) -> dict[str, float]:
    collator = PairCollator(pad_token_id=0, pack_tokens=budget)
    lengths = [collator.length(p) for p in pairs]
    order = epoch_order(lengths, batch, grouped, seed)
    real = slots = rows = batches = 0
    needed = dense = blocks = 0
    for start in range(0, len(order), batch):
        collated = collator([pairs[i] for i in order[start : start + batch]])
        tokens, room = padding(collated)
        real, slots = real + tokens, slots + room
        seg = collated["segment_ids"]
        rows, batches = rows + seg.shape[0], batches + 1
        allowed = segment_attention_mask(seg, torch.float16)[:, 0] == 0
        needed += int((allowed & (seg[:, :, None] > 0)).sum())
        dense += seg.shape[0] * seg.shape[1] ** 2
        blocks += block_cells(allowed)
    return {
        "rows": rows / batches,
        "padding": 1 - real / slots,
        "sdpa": dense / needed,
        "flex": blocks / needed,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=128, help="pairs per workload (one epoch)")
    p.add_argument("--batch", type=int, nargs="+", default=[4, 8], help="pairs per step")
    p.add_argument(
        "--budgets", type=int, nargs="+", default=[1024, 2048, 4096], help="data.pack_tokens values"
    )
    p.add_argument("--regimes", nargs="+", default=list(workload.REGIMES), choices=list(workload.REGIMES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(
        "| workload | batch | batches | pack_tokens | rows a batch | padding | "
        "attention cells: sdpa | flex |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for regime in args.regimes:
        pairs = token_pairs(regime, args.pairs, args.seed)
        for batch in args.batch:
            for budget in [None, *args.budgets]:
                for grouped in (False, True):
                    f = count(pairs, batch, budget, grouped, args.seed)
                    print(
                        f"| {regime} | {batch} | {'length-grouped' if grouped else 'random'} | "
                        f"{budget or 'off'} | {f['rows']:.2f} | {f['padding']:.1%} | "
                        f"{f['sdpa']:.2f}× | {f['flex']:.2f}× |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
