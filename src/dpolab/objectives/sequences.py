"""From per-token log-probs to what the losses take, for every method alike: the sequence sums
(with LD-DPO's weights), WPO's pair weights, and the NLL of the chosen completions.

Pure functions of the tensors of `dpolab.modeling.logprobs.LayerLogprobs`: `token_logps`
`(layers, N)`, the sequence `segments` `(N,)` of each token, and for pair batches sequence 2b the
chosen completion of pair b, 2b + 1 its rejected one (`dpolab.modeling.collate`). None of them
reads a value back to the host.
"""

from __future__ import annotations

import torch

from dpolab.modeling.logprobs import LayerLogprobs, segment_sums


def position_in_sequence(segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """`(N,)` the index of each token within its sequence (0 for its first), in the order the
    tokens come (a stable sort by sequence, so the tokens of a sequence need not be adjacent)."""
    n = segments.shape[0]
    counts = torch.zeros(num_segments, dtype=torch.long, device=segments.device).index_add_(
        0, segments, torch.ones_like(segments)
    )
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(segments, stable=True)
    rank = torch.arange(n, device=segments.device) - starts[segments[order]]
    return torch.empty_like(rank).scatter_(0, order, rank)


def length_desensitised_logps(
    token_logps: torch.Tensor, segments: torch.Tensor, num_segments: int, ld_alpha: float
) -> torch.Tensor:
    """LD-DPO's sums `(..., num_segments)`: each pair's tokens within the shared length
    min(|y_w|, |y_l|) count whole, those past it (the longer completion's tail) weigh α.

    Args:
        token_logps: `(..., N)` per-token log-probs; segments: `(N,)`, pairs' sequences 2b, 2b + 1.
        ld_alpha: α ∈ [0, 1]; 1 is the plain sum, 0 drops the tails.
    """
    counts = torch.zeros(num_segments, dtype=torch.long, device=segments.device).index_add_(
        0, segments, torch.ones_like(segments)
    )
    shared = torch.minimum(counts[0::2], counts[1::2])  # (pairs,)
    within = position_in_sequence(segments, num_segments) < shared[segments // 2]
    # Liu et al. 2024 (LD-DPO), https://arxiv.org/abs/2409.06411: log π(y|x) = log π(y_shared|x)
    # + α·log π(y_tail|x), the tail being the tokens past the shorter completion's length
    one = torch.ones((), dtype=token_logps.dtype, device=token_logps.device)
    weights = torch.where(within, one, one * ld_alpha)
    return segment_sums(token_logps * weights, segments, num_segments)


def sequence_logps(out: LayerLogprobs, ld_alpha: float | None) -> torch.Tensor:
    """`(layers, 2B)` the log-probs the losses take: the sums, or LD-DPO's with `ld_alpha`."""
    if ld_alpha is None:
        return out.logps
    if out.token_logps is None:
        raise ValueError("loss.ld_alpha needs the per-token log-probs (layer_logprobs gives them)")
    return length_desensitised_logps(out.token_logps, out.segments, out.logps.shape[-1], ld_alpha)


@torch.no_grad()
def wpo_weights(
    token_logps: torch.Tensor, log_sum_sq: torch.Tensor, segments: torch.Tensor, num_segments: int
) -> torch.Tensor:
    """WPO's pair weights `(..., pairs)`, detached: w(y) = exp(mean_t [log p(y_t) − log Σ_v p_v²]),
    the per-token probability of y under the policy, aligned to its own distribution's
    self-probability Σ_v p_v², and a pair's weight w(y_w)·w(y_l).

    Args:
        token_logps, log_sum_sq: `(..., N)` per token; segments: `(N,)`, pairs' sequences 2b, 2b + 1.
    """
    counts = torch.zeros(num_segments, dtype=token_logps.dtype, device=segments.device).index_add_(
        0, segments, torch.ones_like(segments, dtype=token_logps.dtype)
    )
    aligned = segment_sums(token_logps - log_sum_sq, segments, num_segments) / counts.clamp(min=1)
    # Eq. 2 of Zhou et al. 2024 (WPO), https://arxiv.org/abs/2406.11827: w(x, y) = exp((1/|y|)·Σ_t log
    # [π_θ(y_t|x, y_<t) / Σ_v π_θ(v|x, y_<t)²]); the pair's weight w(x, y_w)·w(x, y_l)
    weights = torch.exp(aligned)
    return weights[..., 0::2] * weights[..., 1::2]


def chosen_nll(
    sums: torch.Tensor,
    num_tokens: torch.Tensor,
    prompt_sums: torch.Tensor | None = None,
    prompt_num_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """`()` the batch's mean negative log-likelihood per token of the chosen completions (one mean
    over all of the batch's chosen tokens, as TRL's losses compute it), and of their prompts' tokens
    too where `prompt_sums` are given (ORPO's NLL of the whole chosen sequence).

    Args:
        sums: `(..., 2B)` plain summed log-probs, chosen at 0, 2, 4, ...; num_tokens: `(2B,)`.
        prompt_sums: `(..., B)` each prompt's summed log-probs; prompt_num_tokens: `(B,)`.
    """
    total, count = sums[..., 0::2].sum(-1), num_tokens[0::2].sum()
    if prompt_sums is not None:
        total, count = total + prompt_sums.sum(-1), count + prompt_num_tokens.sum()
    return -total / count.clamp(min=1).to(total.dtype)
