"""Attention masks and positions for the rows of `dpolab.modeling.collate`."""

from __future__ import annotations

import torch


def segment_mask_mod(
    segment_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None, window: int | None = None
):
    """The rule of a packed row's mask as a FlexAttention `mask_mod(b, h, q, kv) -> allowed`: the one
    definition behind `segment_attention_mask` (evaluated on every cell) and `segment_block_mask`.

    `segment_ids` is `(B, T)`: 0 on padding; otherwise segment s ≥ 1, grouped in threes per pair,
    3p+1 the prompt, 3p+2 the chosen and 3p+3 the rejected completion of pair p in the row (a
    sequence alone, as SFT packs them, is a segment 3p+2 with no prompt segment). Token q sees
    token kv ≤ q of its own segment and of its segment's prompt, so each completion sees its prompt
    and itself, never the other completion nor another pair. Padding sees only itself (a row with
    nothing to attend to would turn into NaN under sdpa).

    With a sliding `window` (the layers of Mistral, Gemma 2/3, ... that attend to the last `window`
    tokens only), q also needs `position_ids[q] − position_ids[kv] < window`: distances are counted
    in positions, as in the completion's own row, not in columns of the packed row (where the
    chosen completion sits between the prompt and the rejected one).
    """
    if window is not None and position_ids is None:
        raise ValueError("a sliding window needs the rows' position_ids")
    seg = segment_ids
    prompt_of = seg - (seg - 1).remainder(3)  # 3p+1 for every segment of pair p

    # two functions, not one that tests `window`: torch 2.13's compiled FlexAttention on a CPU
    # fails (C++ that does not build) on a mask_mod whose closure holds an unused None

    def pairs(b, h, q, kv):
        seg_q, seg_kv = seg[b, q], seg[b, kv]
        allowed = (kv <= q) & ((seg_q == seg_kv) | (prompt_of[b, q] == seg_kv)) & (seg_q > 0)
        return allowed | (q == kv)

    if window is None:
        return pairs
    positions = position_ids

    def windowed(b, h, q, kv):
        return (pairs(b, h, q, kv) & (positions[b, q] - positions[b, kv] < window)) | (q == kv)

    return windowed


def segment_attention_mask(
    segment_ids: torch.Tensor,
    dtype: torch.dtype,
    *,
    position_ids: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Additive `(B, 1, T, T)` mask (0 where allowed, the dtype's minimum elsewhere) for rows that
    pack prompts with their completions, by the rule of `segment_mask_mod` (sdpa, eager)."""
    batch, seq = segment_ids.shape
    device = segment_ids.device
    mask_mod = segment_mask_mod(segment_ids, position_ids=position_ids, window=window)
    cells = torch.arange(seq, device=device)
    allowed = mask_mod(
        torch.arange(batch, device=device)[:, None, None], None, cells[:, None], cells[None, :]
    )
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def segment_block_mask(
    segment_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None, window: int | None = None
):
    """The same mask as a FlexAttention `BlockMask` (`flex_attention`): no `(B, T, T)` tensor is
    kept, and the kernel skips the blocks of 128 × 128 cells in which nothing is allowed (across
    pairs, past the row's end). Built compiled on an accelerator; on a CPU, where rows are short,
    from the mask evaluated cell by cell (no compilation)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, seq = segment_ids.shape
    mask_mod = segment_mask_mod(segment_ids, position_ids=position_ids, window=window)
    device = segment_ids.device
    return create_block_mask(mask_mod, batch, None, seq, seq, device=device, _compile=device.type != "cpu")


def positions_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (right or left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
