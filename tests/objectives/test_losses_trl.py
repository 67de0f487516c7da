"""TRL's loss types beyond DPO: hand-worked values, invariants, the f-divergence scores, gradcheck.

Notation as in docs/notes.md; L(z) = −log σ(z) = log(1 + e^(−z)). The three pairs are those of
test_losses.py: Δ_w = [1, 0, −2], Δ_l = [−1, 0, 2], so with β = 0.5 the DPO argument
z = β·(Δ_w − Δ_l) = [1, 0, −2], and the rewards r_w = β·Δ_w = [0.5, 0, −1], r_l = [−0.5, 0, 1].
L(1) = 0.313261687518223, L(−1) = 1.313261687518223, L(0.5) = 0.474076984180107,
L(−0.5) = 0.974076984180107, L(2) = 0.126928011042973, L(−2) = 2.126928011042973.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpolab.config.schema import LossSection
from dpolab.objectives import losses
from dpolab.objectives.losses import divergence_scores
from dpolab.objectives.registry import LOSSES, get_loss_spec

LOG2 = math.log(2)
POLICY_CHOSEN, REF_CHOSEN = [-4.0, -3.0, -10.0], [-5.0, -3.0, -8.0]  # Δ_w = [ 1, 0, −2]
POLICY_REJECTED, REF_REJECTED = [-7.0, -9.0, -4.0], [-6.0, -9.0, -6.0]  # Δ_l = [−1, 0,  2]


def _pairs(dtype=torch.float64):
    return tuple(
        torch.tensor(x, dtype=dtype) for x in (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)
    )


def _close(actual, expected, tol=1e-12):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Hand-worked values (β = 0.5 throughout)
# ---------------------------------------------------------------------------------------------


def test_cdpo_label_smoothing_hand_worked():
    # ε = 0.1: 0.9·L(z) + 0.1·L(−z)
    #   A: 0.9·0.313261687518223 + 0.1·1.313261687518223 = 0.413261687518223
    #   B: (0.9 + 0.1)·log 2;   C: 0.9·2.126928011042973 + 0.1·0.126928011042973 = 1.926928011042973
    out = losses.dpo_loss(*_pairs(), beta=0.5, label_smoothing=0.1)
    _close(out.losses, [0.413261687518223, LOG2, 1.926928011042973])


def test_hinge_hand_worked():
    # max(0, 1 − z): A: 1 − 1 = 0 (exactly at the margin);  B: 1;  C: 1 + 2 = 3
    _close(losses.hinge_loss(*_pairs(), beta=0.5).losses, [0.0, 1.0, 3.0])


def test_robust_hand_worked():
    # ε = 0.25: (0.75·L(z) − 0.25·L(−z)) / 0.5
    #   A: (0.75·0.313261687518223 − 0.25·1.313261687518223)/0.5 = (0.234946265638667 − 0.328315421879556)/0.5
    #      = −0.186738312481777 (the unbiased loss can go below 0)
    #   B: (0.75 − 0.25)·log 2 / 0.5 = log 2
    #   C: (0.75·2.126928011042973 − 0.25·0.126928011042973)/0.5 = 3.126928011042973
    out = losses.robust_loss(*_pairs(), beta=0.5, label_smoothing=0.25)
    _close(out.losses, [-0.186738312481777, LOG2, 3.126928011042973])


def test_exo_pair_hand_worked():
    # ε = 0.1, q = (σ(z), σ(−z)): q_w·(log q_w − log 0.9) + q_l·(log q_l − log 0.1)
    #   B: z = 0, q = (½, ½): ½·log(0.5/0.9) + ½·log(0.5/0.1) = ½·log(0.25/0.09) = 0.510825623765991
    #   A: σ(1) = 0.731058578630005: 0.731058578630005·(−0.313261687518223 + 0.105360515657826)
    #      + 0.268941421369995·(−1.313261687518223 + 2.302585092994046) = 0.114082107667498
    #   C: σ(−2) = 0.119202922022118: 0.119202922022118·(−2.126928011042973 + 0.105360515657826)
    #      + 0.880797077977882·(−0.126928011042973 + 2.302585092994046) = 1.675335647949548
    out = losses.exo_pair_loss(*_pairs(), beta=0.5, label_smoothing=0.1)
    _close(out.losses, [0.114082107667498, 0.510825623765991, 1.675335647949548])


def test_discopop_hand_worked():
    # τ = 0.05, weight σ(z/τ) of e^(−z) and 1 − σ(z/τ) of L(z):
    #   B: z = 0: ½·log 2 + ½·1 = 0.846573590279973
    #   A: σ(20) = 1 − 2.06e-9: ≈ e^(−1) = 0.367879441171442 (+ 2.06e-9·(0.313 − 0.368))
    #   C: σ(−40) = 4.2e-18: ≈ L(−2) = 2.126928011042973
    out = losses.discopop_loss(*_pairs(), beta=0.5, discopop_tau=0.05)
    _close(out.losses, [0.367879441058867, 0.846573590279973, 2.126928011042973])


def test_sigmoid_norm_hand_worked():
    # |y_w| = 2, |y_l| = 4: margin Δ_w/2 − Δ_l/4 = [0.5 + 0.25, 0, −1 − 0.5] = [0.75, 0, −1.5]
    #   L(0.375) = 0.523123264139840, L(0) = log 2, L(−0.75) = 1.136871006114900
    n_w, n_l = torch.full((3,), 2), torch.full((3,), 4)
    out = losses.sigmoid_norm_loss(*_pairs(), beta=0.5, chosen_lengths=n_w, rejected_lengths=n_l)
    _close(out.losses, [0.523123264139840, LOG2, 1.136871006114900])
    _close(out.chosen_rewards, [0.5, 0.0, -1.0])  # the rewards stay those of the summed log-probs


def test_nca_and_bco_hand_worked():
    # NCA: L(r_w) + ½·L(−r_w) + ½·L(−r_l), r_w = [0.5, 0, −1], r_l = [−0.5, 0, 1]
    #   A: 0.474076984180107 + ½·0.974076984180107 + ½·0.474076984180107 = 1.198153968360213
    #   B: log 2 + ½ log 2 + ½ log 2 = 2 log 2
    #   C: 1.313261687518223 + ½·0.313261687518223 + ½·1.313261687518223 = 2.126523375036446
    nca = losses.nca_pair_loss(*_pairs(), beta=0.5).losses
    _close(nca, [1.198153968360213, 2 * LOG2, 2.126523375036446])
    # BCO: L(r_w) + L(−r_l): A: 2·L(0.5) = 0.948153968360213;  B: 2 log 2;  C: 2·L(−1) = 2.626523375036446
    _close(losses.bco_pair_loss(*_pairs(), beta=0.5).losses, [0.948153968360213, 2 * LOG2, 2.626523375036446])


def test_sppo_hard_hand_worked():
    # 1/(2β) = 1: (Δ_w − 1)² + (Δ_l + 1)²:  A: 0 + 0 = 0;  B: 1 + 1 = 2;  C: 9 + 9 = 18
    _close(losses.sppo_hard_loss(*_pairs(), beta=0.5).losses, [0.0, 2.0, 18.0])


def test_apo_hand_worked():
    # zero: 1 − σ(r_w) + σ(r_l):  A: 2σ(−0.5) = 0.755081337596291;  B: 1;  C: 2σ(1) = 1.462117157260010
    _close(losses.apo_zero_loss(*_pairs(), beta=0.5).losses, [0.755081337596291, 1.0, 1.462117157260010])
    # down: σ(r_w) + 1 − σ(z):  A: σ(0.5) + 1 − σ(1) = 0.622459331201855 + 0.268941421369995
    #   B: ½ + ½ = 1;  C: σ(−1) + 1 − σ(−2) = 0.268941421369995 + 0.880797077977882
    _close(losses.apo_down_loss(*_pairs(), beta=0.5).losses, [0.891400752571850, 1.0, 1.149738499347877])


def test_aot_sorts_within_the_batch_hand_worked():
    # ρ = log π(y_w) − log π(y_l): policy [−1+4, −2+2, −3+3] = [3, 0, 1], reference [0, 2, −1]
    # sorted: [0, 1, 3] − [−1, 0, 2] = [1, 1, 1] → L(0.5) each = 0.474076984180107
    # (pair by pair it would be [3, −2, 2]: another loss)
    pc, pr = (
        torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64),
        torch.tensor([-4.0, -2.0, -4.0], dtype=torch.float64),
    )
    rc, rr = (
        torch.tensor([-5.0, -3.0, -2.0], dtype=torch.float64),
        torch.tensor([-5.0, -5.0, -1.0], dtype=torch.float64),
    )
    _close(losses.aot_loss(pc, pr, rc, rr, beta=0.5).losses, [0.474076984180107] * 3)
    # unpaired, on the shared pairs: sort(Δ_w) − sort(Δ_l) = [−2, 0, 1] − [−1, 0, 2] = [−1, 0, −1]
    #   → L(−0.5), log 2, L(−0.5)
    out = losses.aot_unpaired_loss(*_pairs(), beta=0.5)
    _close(out.losses, [0.974076984180107, LOG2, 0.974076984180107])
    _close(out.chosen_rewards, [0.5, 0.0, -1.0])  # the rewards are still pair by pair


# ---------------------------------------------------------------------------------------------
# f-divergence scores
# ---------------------------------------------------------------------------------------------


def test_divergence_scores_hand_worked():
    delta = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    assert divergence_scores(delta, "reverse_kl") is delta  # f'(u) = log u: DPO itself
    # forward KL, 1 − 1/u = 1 − e^(−Δ): [1 − e^−1, 0, 1 − e²]
    _close(divergence_scores(delta, "forward_kl"), [0.632120558828558, 0.0, -6.389056098930650])
    # JS, log 2 + log σ(Δ): [log 2 − L(1), 0, log 2 − L(−2)]
    _close(divergence_scores(delta, "js_divergence"), [0.379885493041722, 0.0, -1.433780830483027])
    # α = 0.5: (u^(−½) − 1)/(−½) = 2·(1 − e^(−Δ/2)): [2(1 − e^−0.5), 0, 2(1 − e)]
    _close(divergence_scores(delta, "alpha_divergence", 0.5), [0.786938680574733, 0.0, -3.436563656918090])
    # α = 1 is the limit log u
    assert divergence_scores(delta, "alpha_divergence", 1.0) is delta
    with pytest.raises(ValueError, match="unknown f-divergence"):
        divergence_scores(delta, "hellinger")


def test_dpo_with_forward_kl_hand_worked():
    # s_w = 1 − e^(−Δ_w) = [0.632120558828558, 0, −6.389056098930650],
    # s_l = 1 − e^(−Δ_l) = [−1.718281828459045, 0, 0.864664716763387]
    # z = ½·(s_w − s_l) = [1.175201193643801, 0, −3.626860407847019] → L(z)
    out = losses.dpo_loss(*_pairs(), beta=0.5, f_divergence="forward_kl")
    _close(out.losses, [0.269077719882022, LOG2, 3.653112355491867])
    _close(out.chosen_rewards, [0.5, 0.0, -1.0])  # rewards of the raw log-ratios, as TRL logs them


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------


def _random_logps(batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(batch, generator=g, dtype=torch.float64) for _ in range(4))


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_robust_and_cdpo_with_no_smoothing_are_dpo(batch):
    logps = _random_logps(batch, seed=batch)
    dpo = losses.dpo_loss(*logps, beta=0.3).losses
    assert torch.equal(losses.robust_loss(*logps, beta=0.3, label_smoothing=0.0).losses, dpo)
    assert torch.equal(losses.dpo_loss(*logps, beta=0.3, label_smoothing=0.0).losses, dpo)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_hinge_is_zero_past_the_margin_with_no_gradient(batch):
    _, policy_r, ref_c, ref_r = _random_logps(batch, seed=40 + batch)
    # margin Δ_w − Δ_l = 1/β + u, u ≥ 0
    u = torch.rand(batch, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    policy_c = (ref_c + (policy_r - ref_r) + 1 / 0.25 + u).requires_grad_(True)
    out = losses.hinge_loss(policy_c, policy_r, ref_c, ref_r, beta=0.25).losses
    assert torch.equal(out, torch.zeros(batch, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), policy_c)
    assert torch.equal(grad, torch.zeros(batch, dtype=torch.float64))
    # inside the margin it is 1 − β·margin > 0
    inside = losses.hinge_loss(policy_c.detach() - u - 1.0, policy_r, ref_c, ref_r, beta=0.25).losses
    _close(inside, [0.25] * batch)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_of_one_pair_is_dpo_and_its_mean_ignores_the_order(name):
    fn = get_loss_spec(name).fn
    one = _random_logps(1, seed=3)
    torch.testing.assert_close(
        fn(*one, beta=0.4).losses, losses.dpo_loss(*one, beta=0.4).losses, rtol=0, atol=1e-15
    )
    logps = _random_logps(7, seed=4)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    mean = fn(*logps, beta=0.4, label_smoothing=0.1).losses.mean()
    permuted = fn(*(x[perm] for x in logps), beta=0.4, label_smoothing=0.1).losses.mean()
    torch.testing.assert_close(mean, permuted, rtol=0, atol=1e-14)


def test_sigmoid_norm_with_one_token_is_dpo():
    logps, ones = _random_logps(5, seed=8), torch.ones(5, dtype=torch.long)
    out = losses.sigmoid_norm_loss(*logps, beta=0.2, chosen_lengths=ones, rejected_lengths=ones).losses
    torch.testing.assert_close(out, losses.dpo_loss(*logps, beta=0.2).losses, rtol=0, atol=1e-15)


@pytest.mark.parametrize("f", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize(
    "name,at_zero",
    [("dpo", LOG2), ("hinge", 1.0), ("robust", LOG2), ("discopop", 0.5 * LOG2 + 0.5), ("sigmoid_norm", LOG2)],
)
def test_policy_equal_to_reference_scores_zero_under_every_f_divergence(f, name, at_zero):
    """f'(1) = 0 for each f-divergence: with the policy at the reference every margin loss is its
    value at a zero margin."""
    pc, pr, _, _ = _random_logps(4, seed=9)
    spec = get_loss_spec(name)
    four = torch.full((4,), 4)
    params = spec.params(LossSection(f_divergence=f, label_smoothing=0.2))
    out = spec.compute(
        pc, pr, pc.clone(), pr.clone(), chosen_lengths=four, rejected_lengths=four, params=params
    )
    torch.testing.assert_close(out.losses, torch.full((4,), at_zero, dtype=torch.float64), rtol=0, atol=1e-15)


def test_rewards_of_every_reference_loss_are_beta_times_delta():
    logps = _random_logps(5, seed=12)
    threes = torch.full((5,), 3)
    for spec in dict.fromkeys(LOSSES.values()):
        if not spec.needs_reference:
            continue
        params = spec.params(LossSection(beta=0.7, label_smoothing=0.1))
        out = spec.compute(*logps, chosen_lengths=threes, rejected_lengths=threes, params=params)
        assert not out.chosen_rewards.requires_grad
        torch.testing.assert_close(out.chosen_rewards, 0.7 * (logps[0] - logps[2]), rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(out.rejected_rewards, 0.7 * (logps[1] - logps[3]), rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# gradcheck (float64), every registered loss and every f-divergence
# ---------------------------------------------------------------------------------------------


GRADCHECK_CASES = [
    (spec.name, f)
    for spec in dict.fromkeys(LOSSES.values())
    for f in ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
    if f == "reverse_kl" or "f_divergence" in spec.keys
]


@pytest.mark.parametrize("name,f", GRADCHECK_CASES)
def test_gradcheck_every_loss(name, f):
    spec = get_loss_spec(name)
    g = torch.Generator().manual_seed(len(name))
    batch = 5
    # below −2, so that the policy's log-probs stay negative (ORPO's odds need p < 1)
    ref_c = -2 - 10 * torch.rand(batch, generator=g, dtype=torch.float64)
    ref_r = -2 - 10 * torch.rand(batch, generator=g, dtype=torch.float64)
    # Δ_w away from 0 (DPOP's kink), margins away from hinge's; distinct values (AOT's sort)
    sign = torch.tensor([(-1.0) ** i for i in range(batch)], dtype=torch.float64)
    policy_c = ref_c + sign * (0.5 + torch.rand(batch, generator=g, dtype=torch.float64))
    policy_r = ref_r + torch.randn(batch, generator=g, dtype=torch.float64)
    nll = torch.tensor(2.5, dtype=torch.float64)
    lengths = {"chosen_lengths": torch.full((batch,), 3), "rejected_lengths": torch.full((batch,), 5)}
    params = spec.params(
        LossSection(
            beta=0.3, dpop_lambda=5.0, label_smoothing=0.1, f_divergence=f, f_alpha=0.5, discopop_tau=0.5
        )
    )
    inputs = tuple(t.clone().requires_grad_(True) for t in (policy_c, policy_r, ref_c, ref_r, nll))

    def fn(pc, pr, rc, rr, chosen_nll):
        return spec.compute(pc, pr, rc, rr, **lengths, params=params, chosen_nll=chosen_nll).losses

    assert torch.autograd.gradcheck(fn, inputs)
