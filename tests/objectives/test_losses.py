"""Preference losses: hand-worked values, invariants, the registry, the layer mix, gradcheck.

Notation as in docs/notes.md: Δ_w = logp_θ(y_w|x) − logp_ref(y_w|x), Δ_l likewise. Log-probs below
are chosen so that the Δ's are small integers and the expected losses can be worked out by hand:
−log σ(z) = log(1 + e^(−z)).
"""

from __future__ import annotations

import math

import pytest
import torch

from dpolab.config.schema import LossSection
from dpolab.errors import DpolabError
from dpolab.objectives.losses import dpo_loss, dpop_loss, ipo_loss, mix_layer_losses
from dpolab.objectives.registry import LOSSES, get_loss_spec

LOG2 = 0.6931471805599453

# Three pairs, in float64 so that the literals below compare to ~1e-12.
#                   pair A   pair B   pair C
POLICY_CHOSEN = [-4.0, -3.0, -10.0]
REF_CHOSEN = [-5.0, -3.0, -8.0]  # Δ_w = [ 1,  0, -2]
POLICY_REJECTED = [-7.0, -9.0, -4.0]
REF_REJECTED = [-6.0, -9.0, -6.0]  # Δ_l = [-1,  0,  2]


def _pairs(dtype=torch.float64):
    return tuple(
        torch.tensor(x, dtype=dtype) for x in (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)
    )


def _ipo(*logps, beta):
    """IPO with one token per completion: the averaged log-ratios are the summed ones."""
    ones = torch.ones(logps[0].shape[0], dtype=torch.long)
    return ipo_loss(*logps, beta=beta, chosen_lengths=ones, rejected_lengths=ones)


def _close(actual, expected, tol=1e-12):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Hand-worked values
# ---------------------------------------------------------------------------------------------


def test_dpo_hand_worked():
    # β = 0.5, z = β·(Δ_w − Δ_l):
    #   A: 0.5·( 1 − (−1)) =  1  → log(1 + e^−1) = 0.313261687518223
    #   B: 0.5·( 0 −   0 ) =  0  → log 2         = 0.693147180559945
    #   C: 0.5·(−2 −   2 ) = −2  → log(1 + e^2)  = 2.126928011042973
    losses, chosen, rejected, metrics = dpo_loss(*_pairs(), beta=0.5)
    assert metrics == {}
    _close(losses, [0.313261687518223, 0.693147180559945, 2.126928011042973])
    # rewards β·Δ_w and β·Δ_l
    _close(chosen, [0.5, 0.0, -1.0])
    _close(rejected, [-0.5, 0.0, 1.0])


def test_ipo_hand_worked():
    # β = 0.25, so 1/(2β) = 2; loss = (Δ_w − Δ_l − 2)²:
    #   A: ( 2 − 2)² = 0;   B: ( 0 − 2)² = 4;   C: (−4 − 2)² = 36
    losses, chosen, rejected, _ = _ipo(*_pairs(), beta=0.25)
    _close(losses, [0.0, 4.0, 36.0])
    _close(chosen, [0.25, 0.0, -0.5])
    _close(rejected, [-0.25, 0.0, 0.5])


def test_ipo_averages_the_log_ratios_over_each_completion_s_tokens():
    # β = 0.25 (1/(2β) = 2); the same Δ's with |y_w| = 2 and |y_l| = 4 tokens:
    #   A: Δ_w/2 − Δ_l/4 = 0.5 + 0.25 = 0.75 → (0.75 − 2)² = 1.5625
    #   B: 0 − 0 = 0                         → (0 − 2)²    = 4
    #   C: −2/2 − 2/4 = −1.5                 → (−3.5)²     = 12.25
    n_w, n_l = torch.tensor([2, 2, 2]), torch.tensor([4, 4, 4])
    losses, chosen, _, _ = ipo_loss(*_pairs(), beta=0.25, chosen_lengths=n_w, rejected_lengths=n_l)
    _close(losses, [1.5625, 4.0, 12.25])
    # the rewards stay those of the summed log-probs (as TRL logs them)
    _close(chosen, [0.25, 0.0, -0.5])


def test_dpop_hand_worked():
    # β = 0.5, λ = 2, z = β·(Δ_w − Δ_l − λ·max(0, −Δ_w)):
    #   A: Δ_w = 1 ≥ 0, no penalty: z = 1                 → 0.313261687518223 (= DPO)
    #   B: Δ_w = 0, no penalty:     z = 0                 → log 2
    #   C: Δ_w = −2, penalty 2:     z = 0.5·(−2 − 2 − 2·2) = −4 → log(1 + e^4) = 4.018149927917809
    losses, chosen, rejected, metrics = dpop_loss(*_pairs(), beta=0.5, dpop_lambda=2.0)
    _close(losses, [0.313261687518223, 0.693147180559945, 4.018149927917809])
    _close(chosen, [0.5, 0.0, -1.0])
    _close(rejected, [-0.5, 0.0, 1.0])
    _close(metrics["dpop/penalty"], [0.0, 0.0, 2.0])  # max(0, −Δ_w)


def test_dpop_hand_worked_paper_defaults():
    # Smaug's β = 0.3, λ = 50; Δ_w = −10.1 − (−10) = −0.1, Δ_l = −13 − (−12) = −1.
    # λ inside β (the corrected form): z = 0.3·(−0.1 + 1 − 50·0.1) = 0.3·(−4.1) = −1.23
    #   → log(1 + e^1.23) = 1.486417833037087.
    # (DPO alone: z = 0.27 → 0.567232135122319; the old form with the penalty outside the sigmoid,
    #  DPO + λ·0.1 = 5.567..., is NOT what dpop_loss computes.)
    args = [torch.tensor([x], dtype=torch.float64) for x in (-10.1, -13.0, -10.0, -12.0)]
    losses = dpop_loss(*args, beta=0.3, dpop_lambda=50.0).losses
    _close(losses, [1.486417833037087])
    _close(dpo_loss(*args, beta=0.3)[0], [0.567232135122319])


# ---------------------------------------------------------------------------------------------
# Invariants, on random log-probs and odd batch sizes
# ---------------------------------------------------------------------------------------------


def _random_logps(batch: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(batch, generator=g, dtype=dtype) for _ in range(4))


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("beta", [0.1, 0.3, 2.0])
def test_dpo_and_dpop_are_log2_when_policy_is_reference(batch, beta):
    policy_c, policy_r, _, _ = _random_logps(batch, seed=batch)
    for losses in (
        dpo_loss(policy_c, policy_r, policy_c.clone(), policy_r.clone(), beta=beta)[0],
        dpop_loss(policy_c, policy_r, policy_c.clone(), policy_r.clone(), beta=beta, dpop_lambda=50.0)[0],
    ):
        assert losses.shape == (batch,)
        torch.testing.assert_close(
            losses, torch.full((batch,), LOG2, dtype=torch.float64), rtol=0, atol=1e-15
        )
    assert math.isclose(LOG2, math.log(2))


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_dpop_equals_dpo_when_chosen_kept_and_exceeds_it_otherwise(batch):
    _, policy_r, ref_c, ref_r = _random_logps(batch, seed=10 + batch)
    # Δ_w ≥ 0: policy at least as likely as the reference on the chosen completion (incl. Δ_w = 0)
    kept = torch.rand(batch, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kept[0] = 0.0
    dpo = dpo_loss(ref_c + kept, policy_r, ref_c, ref_r, beta=0.3)[0]
    dpop = dpop_loss(ref_c + kept, policy_r, ref_c, ref_r, beta=0.3, dpop_lambda=50.0)[0]
    assert torch.equal(dpop, dpo)
    # Δ_w < 0: the penalty λ·(−Δ_w) > 0 lowers the sigmoid's argument, so the loss rises
    lost = 0.01 + torch.rand(batch, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dpo = dpo_loss(ref_c - lost, policy_r, ref_c, ref_r, beta=0.3)[0]
    dpop = dpop_loss(ref_c - lost, policy_r, ref_c, ref_r, beta=0.3, dpop_lambda=50.0)[0]
    assert (dpop > dpo).all()
    # ... and with λ = 0 it is DPO again
    dpop0 = dpop_loss(ref_c - lost, policy_r, ref_c, ref_r, beta=0.3, dpop_lambda=0.0)[0]
    torch.testing.assert_close(dpop0, dpo, rtol=0, atol=1e-15)


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("beta", [0.1, 0.5, 4.0])
def test_ipo_minimum_at_half_inverse_beta(batch, beta):
    _, policy_r, ref_c, ref_r = _random_logps(batch, seed=20 + batch)
    delta_l = policy_r - ref_r
    # put Δ_w − Δ_l exactly at 1/(2β): loss 0 and zero gradient
    policy_c = (ref_c + delta_l + 1 / (2 * beta)).requires_grad_(True)
    losses = _ipo(policy_c, policy_r, ref_c, ref_r, beta=beta)[0]
    torch.testing.assert_close(losses, torch.zeros(batch, dtype=torch.float64), rtol=0, atol=1e-20)
    (grad,) = torch.autograd.grad(losses.sum(), policy_c)
    assert grad.abs().max() < 1e-9
    # either side of it the loss is positive: ε² exactly
    for eps in (-0.05, 0.05):
        moved = _ipo(policy_c.detach() + eps, policy_r, ref_c, ref_r, beta=beta)[0]
        torch.testing.assert_close(
            moved, torch.full((batch,), eps**2, dtype=torch.float64), rtol=1e-6, atol=0
        )


def _spec_call(name, *logps, **params):
    """The registered loss `name` on summed log-probs, given as its spec says (lengths of 3 and 5),
    its keys from a loss section with `params` (the rest at their defaults)."""
    spec = get_loss_spec(name)
    batch = logps[0].shape[0]
    lengths = dict(chosen_lengths=torch.full((batch,), 3), rejected_lengths=torch.full((batch,), 5))
    section = LossSection(**{k: v for k, v in params.items() if k != "chosen_nll"})
    return spec.compute(*logps, **lengths, params=spec.params(section), chosen_nll=params.get("chosen_nll"))


@pytest.mark.parametrize("name", ["dpo", "ipo", "dpop"])
def test_rewards_are_beta_times_delta_and_detached(name):
    policy_c, policy_r, ref_c, ref_r = _random_logps(7, seed=30)
    policy_c.requires_grad_(True)
    policy_r.requires_grad_(True)
    losses, chosen, rejected, _ = _spec_call(
        name, policy_c, policy_r, ref_c, ref_r, beta=0.7, dpop_lambda=5.0
    )
    assert losses.requires_grad
    assert not chosen.requires_grad and not rejected.requires_grad
    torch.testing.assert_close(chosen, 0.7 * (policy_c.detach() - ref_c), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(rejected, 0.7 * (policy_r.detach() - ref_r), rtol=1e-15, atol=1e-15)


def test_dpo_gradient_matches_the_closed_form():
    # d/d logp_θ(y_w) of −log σ(z), z = β(Δ_w − Δ_l), is −β·σ(−z); of y_l it is +β·σ(−z).
    # Pair A above (z = 1, β = 0.5): σ(−1) = 0.268941421369995 → ∓0.134470710684998.
    policy_c, policy_r, ref_c, ref_r = _pairs()
    policy_c.requires_grad_(True)
    policy_r.requires_grad_(True)
    losses = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.5)[0]
    g_c, g_r = torch.autograd.grad(losses.sum(), (policy_c, policy_r))
    assert abs(g_c[0].item() - (-0.134470710684998)) < 1e-12
    assert abs(g_r[0].item() - 0.134470710684998) < 1e-12


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_maps_config_names_to_specs():
    assert {name: spec.fn for name, spec in LOSSES.items() if name in ("dpo", "ipo", "dpop")} == {
        "dpo": dpo_loss,
        "ipo": ipo_loss,
        "dpop": dpop_loss,
    }
    assert get_loss_spec("dpop").keys == ("beta", "dpop_lambda")
    assert get_loss_spec("dpop").metrics == ("dpop/penalty",)
    assert get_loss_spec("ipo").needs_lengths and not get_loss_spec("dpo").needs_lengths
    assert all(get_loss_spec(name).needs_reference for name in ("dpo", "ipo", "dpop"))


@pytest.mark.parametrize("name", ["kto", "DPO", ""])
def test_registry_rejects_unknown_names(name):
    with pytest.raises(DpolabError, match=r"loss.method: .* is not one of dpo, ipo, dpop"):
        get_loss_spec(name)


# ---------------------------------------------------------------------------------------------
# γ-mix of the final and the intermediate layers' losses
# ---------------------------------------------------------------------------------------------


def test_mix_gamma_one_is_exactly_the_final_loss():
    final = torch.tensor([0.3, 1.7, 2.9])
    intermediates = [torch.tensor([5.0, 6.0, 7.0]), torch.tensor([0.1, 0.2, 0.3])]
    assert torch.equal(mix_layer_losses(final, intermediates, gamma=1.0), final)
    scalar = torch.tensor(0.4321)
    assert torch.equal(mix_layer_losses(scalar, [torch.tensor(9.0)], gamma=1.0), scalar)


def test_mix_gamma_zero_is_the_mean_of_intermediates():
    final = torch.tensor([0.3, 1.7, 2.9])
    # mean of [1, 2, 3] and [3, 6, 9] = [2, 4, 6]
    mixed = mix_layer_losses(final, [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 6.0, 9.0])], gamma=0.0)
    assert torch.equal(mixed, torch.tensor([2.0, 4.0, 6.0]))


def test_mix_in_between_hand_worked():
    # γ = 0.9: L_K = mean([3, 0], [5, 4]) = [4, 2]; L = 0.9·[1, 2] + 0.1·[4, 2] = [1.3, 2.0]
    final = torch.tensor([1.0, 2.0], dtype=torch.float64)
    inter = [torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([5.0, 4.0], dtype=torch.float64)]
    _close(mix_layer_losses(final, inter, gamma=0.9), [1.3, 2.0])
    # scalars, three layers: L_K = (1 + 2 + 6)/3 = 3; γ = 0.25: 0.25·7 + 0.75·3 = 4.0
    inter3 = [torch.tensor(x, dtype=torch.float64) for x in (1.0, 2.0, 6.0)]
    _close(mix_layer_losses(torch.tensor(7.0, dtype=torch.float64), inter3, gamma=0.25), 4.0)


def test_mix_without_intermediate_layers_is_the_final_loss():
    final = torch.tensor([0.5, 0.25])
    assert mix_layer_losses(final, [], gamma=0.9) is final


# ---------------------------------------------------------------------------------------------
# gradcheck (float64)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("name", ["dpo", "ipo", "dpop"])
def test_gradcheck_losses(name, batch):
    g = torch.Generator().manual_seed(batch)
    ref_c = -10 * torch.rand(batch, generator=g, dtype=torch.float64)
    ref_r = -10 * torch.rand(batch, generator=g, dtype=torch.float64)
    # Δ_w away from 0 (DPOP's kink), both signs: alternate ±(0.5 + u)
    sign = torch.tensor([(-1.0) ** i for i in range(batch)], dtype=torch.float64)
    policy_c = ref_c + sign * (0.5 + torch.rand(batch, generator=g, dtype=torch.float64))
    policy_r = ref_r + torch.randn(batch, generator=g, dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_(True) for t in (policy_c, policy_r, ref_c, ref_r))
    assert torch.autograd.gradcheck(lambda *x: _spec_call(name, *x, beta=0.3, dpop_lambda=5.0)[0], inputs)


def test_gradcheck_mix():
    g = torch.Generator().manual_seed(0)
    final = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    l1 = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    l2 = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, a, b: mix_layer_losses(f, [a, b], gamma=0.9), (final, l1, l2))
    # d L / d L_final = γ, d L / d L_k = (1 − γ)/|K|
    out = mix_layer_losses(final, [l1, l2], gamma=0.9).sum()
    g_f, g_1, g_2 = torch.autograd.grad(out, (final, l1, l2))
    _close(g_f, [0.9] * 3)
    _close(g_1, [0.05] * 3)
    _close(g_2, [0.05] * 3)
