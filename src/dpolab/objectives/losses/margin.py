"""Losses of the margin between the chosen and the rejected completion's scores, s_w − s_l.

The scores are the log-ratios Δ_w, Δ_l (or their f-divergence transforms, `divergence_scores`);
each function takes the four `(batch,)` summed log-probs of `dpolab.objectives.losses` and
returns the rewards β·Δ_w, β·Δ_l of the raw log-ratios, as TRL logs them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dpolab.objectives.losses.base import (
    LossOutput,
    divergence_scores,
    implicit_rewards,
    logratios,
    smoothed_logsigmoid_loss,
)


def _scores(logps, f_divergence: str, f_alpha: float):
    """(Δ_w, Δ_l, s_w, s_l) of `(policy_chosen, policy_rejected, reference_chosen, reference_rejected)`."""
    delta_w, delta_l = logratios(*logps)
    return (
        delta_w,
        delta_l,
        divergence_scores(delta_w, f_divergence, f_alpha),
        divergence_scores(delta_l, f_divergence, f_alpha),
    )


def _per_token(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return scores / lengths.clamp(min=1).to(scores.dtype)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """DPO: `−log σ(β·(Δ_w − Δ_l))` per pair (log 2 when the policy is the reference); with label
    smoothing ε, conservative DPO: `−(1 − ε)·log σ(β·m) − ε·log σ(−β·m)`, m = s_w − s_l.

    Args:
        *_logps: `(batch,)` summed completion log-probs.
        beta: the KL-penalty strength β (> 0).
        label_smoothing: ε ∈ [0, 0.5), the probability that a label is flipped (cDPO).
        f_divergence, f_alpha: the scores' f-divergence (`divergence_scores`).
    """
    delta_w, delta_l, s_w, s_l = _scores(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps),
        f_divergence,
        f_alpha,
    )
    # Eq. 7 of Rafailov et al. 2023, https://arxiv.org/abs/2305.18290: L = −log σ(β log-ratio_w − β log-ratio_l);
    # smoothed: cDPO, Mitchell 2023, https://ericmitchell.ai/cdpo.pdf: −(1−ε) log σ(βm) − ε log σ(−βm)
    losses = smoothed_logsigmoid_loss(beta * (s_w - s_l), label_smoothing)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """IPO: `(s_w/|y_w| − s_l/|y_l| − 1/(2β))²` per pair (s = Δ without an f-divergence); its
    minimum sits at a per-token log-ratio margin of 1/(2β).

    The scores are averaged over each completion's tokens (as the reference DPO code and TRL
    do: the score of the summed log-ratio, divided); the rewards are those of the summed
    log-probs, as for every other loss (and in TRL).

    Args:
        *_logps: `(batch,)` summed completion log-probs.
        beta: the regularisation strength τ of the IPO paper (> 0).
        chosen_lengths, rejected_lengths: `(batch,)` completion token counts.
    """
    delta_w, delta_l, s_w, s_l = _scores(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps),
        f_divergence,
        f_alpha,
    )
    mean_w, mean_l = _per_token(s_w, chosen_lengths), _per_token(s_l, rejected_lengths)
    # Eq. 17 of Azar et al. 2023, https://arxiv.org/abs/2310.12036: (h_π(y_w, y_l, x) − τ⁻¹/2)²
    losses = (mean_w - mean_l - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def sigmoid_norm_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """Length-normalised DPO: `−log σ(β·(s_w/|y_w| − s_l/|y_l|))`, the DPO loss of per-token
    average scores (TRL's `sigmoid_norm`)."""
    delta_w, delta_l, s_w, s_l = _scores(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps),
        f_divergence,
        f_alpha,
    )
    margin = _per_token(s_w, chosen_lengths) - _per_token(s_l, rejected_lengths)
    # length-normalised DPO of Tülu 3 (Lambert et al. 2024, https://arxiv.org/abs/2411.15124):
    # −log σ(β/|y_w|·log-ratio_w − β/|y_l|·log-ratio_l)
    losses = -F.logsigmoid(beta * margin)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


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
    delta_w, delta_l = logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 3 of Pal et al. 2024 (Smaug), https://arxiv.org/abs/2402.13228v2, the corrected July 2024 form:
    # −log σ(β·(log-ratio_w − log-ratio_l − λ·max(0, log π_ref(y_w|x) − log π_θ(y_w|x))))
    penalty = torch.clamp(-delta_w, min=0.0)
    losses = -F.logsigmoid(beta * (delta_w - delta_l - dpop_lambda * penalty))
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l), {"dpop/penalty": penalty.detach()})


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """Hinge: `max(0, 1 − β·(s_w − s_l))`; zero once the margin passes 1/β."""
    delta_w, delta_l, s_w, s_l = _scores(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps),
        f_divergence,
        f_alpha,
    )
    # SLiC's calibration loss max(0, δ − log π(y_w|x) + log π(y_l|x)) (Zhao et al. 2023,
    # https://arxiv.org/abs/2305.10425) on the normalised likelihood, as RSO's hinge-norm loss
    # (Liu et al. 2023, https://arxiv.org/abs/2309.06657): max(0, 1 − β·(log-ratio_w − log-ratio_l))
    losses = torch.relu(1 - beta * (s_w - s_l))
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def robust_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """Robust DPO: `(−(1 − ε)·log σ(β·m) + ε·log σ(−β·m)) / (1 − 2ε)`, m = s_w − s_l, the
    unbiased DPO loss under labels flipped with probability ε ∈ [0, 0.5) (DPO at ε = 0)."""
    delta_w, delta_l, s_w, s_l = _scores(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps),
        f_divergence,
        f_alpha,
    )
    z = beta * (s_w - s_l)
    # the rDPO loss of Chowdhury et al. 2024, https://arxiv.org/abs/2403.00409:
    # [(1−ε)·L(z) − ε·L(−z)] / (1 − 2ε), with L(z) = −log σ(z)
    clean = -(1 - label_smoothing) * F.logsigmoid(z)
    flipped = -label_smoothing * F.logsigmoid(-z)
    losses = (clean - flipped) / (1 - 2 * label_smoothing)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def exo_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """EXO on pairs: `KL(q ‖ p)` with q = (σ(β·m), σ(−β·m)) the policy's preference of y_w over y_l
    and p = (1 − ε, ε) the smoothed labels (ε > 0; the EXO paper uses 1e-3), m = s_w − s_l."""
    delta_w, delta_l, s_w, s_l = _scores(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps),
        f_divergence,
        f_alpha,
    )
    z = beta * (s_w - s_l)
    # Eq. 16 of Ji et al. 2024 (EXO), https://arxiv.org/abs/2402.00856, with K = 2:
    # q_w·(log q_w − log(1 − ε)) + q_l·(log q_l − log ε)
    log_pw, log_pl = math.log1p(-label_smoothing), math.log(label_smoothing)
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - log_pw) + torch.sigmoid(-z) * (F.logsigmoid(-z) - log_pl)
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))


def discopop_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    discopop_tau: float,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """DiscoPOP (log-ratio modulated): `(1 − σ(z/τ))·(−log σ(z)) + σ(z/τ)·e^(−z)`, z = β·(s_w − s_l):
    the logistic loss for a small margin, the exponential one for a large."""
    delta_w, delta_l, s_w, s_l = _scores(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps),
        f_divergence,
        f_alpha,
    )
    z = beta * (s_w - s_l)
    # Eq. 5 of Lu et al. 2024 (DiscoPOP), https://arxiv.org/abs/2406.08414:
    # (1 − σ(ρ/τ))·f_logistic(ρ) + σ(ρ/τ)·f_exp(ρ), ρ = β·(log-ratio_w − log-ratio_l)
    modulation = torch.sigmoid(z / discopop_tau)
    losses = -F.logsigmoid(z) * (1 - modulation) + torch.exp(-z) * modulation
    return LossOutput(losses, *implicit_rewards(beta, delta_w, delta_l))
