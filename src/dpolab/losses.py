"""Preference losses as pure functions of per-pair log-probabilities.

Every loss takes four tensors of shape `(batch,)`:

    policy_chosen_logps      log π_θ(y_w | x)
    policy_rejected_logps    log π_θ(y_l | x)
    reference_chosen_logps   log π_ref(y_w | x)
    reference_rejected_logps log π_ref(y_l | x)

and returns `(losses, chosen_rewards, rejected_rewards)`, each of shape `(batch,)`. The batch loss
is `losses.mean()`. The rewards are the implicit rewards `β·(log π_θ − log π_ref)` of whatever
log-probs the loss was given, detached (they are metrics, not part of the objective).

Notation (../shared/NOTES.md): Δ_w = log π_θ(y_w|x) − log π_ref(y_w|x), Δ_l likewise.
Hyper-parameters are keyword-only so that a call site always names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LossOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _logratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ_w, Δ_l), each `(batch,)`."""
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


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
    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each `(batch,)`.
    """
    delta_w, delta_l = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 7 of Rafailov et al. 2023, https://arxiv.org/abs/2305.18290: L = −log σ(β log-ratio_w − β log-ratio_l)
    losses = -F.logsigmoid(beta * (delta_w - delta_l))
    # implicit rewards r = β·(log π_θ − log π_ref), Eq. 5 of Rafailov et al. 2023 (without β log Z(x))
    return losses, beta * delta_w.detach(), beta * delta_l.detach()


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> LossOutput:
    """IPO: `(Δ_w − Δ_l − 1/(2β))²` per pair; its minimum sits at Δ_w − Δ_l = 1/(2β).

    Callers pass log-probs AVERAGED over each completion's tokens (as the reference DPO code and TRL
    do), not summed.

    Args:
        *_logps: `(batch,)` length-averaged completion log-probs.
        beta: the regularisation strength τ of the IPO paper (> 0).
    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each `(batch,)`; rewards of the averaged log-probs.
    """
    delta_w, delta_l = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 17 of Azar et al. 2023, https://arxiv.org/abs/2310.12036: (h_π(y_w, y_l, x) − τ⁻¹/2)²
    losses = (delta_w - delta_l - 1.0 / (2.0 * beta)) ** 2
    # implicit rewards r = β·(log π_θ − log π_ref), Eq. 5 of Rafailov et al. 2023 (without β log Z(x))
    return losses, beta * delta_w.detach(), beta * delta_l.detach()


def dpop_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    lambda_: float,
) -> LossOutput:
    """DPO-Positive: `−log σ(β·(Δ_w − Δ_l − λ·max(0, −Δ_w)))` per pair, λ inside β.

    The penalty is zero while the policy keeps the chosen completion at least as likely as the
    reference does (Δ_w ≥ 0), where DPOP equals DPO; below that it exceeds DPO.

    Args:
        *_logps: `(batch,)` summed completion log-probs.
        beta: β (> 0); the Smaug paper uses 0.3.
        lambda_: the penalty weight λ (≥ 0); the Smaug paper uses 50.
    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each `(batch,)`.
    """
    delta_w, delta_l = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # Eq. 3 of Pal et al. 2024 (Smaug), https://arxiv.org/abs/2402.13228v2, the corrected July 2024 form:
    # −log σ(β·(log-ratio_w − log-ratio_l − λ·max(0, log π_ref(y_w|x) − log π_θ(y_w|x))))
    penalty = torch.clamp(-delta_w, min=0.0)
    losses = -F.logsigmoid(beta * (delta_w - delta_l - lambda_ * penalty))
    # implicit rewards r = β·(log π_θ − log π_ref), Eq. 5 of Rafailov et al. 2023 (without β log Z(x))
    return losses, beta * delta_w.detach(), beta * delta_l.detach()


LossFn = Callable[..., LossOutput]

# Config name (`loss.method`) -> loss function. Looked up once, when the trainer is built.
LOSSES: dict[str, LossFn] = {"dpo": dpo_loss, "ipo": ipo_loss, "dpop": dpop_loss}

# Methods whose log-probs are length-averaged before the loss (NOTES.md: IPO).
LENGTH_AVERAGED = frozenset({"ipo"})


def get_loss(method: str) -> LossFn:
    """The loss function registered under `method` (`dpo`, `ipo` or `dpop`)."""
    try:
        return LOSSES[method]
    except KeyError:
        raise ValueError(f"unknown loss method {method!r}; choose one of {sorted(LOSSES)}") from None


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
