"""Preference pairs for the analyses, tokenised exactly as training tokenises them, and their
completion log-probs per layer (one forward pass per batch of packed pair rows)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dpolab.data.formats import BadRow
from dpolab.data.pairs import CONFIG_SKIP_HINT, BadRowPolicy, load_pairs
from dpolab.data.tokenize import TokenizedPair, tokenize_pair
from dpolab.errors import DpolabError
from dpolab.evaluation.scoring import to_device
from dpolab.modeling.collate import PairCollator, batch_targets
from dpolab.modeling.layout import row_layout
from dpolab.modeling.loading import model_device
from dpolab.modeling.logprobs import TokenTargets, layer_logprobs

PairLike = TokenizedPair | Mapping[str, Any]


def load_tokenized_pairs(
    source: str | os.PathLike,
    tokenizer,
    *,
    limit: int | None = None,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    on_bad_rows: str = "error",
    skip_hint: str = CONFIG_SKIP_HINT,
) -> list[TokenizedPair]:
    """The pairs of a preference file tokenised with `dpolab.data.tokenize.tokenize_pair`
    (`skip_hint`: a bad row's advice on how to skip such rows, as `dpolab.data.pairs.load_pairs`)."""
    examples, _ = load_pairs(source, on_bad_rows=on_bad_rows, limit=limit, skip_hint=skip_hint)
    policy = BadRowPolicy(source, on_bad_rows, skip_hint=skip_hint)
    pairs = []
    for example in examples:
        try:
            pairs.append(
                tokenize_pair(example, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
            )
        except BadRow as err:
            policy.bad(example.row, err.field, err.reason)
    if not pairs:
        raise DpolabError(f"{source}: no usable pairs after tokenisation ({policy.report.summary()})")
    return pairs


def as_dict(pair: PairLike) -> dict[str, Any]:
    return pair.to_dict() if isinstance(pair, TokenizedPair) else dict(pair)


@torch.no_grad()
def pair_logprobs(
    model,
    pairs: Sequence[PairLike],
    *,
    layers: Sequence[int] | None = None,
    final_norm: bool = True,
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of every pair at every layer in `layers` (None: final only).

    Returns:
        `(chosen, rejected)`, each `(len(layers), len(pairs))` fp32 on the CPU.
    """
    collator = PairCollator(pad_token_id=pad_token_id, packed=row_layout(model).packed)
    device = model_device(model)
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        batch = collator([as_dict(p) for p in pairs[start : start + batch_size]])
        targets = batch_targets(batch)
        targets = TokenTargets(
            targets.positions.to(device),
            targets.tokens.to(device),
            targets.segments.to(device),
            targets.num_segments,
        )
        out = layer_logprobs(model, to_device(batch, device), layers, final_norm=final_norm, targets=targets)
        logps = out.logps.float().cpu()  # (layers, 2B): chosen of pair b at 2b, rejected at 2b + 1
        chosen.append(logps[:, 0::2])
        rejected.append(logps[:, 1::2])
    return torch.cat(chosen, dim=1), torch.cat(rejected, dim=1)


@torch.no_grad()
def pair_token_logprobs(
    model, pairs: Sequence[PairLike], *, batch_size: int = 8, pad_token_id: int = 0
) -> list[tuple[list[float], list[float]]]:
    """Per-token log-probs (final layer) of each pair's chosen and rejected completion tokens:
    each target token is its own segment of `TokenTargets`, so the "sums" are single tokens."""
    collator = PairCollator(pad_token_id=pad_token_id, packed=row_layout(model).packed)
    device = model_device(model)
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = [as_dict(p) for p in pairs[start : start + batch_size]]
        batch = collator(chunk)
        t = batch_targets(batch)
        n = len(t.tokens)
        targets = TokenTargets(t.positions.to(device), t.tokens.to(device), torch.arange(n, device=device), n)
        logps = layer_logprobs(model, to_device(batch, device), None, targets=targets).logps[0].float().cpu()
        # the collator lists pair b's chosen tokens, then its rejected ones, pair after pair
        offset = 0
        for pair in chunk:
            n_c, n_r = len(pair["chosen_ids"]), len(pair["rejected_ids"])
            out.append(
                (logps[offset : offset + n_c].tolist(), logps[offset + n_c : offset + n_c + n_r].tolist())
            )
            offset += n_c + n_r
    return out
