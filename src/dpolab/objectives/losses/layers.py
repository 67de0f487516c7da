"""Intermediate DPO's total loss: the final layer's mixed with the mean of the intermediate layers'."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mix_layer_losses(
    final_loss: torch.Tensor, intermediate_losses: Sequence[torch.Tensor], *, gamma: float
) -> torch.Tensor:
    """Intermediate DPO's total loss `γ·L_final + (1 − γ)·mean_k L_k`.

    Args:
        final_loss: the final layer's loss, a scalar or `(batch,)`.
        intermediate_losses: one loss per intermediate layer k ∈ K, each shaped like `final_loss`.
            With none, the result is `final_loss` itself (γ plays no part).
        gamma: γ ∈ [0, 1]; the Intermediate DPO paper uses 0.9.
    Returns:
        A tensor shaped like `final_loss`.
    """
    if not intermediate_losses:
        return final_loss
    # Eq. 2 of Kojima 2024, "Intermediate direct preference optimization": L_K = (1/|K|) Σ_{k∈K} L_k
    intermediate = torch.stack(list(intermediate_losses)).mean(dim=0)
    # Eq. 3 of Kojima 2024: L = γ·L_DPO + (1 − γ)·L_K
    return gamma * final_loss + (1.0 - gamma) * intermediate
