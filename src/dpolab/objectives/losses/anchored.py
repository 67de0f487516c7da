"""Losses of the chosen and the rejected log-ratios apart (each anchored to the reference), and AOT's,
which compares the batch's sorted log-ratios (so a pair's loss depends on the rest of its batch).

Each takes the four `(batch,)` summed log-probs of `dpolab.objectives.losses`; the rewards are
β·Δ_w and β·Δ_l. No f-divergence: TRL refuses one on these, as its reparameterisation leaves a
β·log Z(x) term that cancels only in the difference Δ_w − Δ_l.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dpolab.objectives.losses.base import LossOutput, implicit_rewards, logratios, smoothed_logsigmoid_loss


def nca_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> LossOutput:
    """NCA: `−log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l)`, r = β·Δ: the absolute likelihood of each
    completion, not only their difference."""
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    r_w, r_l = beta * delta_w, beta * delta_l
    # the NCA loss of Chen et al. 2024, https://arxiv.org/abs/2402.05369, for K = 2 responses:
    # −log σ(r_w) − ½ Σ_{y ∈ {y_w, y_l}} log σ(−r_y)
    losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def bco_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> LossOutput:
    """BCO on pairs: `−log σ(r_w) − log σ(−r_l)`, r = β·Δ: a binary classifier whose logit is the
    implicit reward, 1 for the chosen completion and 0 for the rejected (no reward shift δ)."""
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # the BCO loss of Jung et al. 2024, https://arxiv.org/abs/2404.04656, on pairs, with δ = 0:
    # −log σ(r_θ(x, y_w)) − log σ(−r_θ(x, y_l))
    losses = -F.logsigmoid(beta * delta_w) - F.logsigmoid(-beta * delta_l)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def sppo_hard_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> LossOutput:
    """SPPO with hard labels: `(Δ_w − 1/(2β))² + (Δ_l + 1/(2β))²`: the chosen log-ratio pushed to
    +1/(2β), the rejected to −1/(2β)."""
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 4.7 of Wu et al. 2024 (SPPO), https://arxiv.org/abs/2405.00675, with the win probability
    # P̂ = 1 for the winner and 0 for the loser: (log-ratio − β⁻¹·(P̂ − ½))² for each
    losses = (delta_w - 0.5 / beta) ** 2 + (delta_l + 0.5 / beta) ** 2
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def apo_zero_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> LossOutput:
    """APO-zero: `1 − σ(β·Δ_w) + σ(β·Δ_l)`: the chosen likelihood up, the rejected down (for when
    the chosen completions are better than the model's own)."""
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 7 of D'Oosterlinck et al. 2024 (APO), https://arxiv.org/abs/2408.06266
    losses = (1 - torch.sigmoid(beta * delta_w)) + torch.sigmoid(beta * delta_l)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def apo_down_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> LossOutput:
    """APO-down: `σ(β·Δ_w) + 1 − σ(β·(Δ_w − Δ_l))`: both likelihoods down, the rejected more (for
    when the model is better than the chosen completions)."""
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 8 of D'Oosterlinck et al. 2024 (APO), https://arxiv.org/abs/2408.06266
    losses = torch.sigmoid(beta * delta_w) + (1 - torch.sigmoid(beta * (delta_w - delta_l)))
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def aot_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """AOT (paired): the smoothed logistic loss of `sort(ρ_θ) − sort(ρ_ref)` over the batch, where
    ρ = log π(y_w|x) − log π(y_l|x): each quantile of the policy's chosen-over-rejected log-ratio
    above the reference's. Entry i of `losses` belongs to the i-th quantile, not to pair i."""
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    policy_sorted, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
    reference_sorted, _ = torch.sort(reference_chosen_logps - reference_rejected_logps, dim=0)
    # AOT of Melnyk et al. 2024, https://arxiv.org/abs/2406.05882, paired: first-order stochastic
    # dominance of the policy's ρ over the reference's, the quantiles matched by sorting
    losses = smoothed_logsigmoid_loss(beta * (policy_sorted - reference_sorted), label_smoothing)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def aot_unpaired_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """AOT (unpaired): the smoothed logistic loss of `sort(Δ_w) − sort(Δ_l)` over the batch: each
    quantile of the chosen log-ratios above the same quantile of the rejected ones."""
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    chosen_sorted, _ = torch.sort(delta_w, dim=0)
    rejected_sorted, _ = torch.sort(delta_l, dim=0)
    # AOT of Melnyk et al. 2024, https://arxiv.org/abs/2406.05882, unpaired: the chosen rewards'
    # distribution first-order dominant over the rejected rewards', quantiles by sorting
    losses = smoothed_logsigmoid_loss(beta * (chosen_sorted - rejected_sorted), label_smoothing)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))
