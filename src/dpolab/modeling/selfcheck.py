"""The one-batch self-check a run makes when it loads a model for training: dpolab's completion
log-probs of the first training examples, through the collator the run will use, against the
model's own `forward().logits` on each `prompt + completion` alone (at the completion positions
only: `logits_to_keep`, where the model takes it).

An unknown transformation between the blocks and the logits, or a model that cannot take the
packed pair rows, shows up here as a gap, before a step is trained on wrong numbers: packed rows
that disagree while separate rows agree switch the run to separate rows (said once in the log);
separate rows that disagree stop the run with one line, and so do rows that pack several pairs
(`data.pack_tokens`: the first examples share a row when the budget allows).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dpolab.errors import DpolabError
from dpolab.modeling.anatomy import anatomy, eval_mode, logprobs_agree
from dpolab.modeling.collate import PairCollator, batch_targets
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.modeling.probe import own_logprobs

log = logging.getLogger("dpolab")

CHECKED_EXAMPLES = 2


def _sequences(example: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """(prompt, completion) of each sequence of an example, in the order the collators score them."""
    prompt = list(example["prompt_ids"])
    keys = ("completion_ids",) if "completion_ids" in example else ("chosen_ids", "rejected_ids")
    # an SFT example's rejected_ids is empty: nothing of it is scored
    return [(prompt, list(example[k])) for k in keys if example.get(k)]


def logprob_gap(model: nn.Module, examples: Sequence[dict[str, Any]], collator) -> tuple[bool, float]:
    """(whether they agree, the largest per-token difference) between dpolab's final-layer
    log-probs of `examples` collated by `collator` and the model's own forward."""
    parts = anatomy(model)
    device = parts.head.weight.device
    batch = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collator(list(examples)).items()
    }
    with torch.no_grad(), eval_mode(model):
        ours = layer_logprobs(model, batch, None, targets=batch_targets(batch)).token_logps[0]
        theirs = torch.cat([own_logprobs(parts.causal_lm, p, c) for e in examples for p, c in _sequences(e)])
    dtype = parts.head.weight.dtype
    gap = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
    return logprobs_agree(ours, theirs, dtype), gap


def self_check(model: nn.Module, examples: Sequence[dict[str, Any]], collator):
    """The collator to train with: `collator` if dpolab's log-probs of the first examples equal the
    model's own; the separate-rows collator if only that one's do; else a `DpolabError`."""
    # row by row: a slice of an Arrow dataset would be a dict of columns
    examples = [examples[i] for i in range(min(len(examples), CHECKED_EXAMPLES))]
    if not examples:
        return collator
    parts = anatomy(model)
    ok, gap = logprob_gap(model, examples, collator)
    if ok:
        log.info("self-check: dpolab's log-probs equal %s.forward()'s (largest gap %.2g)", parts.name, gap)
        return collator
    if isinstance(collator, PairCollator) and collator.packed and collator.pack_tokens is None:
        separate = dataclasses.replace(collator, packed=False)
        ok_apart, gap_apart = logprob_gap(model, examples, separate)
        if ok_apart:
            log.warning(
                "rows: %s: pair rows' log-probs differ from its own forward's by %.2g on the first "
                "training pairs; chosen and rejected go in separate rows",
                parts.name,
                gap,
            )
            return separate
        gap = gap_apart
    if getattr(collator, "pack_tokens", None) is not None:
        raise DpolabError(
            f"{parts.name}: dpolab's log-probs of the first training examples, packed "
            f"{collator.pack_tokens} tokens a row, differ from its own forward's by {gap:.3g} per "
            f"token; remove data.pack_tokens"
        )
    raise DpolabError(
        f"{parts.name}: dpolab's log-probs of the first training examples differ from its own "
        f"forward's by {gap:.3g} per token: it does something between its blocks and its logits that "
        f"dpolab does not reproduce (found: {parts.describe()})"
    )
