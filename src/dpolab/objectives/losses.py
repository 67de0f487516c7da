"""Preference losses as pure functions of per-pair log-probabilities.

A loss that compares the policy with a reference takes four tensors of shape `(batch,)`:

    policy_chosen_logps      log π_θ(y_w | x)
    policy_rejected_logps    log π_θ(y_l | x)
    reference_chosen_logps   log π_ref(y_w | x)
    reference_rejected_logps log π_ref(y_l | x)

summed over each completion's tokens (or averaged, where its `LossSpec` in
`dpolab.objectives.registry` says so), and returns a `LossOutput`: the per-pair losses, the
implicit rewards of the chosen and rejected completions (detached: they are metrics, not part of
the objective), and any further per-pair metrics the loss defines. The batch loss is the mean of
the losses. Hyper-parameters are keyword-only and named as their `loss.` config keys.

Notation (docs/notes.md): Δ_w = log π_θ(y_w|x) − log π_ref(y_w|x), Δ_l likewise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossOutput(NamedTuple):
    losses: torch.Tensor  # (batch,)
    chosen_rewards: torch.Tensor  # (batch,), detached
    rejected_rewards: torch.Tensor  # (batch,), detached
    metrics: Mapping[str, torch.Tensor] = MappingProxyType({})  # name -> (batch,), detached


def _logratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ_w, Δ_l), each `(batch,)`."""
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def _implicit_rewards(
    beta: float, delta_w: torch.Tensor, delta_l: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # implicit rewards r = β·(log π_θ − log π_ref), Eq. 5 of Rafailov et al. 2023 (without β log Z(x))
    return beta * delta_w.detach(), beta * delta_l.detach()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> LossOutput:
    """DPO: `−log σ(β·(Δ_w − Δ_l))` per pair. Equal to log 2 when the policy is the reference.

    Args:
        *_logps: `(batch,)` summed completion log-probs.
        beta: the KL-penalty strength β (> 0).
    """
    delta_w, delta_l = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 7 of Rafailov et al. 2023, https://arxiv.org/abs/2305.18290: L = −log σ(β log-ratio_w − β log-ratio_l)
    losses = -F.logsigmoid(beta * (delta_w - delta_l))
    return LossOutput(losses, *_implicit_rewards(beta, delta_w, delta_l))


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> LossOutput:
    """IPO: `(Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))²` per pair; its minimum sits at a per-token log-ratio
    margin of 1/(2β).

    The log-ratios are averaged over each completion's tokens (as the reference DPO code and TRL
    do); the rewards are those of the summed log-probs, as for every other loss (and in TRL).

    Args:
        *_logps: `(batch,)` summed completion log-probs.
        beta: the regularisation strength τ of the IPO paper (> 0).
        chosen_lengths, rejected_lengths: `(batch,)` completion token counts.
    """
    delta_w, delta_l = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    mean_w = delta_w / chosen_lengths.clamp(min=1).to(delta_w.dtype)
    mean_l = delta_l / rejected_lengths.clamp(min=1).to(delta_l.dtype)
    # Eq. 17 of Azar et al. 2023, https://arxiv.org/abs/2310.12036: (h_π(y_w, y_l, x) − τ⁻¹/2)²
    losses = (mean_w - mean_l - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(losses, *_implicit_rewards(beta, delta_w, delta_l))


def dpop_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    dpop_lambda: float,
) -> LossOutput:
    """DPO-Positive: `−log σ(β·(Δ_w − Δ_l − λ·max(0, −Δ_w)))` per pair, λ inside β.

    The penalty is zero while the policy keeps the chosen completion at least as likely as the
    reference does (Δ_w ≥ 0), where DPOP equals DPO; below that it exceeds DPO. The penalty
    `max(0, −Δ_w)` is returned as the metric `dpop/penalty`.

    Args:
        *_logps: `(batch,)` summed completion log-probs.
        beta: β (> 0); the Smaug paper uses 0.3.
        dpop_lambda: the penalty weight λ (≥ 0); the Smaug paper uses 50.
    """
    delta_w, delta_l = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 3 of Pal et al. 2024 (Smaug), https://arxiv.org/abs/2402.13228v2, the corrected July 2024 form:
    # −log σ(β·(log-ratio_w − log-ratio_l − λ·max(0, log π_ref(y_w|x) − log π_θ(y_w|x))))
    penalty = torch.clamp(-delta_w, min=0.0)
    losses = -F.logsigmoid(beta * (delta_w - delta_l - dpop_lambda * penalty))
    return LossOutput(losses, *_implicit_rewards(beta, delta_w, delta_l), {"dpop/penalty": penalty.detach()})


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
