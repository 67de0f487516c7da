"""The preference objective with every method: weighted lists of methods, intermediate layers with
each of them (the same per-layer metrics under layers/<k>/), LD-DPO and WPO for every method, no
reference for the reference-free ones. On hand-made per-token log-probs."""

from __future__ import annotations

import pytest
import torch

from dpolab.config.schema import IntermediateSettings, LossSection
from dpolab.modeling.logprobs import LayerLogprobs, segment_sums
from dpolab.objectives.losses import mix_layer_losses
from dpolab.objectives.metrics import PAIR_METRICS
from dpolab.objectives.preference import PreferenceObjective
from dpolab.objectives.registry import LOSSES, get_loss_spec
from dpolab.objectives.sequences import chosen_nll, length_desensitised_logps, wpo_weights

LENGTHS = [3, 1, 2, 2, 4, 6]  # three pairs' chosen, rejected token counts
PROMPTS = [2, 0, 5]  # each prompt's scored tokens (from its second)
METHODS = sorted({spec.name for spec in LOSSES.values()})


def _logprobs(layers, seed=0) -> LayerLogprobs:
    """Per-token log-probs (negative, small enough that per-token means stay below 0) for `layers`,
    with everything a method or modifier may read."""
    g = torch.Generator().manual_seed(seed)
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])
    tokens = -0.05 - 2 * torch.rand(len(layers), len(segments), generator=g)
    prompt_segments = torch.cat([torch.full((n,), i) for i, n in enumerate(PROMPTS)])
    prompt_tokens = -2 * torch.rand(len(layers), len(prompt_segments), generator=g)
    return LayerLogprobs(
        layers=tuple(layers),
        logps=segment_sums(tokens, segments, len(LENGTHS)),
        num_tokens=torch.tensor(LENGTHS),
        token_logps=tokens,
        segments=segments,
        log_sum_sq=-torch.rand(len(layers), len(segments), generator=g),
        prompt_logps=segment_sums(prompt_tokens, prompt_segments, len(PROMPTS)),
        prompt_num_tokens=torch.tensor(PROMPTS),
    )


def _section(method, **keys) -> LossSection:
    return LossSection(method=method, label_smoothing=0.1, **keys)


def _direct(policy, reference, spec, i, section, sums=None):
    """Layer i's per-pair losses of one method, computed from the spec by hand."""
    pol = policy.logps[i] if sums is None else sums[i]
    ref = reference[i] if reference is not None else None
    nll = None
    if spec.nll == "completion":
        nll = chosen_nll(policy.logps[i], policy.num_tokens)
    elif spec.nll == "sequence":
        nll = chosen_nll(policy.logps[i], policy.num_tokens, policy.prompt_logps[i], policy.prompt_num_tokens)
    return spec.compute(
        pol[0::2],
        pol[1::2],
        ref[0::2] if ref is not None else None,
        ref[1::2] if ref is not None else None,
        chosen_lengths=policy.num_tokens[0::2],
        rejected_lengths=policy.num_tokens[1::2],
        params=spec.params(section),
        chosen_nll=nll,
    )


@pytest.mark.parametrize("method", METHODS)
def test_intermediate_layers_with_every_method(method):
    """L = γ·L_final + (1 − γ)·mean_k L_k with each L_k the method on layer k's log-probs, and
    every per-layer metric of the final layer also under layers/<k>/."""
    spec = get_loss_spec(method)
    section = _section(method, intermediate=IntermediateSettings(layers=[1, 2], gamma=0.7))
    objective = PreferenceObjective.from_config(section, final_layer=4)
    policy = _logprobs(objective.layers, seed=1)
    reference = _logprobs(objective.layers, seed=2).logps if spec.needs_reference else None
    out = objective(policy, reference)
    per_layer = [_direct(policy, reference, spec, i, section).losses for i in range(3)]
    expected = mix_layer_losses(per_layer[2], per_layer[:2], gamma=0.7)
    torch.testing.assert_close(out.item_losses, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.loss, expected.mean(), rtol=1e-6, atol=1e-6)
    for k, losses in zip((1, 2), per_layer):
        torch.testing.assert_close(out.metrics[f"layers/{k}/loss"], losses, rtol=1e-6, atol=1e-6)
    per_layer_names = (*PAIR_METRICS, *spec.metrics)
    for name in per_layer_names:
        assert name in out.metrics and all(f"layers/{k}/{name}" in out.metrics for k in (1, 2)), name
    assert sorted(out.metrics) == sorted(objective.metric_names())
    assert all(v.shape == (3,) and not v.requires_grad for v in out.metrics.values())
    # each intermediate layer's rewards are the method's on that layer
    first = _direct(policy, reference, spec, 0, section)
    torch.testing.assert_close(
        out.metrics["layers/1/rewards/chosen"], first.chosen_rewards, rtol=1e-6, atol=1e-6
    )


def test_a_weighted_list_is_the_weighted_sum_with_the_first_method_s_rewards():
    section = LossSection(method=["sigmoid", "bco_pair", "sft"], weights=[0.8, 0.2, 1.0])
    objective = PreferenceObjective.from_config(section, final_layer=4)
    policy, reference = _logprobs((4,), seed=3), _logprobs((4,), seed=4).logps
    out = objective(policy, reference)
    parts = [_direct(policy, reference, get_loss_spec(m), 0, section) for m in ("dpo", "bco_pair", "sft")]
    expected = 0.8 * parts[0].losses + 0.2 * parts[1].losses + 1.0 * parts[2].losses
    torch.testing.assert_close(out.item_losses, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.metrics["rewards/chosen"], parts[0].chosen_rewards)
    assert objective.needs_reference and not objective.scores_prompt
    # no weights: one each
    plain = PreferenceObjective.from_config(LossSection(method=["sigmoid", "bco_pair"]), final_layer=4)
    torch.testing.assert_close(
        plain(policy, reference).item_losses, parts[0].losses + parts[1].losses, rtol=1e-6, atol=1e-6
    )


def test_metrics_of_every_method_in_a_list():
    objective = PreferenceObjective.from_config(LossSection(method=["orpo", "cpo", "dpop"]), final_layer=4)
    names = objective.metric_names()
    for name in ("log_odds_ratio", "log_odds_chosen", "nll_loss", "dpop/penalty"):
        assert names.count(name) == 1
    out = objective(_logprobs((4,), seed=5), _logprobs((4,), seed=6).logps)
    assert sorted(out.metrics) == sorted(names)
    assert objective.needs_reference and objective.scores_prompt


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "orpo", "sft"])
def test_ld_alpha_weighs_the_sums_of_every_method(method):
    """LD-DPO replaces the policy's sums by the weighted ones (the reference comes reduced alike);
    the NLL terms keep the plain sums, as TRL's sft does."""
    spec = get_loss_spec(method)
    section = _section(method, ld_alpha=0.25)
    objective = PreferenceObjective.from_config(section, final_layer=4)
    policy = _logprobs((4,), seed=7)
    reference = _logprobs((4,), seed=8).logps if spec.needs_reference else None
    out = objective(policy, reference)
    weighted = length_desensitised_logps(policy.token_logps, policy.segments, 6, 0.25)
    expected = _direct(policy, reference, spec, 0, section, sums=weighted)
    torch.testing.assert_close(out.item_losses, expected.losses, rtol=1e-6, atol=1e-6)
    if method != "sft":  # its loss does not depend on the sums it is given
        plain = _direct(policy, reference, spec, 0, section)
        assert (plain.losses - expected.losses).abs().max() > 1e-4


@pytest.mark.parametrize("method", [["dpo", "sft"], "cpo", "orpo", "nca_pair"])
def test_use_weighting_multiplies_each_pair_by_its_wpo_weight(method):
    specs = [get_loss_spec(m) for m in ([method] if isinstance(method, str) else method)]
    section = _section(method, use_weighting=True)
    objective = PreferenceObjective.from_config(section, final_layer=4)
    policy = _logprobs((4,), seed=9)
    reference = _logprobs((4,), seed=10).logps if objective.needs_reference else None
    out = objective(policy, reference)
    weights = wpo_weights(policy.token_logps, policy.log_sum_sq, policy.segments, 6)[0]
    unweighted = sum(_direct(policy, reference, spec, 0, section).losses for spec in specs)
    torch.testing.assert_close(out.item_losses, unweighted * weights, rtol=1e-6, atol=1e-6)
    without = policy
    without.log_sum_sq = None
    with pytest.raises(ValueError, match="log_sum_sq"):
        objective(without, reference)


def test_reference_free_objectives_take_no_reference():
    for method in ("simpo", "cpo", "orpo", "sft", ["simpo", "sft"]):
        objective = PreferenceObjective.from_config(LossSection(method=method), final_layer=4)
        assert not objective.needs_reference
        assert torch.isfinite(objective(_logprobs((4,)), None).loss)
    with pytest.raises(ValueError, match="compares with a reference"):
        PreferenceObjective.from_config(LossSection(method=["simpo", "dpo"]), final_layer=4)(
            _logprobs((4,)), None
        )


def test_gradients_flow_through_the_per_token_log_probs():
    objective = PreferenceObjective.from_config(
        _section(["orpo", "dpo"], ld_alpha=0.5, use_weighting=True), 4
    )
    policy = _logprobs((2, 4), seed=11)
    policy.token_logps.requires_grad_(True)
    policy.logps = segment_sums(policy.token_logps, policy.segments, 6)
    policy.prompt_logps.requires_grad_(True)
    objective = PreferenceObjective(
        objective.terms, final_layer=4, intermediate_layers=(2,), ld_alpha=0.5, use_weighting=True
    )
    out = objective(policy, _logprobs((2, 4), seed=12).logps)
    grad_tokens, grad_prompt = torch.autograd.grad(out.loss, (policy.token_logps, policy.prompt_logps))
    assert (grad_tokens != 0).all() and (grad_prompt[:, 0] != 0).all()  # the NLL reaches the prompts


def test_which_metrics_improve_downwards():
    from dpolab.objectives.metrics import lower_is_better

    for name in ("loss", "loss/final", "layers/8/loss", "dpop/penalty", "nll_loss", "layers/8/nll_loss"):
        assert lower_is_better(name), name
    for name in ("rewards/accuracies", "log_odds_ratio", "log_odds_chosen", "layers/8/rewards/margins"):
        assert not lower_is_better(name), name
