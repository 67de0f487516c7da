"""What every loss builds on: its output, the log-ratios, the implicit rewards, the f-divergence scores."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dpolab.config.schema import CHOICES


class LossOutput(NamedTuple):
    losses: torch.Tensor  # (batch,)
    chosen_rewards: torch.Tensor  # (batch,), detached
    rejected_rewards: torch.Tensor  # (batch,), detached
    metrics: Mapping[str, torch.Tensor] = MappingProxyType({})  # name -> (batch,), detached


def logratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ_w, Δ_l), each `(batch,)`."""
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def implicit_rewards(
    beta: float, delta_w: torch.Tensor, delta_l: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # implicit rewards r = β·(log π_θ − log π_ref), Eq. 5 of Rafailov et al. 2023 (without β log Z(x))
    return beta * delta_w.detach(), beta * delta_l.detach()


def smoothed_logsigmoid_loss(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """`−(1 − ε)·log σ(z) − ε·log σ(−z)`: the logistic loss when the label is flipped with
    probability ε (exactly `−log σ(z)` at ε = 0)."""
    if label_smoothing == 0.0:
        return -F.logsigmoid(z)
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


F_DIVERGENCES = CHOICES["loss.f_divergence"]  # reverse_kl (plain DPO) first

# exp() of larger arguments overflows once cast back (TRL's bounds; float64 goes further)
_EXP_CLAMP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0, torch.float64: 700.0}


def divergence_scores(
    logratio: torch.Tensor, f_divergence: str = "reverse_kl", f_alpha: float = 0.5
) -> torch.Tensor:
    """f'(u) at u = π_θ/π_ref = exp(logratio): the score that stands for the log-ratio in f-DPO
    (Wang et al. 2023, "Beyond Reverse KL", arXiv:2309.16240: the DPO loss with β·f'(u) in place
    of β·log u), computed in TRL 1.16's DPOTrainer's order of operations.

    Args:
        logratio: `(batch,)` log π_θ(y|x) − log π_ref(y|x).
        f_divergence: reverse_kl (f' = log u: DPO itself), forward_kl (f' = 1 − 1/u),
            js_divergence (f' = log(2u/(1 + u))) or alpha_divergence.
        f_alpha: α of the α-divergence, f' = (u^(α−1) − 1)/(α − 1) (reverse_kl at α = 1).
    """
    if f_divergence == "reverse_kl":
        return logratio
    if f_divergence == "forward_kl":
        return 1 - torch.exp(-logratio)  # f'(u) = 1 − 1/u
    if f_divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(logratio)  # f'(u) = log(2u/(u + 1)) = log 2 + log σ(log u)
    if f_divergence == "alpha_divergence":
        if abs(f_alpha - 1.0) < 1e-6:  # the limit α → 1 is log u
            return logratio
        coef = 1.0 / (f_alpha - 1.0)
        t = (f_alpha - 1.0) * logratio  # f'(u) = (u^(α−1) − 1)/(α − 1), u^(α−1) = exp((α − 1)·log u)
        return (torch.exp(torch.clamp(t, max=_EXP_CLAMP.get(t.dtype, 80.0))) - 1.0) * coef
    raise ValueError(f"unknown f-divergence {f_divergence!r}; one of {', '.join(F_DIVERGENCES)}")
