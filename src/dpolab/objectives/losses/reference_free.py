"""Losses with no reference model: SimPO, CPO, ORPO, and the NLL of the chosen completions (`sft`).

Each takes the policy's two `(batch,)` log-probs (per-token averages where its `LossSpec` says
`length_averaged`: SimPO, ORPO) and, where it has an NLL term, `chosen_nll`: the batch's mean
negative log-likelihood per token of the chosen completions (a scalar, as TRL computes it: one
mean over every chosen token of the batch; for ORPO over the prompts' tokens too). The rewards
are β times the log-probs given, as TRL's CPOTrainer and ORPOTrainer log them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dpolab.objectives.losses.base import LossOutput, smoothed_logsigmoid_loss


def _rewards(beta: float, chosen: torch.Tensor, rejected: torch.Tensor):
    return beta * chosen.detach(), beta * rejected.detach()


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float,
    simpo_gamma: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """SimPO: `−log σ(β·ā_w − β·ā_l − γ)`, ā the per-token average log-prob, γ the target margin
    (label-smoothed as `dpo_loss`, as TRL's CPOTrainer does).

    Args:
        policy_*_logps: `(batch,)` per-token average completion log-probs.
        beta: β (> 0); the paper uses 2.0 to 2.5.
        simpo_gamma: γ (≥ 0), the reward margin; the paper uses γ/β ≈ 0.5.
        label_smoothing: ε ∈ [0, 0.5).
    """
    # Eq. 6 of Meng et al. 2024 (SimPO), https://arxiv.org/abs/2405.14734:
    # −log σ(β/|y_w|·log π_θ(y_w|x) − β/|y_l|·log π_θ(y_l|x) − γ), written as TRL does: β·(ā_w − ā_l − γ/β)
    logits = (policy_chosen_logps - policy_rejected_logps) - simpo_gamma / beta
    losses = smoothed_logsigmoid_loss(beta * logits, label_smoothing)
    return LossOutput(losses, *_rewards(beta, policy_chosen_logps, policy_rejected_logps))


def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float,
    cpo_alpha: float,
    chosen_nll: torch.Tensor,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """CPO: `−log σ(β·(log π(y_w|x) − log π(y_l|x))) + α·NLL(y_w)`, the DPO loss with a uniform
    reference, plus the likelihood of the chosen completions (its behaviour-cloning term).

    Args:
        policy_*_logps: `(batch,)` summed completion log-probs.
        beta: β (> 0).
        cpo_alpha: α (≥ 0), the weight of the NLL term (TRL's default 1).
        chosen_nll: `()` the batch's mean NLL per chosen token.
        label_smoothing: ε ∈ [0, 0.5).
    Returns:
        the loss with the metric `nll_loss` (the NLL, per pair).
    """
    # Eq. 3 of Xu et al. 2024 (CPO), https://arxiv.org/abs/2401.08417: L_prefer = −log σ(β log π_θ(y_w|x) − β log π_θ(y_l|x));
    # L_CPO = L_prefer + α·L_NLL, L_NLL = −log π_θ(y_w|x) (per token, as TRL's CPOTrainer averages it)
    prefer = smoothed_logsigmoid_loss(beta * (policy_chosen_logps - policy_rejected_logps), label_smoothing)
    nll = chosen_nll.expand_as(prefer)
    losses = prefer + cpo_alpha * nll
    rewards = _rewards(beta, policy_chosen_logps, policy_rejected_logps)
    return LossOutput(losses, *rewards, {"nll_loss": nll.detach()})


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) for x < 0, without cancellation: log1p(−e^x) below −log 2, log(−expm1(x)) above."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_nll: torch.Tensor,
) -> LossOutput:
    """ORPO: `NLL(y_w) − λ·log σ(log odds(y_w|x) − log odds(y_l|x))`, odds(y|x) = p/(1 − p) with
    p = exp(ā), ā the per-token average log-prob.

    Args:
        policy_*_logps: `(batch,)` per-token average completion log-probs (< 0).
        beta: λ (> 0), the weight of the odds-ratio term (the paper's and TRL's default 0.1).
        chosen_nll: `()` the batch's mean NLL per token of the chosen sequences (prompt + completion,
            as ORPO's and TRL's code compute it).
    Returns:
        the loss with the metrics `log_odds_ratio` (log σ of the log odds ratio), `log_odds_chosen`
        (the log odds ratio) and `nll_loss`, per pair, as TRL's ORPOTrainer names them.
    """
    # Eq. 4 of Hong et al. 2024 (ORPO), https://arxiv.org/abs/2403.07691: odds_θ(y|x) = P_θ(y|x) / (1 − P_θ(y|x)), so
    # log odds_θ(y_w|x) − log odds_θ(y_l|x) = (ā_w − ā_l) − (log(1 − e^ā_w) − log(1 − e^ā_l))
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        _log1mexp(policy_chosen_logps) - _log1mexp(policy_rejected_logps)
    )
    ratio = F.logsigmoid(log_odds)
    # Eqs. 6–7 of Hong et al. 2024: L_ORPO = L_SFT + λ·L_OR, L_OR = −log σ(log odds ratio)
    nll = chosen_nll.expand_as(ratio)
    losses = nll - beta * ratio
    metrics = {
        "log_odds_ratio": ratio.detach(),
        "log_odds_chosen": log_odds.detach(),
        "nll_loss": nll.detach(),
    }
    return LossOutput(losses, *_rewards(beta, policy_chosen_logps, policy_rejected_logps), metrics)


def sft_loss(
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, chosen_nll: torch.Tensor
) -> LossOutput:
    """The NLL of the chosen completions, the same for every pair: TRL's `sft` loss type (the SFT
    term of MPO's [sigmoid, bco_pair, sft] mix). Its rewards are the log-probs themselves (it has no β)."""
    losses = chosen_nll.expand_as(policy_chosen_logps)
    return LossOutput(losses, policy_chosen_logps.detach(), policy_rejected_logps.detach())
