"""SimPO, CPO, ORPO and the NLL term: hand-worked values and invariants (gradcheck: test_losses_trl.py).

L(z) = −log σ(z) = log(1 + e^(−z)).
"""

from __future__ import annotations

import math

import torch

from dpolab.objectives import losses
from dpolab.objectives.registry import get_loss_spec


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def _close(actual, expected, tol=1e-12):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


def test_simpo_hand_worked():
    # per-token averages ā_w = [−1, −2], ā_l = [−2, −1]; β = 2, γ = 1:
    #   z = β·ā_w − β·ā_l − γ = [2 − 1, −2 − 1] = [1, −3] → L(1) = 0.313261687518223, L(−3) = 3.048587351573742
    out = losses.simpo_loss(_t(-1.0, -2.0), _t(-2.0, -1.0), beta=2.0, simpo_gamma=1.0)
    _close(out.losses, [0.313261687518223, 3.048587351573742])
    _close(out.chosen_rewards, [-2.0, -4.0])  # β·ā, as TRL's CPOTrainer logs them
    _close(out.rejected_rewards, [-4.0, -2.0])
    # label smoothing ε = 0.1: 0.9·L(1) + 0.1·L(−1) = 0.413261687518223
    smoothed = losses.simpo_loss(_t(-1.0), _t(-2.0), beta=2.0, simpo_gamma=1.0, label_smoothing=0.1)
    _close(smoothed.losses, [0.413261687518223])


def test_simpo_spec_averages_over_each_completion():
    # summed log-probs −6 over 3 tokens and −8 over 4: ā = −2, −2; β = 2, γ = 0.5 → z = −0.5
    spec = get_loss_spec("simpo")
    assert spec.length_averaged and not spec.needs_reference
    out = spec.compute(
        _t(-6.0),
        _t(-8.0),
        None,
        None,
        chosen_lengths=torch.tensor([3]),
        rejected_lengths=torch.tensor([4]),
        params={"beta": 2.0, "simpo_gamma": 0.5, "label_smoothing": 0.0},
    )
    _close(out.losses, [0.974076984180107])  # L(−0.5)


def test_cpo_hand_worked():
    # summed log-probs: chosen [−4, −3, −10], rejected [−7, −9, −4]; β = 0.5:
    #   z = β·(log π(y_w) − log π(y_l)) = 0.5·[3, 6, −6] = [1.5, 3, −3]
    #   L(1.5) = 0.201413277982752, L(3) = 0.048587351573742, L(−3) = 3.048587351573742
    # plus α·NLL, α = 0.5, NLL = 2: + 1 each
    pc, pr = _t(-4.0, -3.0, -10.0), _t(-7.0, -9.0, -4.0)
    out = losses.cpo_loss(pc, pr, beta=0.5, cpo_alpha=0.5, chosen_nll=torch.tensor(2.0, dtype=torch.float64))
    _close(out.losses, [1.201413277982752, 1.048587351573742, 4.048587351573742])
    _close(out.metrics["nll_loss"], [2.0, 2.0, 2.0])
    _close(out.chosen_rewards, [-2.0, -1.5, -5.0])  # β·log π, as TRL's CPOTrainer logs them
    # α = 0: DPO against a reference that gives every completion log-prob 0
    zero = torch.zeros(3, dtype=torch.float64)
    alone = losses.cpo_loss(
        pc, pr, beta=0.5, cpo_alpha=0.0, chosen_nll=torch.tensor(9.0, dtype=torch.float64)
    )
    torch.testing.assert_close(
        alone.losses, losses.dpo_loss(pc, pr, zero, zero, beta=0.5).losses, rtol=0, atol=0
    )


def test_orpo_hand_worked():
    # ā_w = log 0.5: odds 0.5/0.5 = 1, log odds 0;  ā_l = log 0.2: odds 0.2/0.8 = 0.25, log odds −log 4
    # log odds ratio = log 4 = 1.386294361119891; log σ(log 4) = log(4/5) = −0.223143551314210
    # λ = 0.1, NLL = 2: loss = 2 + 0.1·0.223143551314210 = 2.022314355131421
    out = losses.orpo_loss(
        _t(math.log(0.5)), _t(math.log(0.2)), beta=0.1, chosen_nll=torch.tensor(2.0, dtype=torch.float64)
    )
    _close(out.losses, [2.022314355131421])
    _close(out.metrics["log_odds_chosen"], [math.log(4)])
    _close(out.metrics["log_odds_ratio"], [math.log(0.8)])
    _close(out.metrics["nll_loss"], [2.0])
    _close(out.chosen_rewards, [0.1 * math.log(0.5)])  # β·ā, as TRL's ORPOTrainer logs them


def test_orpo_odds_are_stable_near_certainty_and_far_from_it():
    """log(1 − p) without cancellation: p = 1 − 1e-12 (ā = −1e-12) and p = e^(−50)."""
    tiny, huge = _t(-1e-12), _t(-50.0)
    out = losses.orpo_loss(tiny, huge, beta=1.0, chosen_nll=torch.tensor(0.0, dtype=torch.float64))
    # log odds(y_w) = −1e-12 − log(1e-12) ≈ 27.631021115928; log odds(y_l) = −50 − log(1 − e^−50) ≈ −50
    _close(out.metrics["log_odds_chosen"], [27.631021115928 + 50.0], tol=1e-9)
    assert torch.isfinite(out.losses).all()


def test_sft_is_the_nll_for_every_pair():
    out = losses.sft_loss(_t(-3.0, -4.0), _t(-5.0, -6.0), chosen_nll=torch.tensor(1.25, dtype=torch.float64))
    _close(out.losses, [1.25, 1.25])
    spec = get_loss_spec("sft")
    assert spec.keys == () and not spec.needs_reference and spec.nll == "completion"
    assert get_loss_spec("orpo").nll == "sequence" and get_loss_spec("cpo").nll == "completion"
