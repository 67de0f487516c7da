"""Log-likelihoods of continuations through `dpolab.modeling.logprobs.layer_logprobs` (no full logits):
the one scoring path shared by the task metrics, forgetting and the analyses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dpolab.modeling.collate import SequenceCollator, batch_targets
from dpolab.modeling.logprobs import layer_logprobs


def to_device(batch: Mapping[str, Any], device) -> dict[str, Any]:
    """A collated batch with its tensors moved to `device`."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_max_length(model, default: int = 2048) -> int:
    """The context length of a model, from its config."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def pad_id_of(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def fit_context(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Keep the last `max_length` tokens of context + continuation (the continuation's first
    token needs at least one context token before it)."""
    if len(context) + len(continuation) <= max_length:
        return context, continuation
    if len(continuation) >= max_length:
        continuation = continuation[-(max_length - 1) :]
    return context[-(max_length - len(continuation)) :], continuation


@torch.no_grad()
def continuation_logprobs(
    model,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
    max_length: int | None = None,
    per_token: bool = False,
) -> list[float] | list[list[float]]:
    """log p(continuation | context) of each request `(context_ids, continuation_ids)`, summed over
    the continuation's tokens (or, with `per_token`, one log-prob per continuation token).

    Contexts must not be empty. Requests longer than `max_length` (default: the model's context)
    keep their last tokens.
    """
    from dpolab.modeling.loading import model_device

    max_length = max_length or model_max_length(model)
    collator = SequenceCollator(pad_token_id=pad_token_id)
    device = model_device(model)
    out: list = []
    for start in range(0, len(requests), batch_size):
        examples = []
        for context, continuation in requests[start : start + batch_size]:
            context, continuation = fit_context(list(context), list(continuation), max_length)
            if not context:
                raise ValueError("a continuation needs at least one context token before it")
            examples.append({"prompt_ids": context, "completion_ids": continuation})
        batch = collator(examples)
        targets = batch_targets(batch)
        if per_token:
            # every scored token its own segment: the "sum" of each segment is that token's log-prob
            targets.segments = torch.arange(len(targets.tokens))
            targets.num_segments = len(targets.tokens)
        batch = to_device(batch, device)
        targets.positions, targets.tokens, targets.segments = (
            targets.positions.to(device),
            targets.tokens.to(device),
            targets.segments.to(device),
        )
        logps = layer_logprobs(model, batch, None, targets=targets).logps[0].float().cpu()
        if per_token:
            lengths = [len(e["completion_ids"]) for e in examples]
            out.extend(chunk.tolist() for chunk in torch.split(logps, lengths))
        else:
            out.extend(logps.tolist())
    return out
