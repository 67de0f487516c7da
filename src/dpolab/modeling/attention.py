"""Attention masks and positions for the rows of `dpolab.modeling.collate`."""

from __future__ import annotations

import torch


def segment_attention_mask(
    segment_ids: torch.Tensor,
    dtype: torch.dtype,
    *,
    position_ids: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Additive `(B, 1, T, T)` mask for rows that pack a prompt with its completions.

    `segment_ids` is `(B, T)`: 0 on padding; otherwise segment s ≥ 1, grouped in threes per pair,
    3p+1 the prompt, 3p+2 the chosen and 3p+3 the rejected completion of pair p in the row (a
    plain sequence is simply segment 1). Token i sees token j ≤ i of its own segment and of its
    segment's prompt, so each completion sees the prompt and itself, never the other completion.
    Padding sees only itself (a row of −inf would turn into NaN).

    With a sliding `window` (the layers of Mistral, Gemma 2/3, ... that attend to the last `window`
    tokens only), token i also needs `position_ids[i] − position_ids[j] < window`: distances are
    counted in positions, as in the completion's own row, not in columns of the packed row (where
    the chosen completion sits between the prompt and the rejected one).
    """
    seq = segment_ids.shape[1]
    seg = segment_ids
    prompt_of = seg - (seg - 1).remainder(3)  # 3p+1 for every segment of pair p
    causal = torch.ones(seq, seq, dtype=torch.bool, device=seg.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    sees_prompt = prompt_of[:, :, None] == seg[:, None, :]
    allowed = causal & (same | sees_prompt) & (seg[:, :, None] > 0)
    if window is not None:
        if position_ids is None:
            raise ValueError("a sliding window needs the rows' position_ids")
        allowed &= (position_ids[:, :, None] - position_ids[:, None, :]) < window
    allowed |= torch.eye(seq, dtype=torch.bool, device=seg.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def positions_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (right or left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
