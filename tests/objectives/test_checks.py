"""The loss section's rules at start-up: each conflict ends with one line that names the key and
says what to write instead."""

from __future__ import annotations

import copy

import pytest

from dpolab.config import parse_override
from dpolab.errors import DpolabError
from dpolab.objectives.registry import LOSSES
from dpolab.training import config_from_dict

BASE = {"model": {"name_or_path": "some/model"}, "data": {"train": "train.jsonl"}}


def with_(**sections):
    values = copy.deepcopy(BASE)
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    return values


@pytest.mark.parametrize("method", sorted({spec.name for spec in LOSSES.values()} | {"sigmoid"}))
def test_every_method_loads_with_its_defaults(method):
    loss = {"method": method}
    if method == "exo_pair":
        loss["label_smoothing"] = 1e-3
    config = config_from_dict(with_(loss={**loss, "intermediate": {"layers": [2]}}))
    assert config.loss.method == method and config.loss.intermediate.layers == [2]


@pytest.mark.parametrize(
    "loss,message",
    [
        (
            {"method": "simpoo"},
            r"loss.method: 'simpoo' is not one of dpo, ipo, dpop, .*; did you mean 'simpo'\?",
        ),
        ({"method": ["sigmoid", "bco"]}, r"loss.method: 'bco' is not one of .*; did you mean 'bco_pair'\?"),
        ({"method": []}, "loss.method: an empty list"),
        ({"method": ["dpo", "sigmoid"]}, r"loss.method: \['dpo', 'sigmoid'\] lists dpo twice"),
        ({"method": 3}, "loss.method: expected"),
        (
            {"method": ["sigmoid", "bco_pair", "sft"], "weights": [0.8, 0.2]},
            r"loss.weights: 2 weights for 3 methods \(\[sigmoid, bco_pair, sft\]\); give one per method",
        ),
        ({"method": ["sigmoid", "sft"], "weights": [1.0, -1.0]}, r"loss.weights: \[1.0, -1.0\] must be ≥ 0"),
        ({"method": ["sigmoid", "sft"], "weights": [0, 0]}, "not all 0"),
        ({"method": "robust", "label_smoothing": 0.5}, r"loss.label_smoothing: 0.5 must be in \[0, 0.5\)"),
        ({"method": "dpo", "label_smoothing": -0.1}, r"loss.label_smoothing: -0.1 must be in \[0, 0.5\)"),
        (
            {"method": "ipo", "label_smoothing": 0.1},
            "loss.label_smoothing is only used by loss.method dpo, robust",
        ),
        ({"method": "dpo", "discopop_tau": 0.1}, "loss.discopop_tau is only used by loss.method discopop"),
        ({"method": "discopop", "discopop_tau": 0}, "loss.discopop_tau: 0.0 must be positive"),
        ({"method": "dpo", "simpo_gamma": 0.5}, "loss.simpo_gamma is only used by loss.method simpo"),
        ({"method": "simpo", "cpo_alpha": 0.5}, "loss.cpo_alpha is only used by loss.method cpo"),
        ({"method": "simpo", "simpo_gamma": -1}, "loss.simpo_gamma: -1.0 must be ≥ 0"),
        ({"method": "cpo", "cpo_alpha": -1}, "loss.cpo_alpha: -1.0 must be ≥ 0"),
        ({"method": "sft", "beta": 0.1}, r"loss.beta is only used by .* \(this config says sft\)"),
        (
            {"method": "exo_pair"},
            r"loss.method exo_pair needs loss.label_smoothing > 0 \(the EXO paper uses 1e-3\)",
        ),
        (
            {"method": "nca_pair", "f_divergence": "forward_kl"},
            "loss.f_divergence is only used by loss.method dpo, ipo, hinge",
        ),
        (
            {"method": ["sigmoid", "bco_pair"], "f_divergence": "js_divergence"},
            r"loss.f_divergence js_divergence is defined only for the losses of the margin .*, not bco_pair",
        ),
        (
            {"method": "dpo", "f_divergence": "tv"},
            "loss.f_divergence: 'tv' is not one of reverse_kl, forward_kl",
        ),
        (
            {"method": "dpo", "f_alpha": 0.3},
            "loss.f_alpha only matters with loss.f_divergence=alpha_divergence",
        ),
        (
            {"method": "dpo", "f_divergence": "alpha_divergence", "f_alpha": 0},
            r"loss.f_alpha: 0.0 must be in \(0, 1\]",
        ),
        ({"ld_alpha": 1.5}, r"loss.ld_alpha: 1.5 must be in \[0, 1\]"),
        (
            {"method": ["aot", "sft"], "use_weighting": True},
            "loss.use_weighting with loss.method aot: those losses sort the batch",
        ),
        ({"method": "orpo", "dpop_lambda": 3}, "loss.dpop_lambda is only used by loss.method dpop"),
    ],
)
def test_conflicts_fail_at_start_up(loss, message):
    with pytest.raises(DpolabError, match=message):
        config_from_dict(with_(loss=loss))


@pytest.mark.parametrize("method", ["simpo", "cpo", "orpo", "sft", ["simpo", "sft"]])
def test_reference_keys_with_a_reference_free_method_are_refused(method):
    for extra, keys in (
        ({"reference": {"precompute": True}}, "reference.precompute"),
        ({"reference": {"cache_dir": "c", "batch_size": 4}}, "reference.batch_size, reference.cache_dir"),
        ({"model": {"name_or_path": "m", "ref_name_or_path": "r"}}, "model.ref_name_or_path"),
    ):
        with pytest.raises(DpolabError, match=f"^{keys}: loss.method .* uses no reference model"):
            config_from_dict(with_(loss={"method": method}, **extra))
    # one method with a reference in the list: the reference keys are read
    mixed = [method, "dpo"] if isinstance(method, str) else [*method, "dpo"]
    assert config_from_dict(
        with_(loss={"method": mixed}, reference={"precompute": True})
    ).reference.precompute


def test_allowed_combinations_load():
    # MPO's mix; f-divergence with sft (it reads no log-ratio); cDPO; LD-DPO and WPO with any method
    for loss in (
        {"method": ["sigmoid", "bco_pair", "sft"], "weights": [0.8, 0.2, 1.0]},
        {"method": ["sigmoid", "sft"], "f_divergence": "forward_kl"},
        {"method": "sigmoid", "label_smoothing": 0.1},
        {"method": "ipo", "f_divergence": "alpha_divergence", "f_alpha": 0.3},
        {"method": "orpo", "ld_alpha": 0.5, "use_weighting": True},
        {"method": ["simpo", "sft"], "weights": [1.0, 0.5], "label_smoothing": 0.1},
        {"method": "dpop", "use_weighting": True, "intermediate": {"layers": [1, 2]}},
    ):
        config_from_dict(with_(loss=loss))


def test_a_list_of_methods_on_the_command_line():
    assert parse_override("loss.method=[sigmoid, bco_pair, sft]") == (
        ["loss", "method"],
        ["sigmoid", "bco_pair", "sft"],
    )
    config = config_from_dict(with_(loss={"method": ["sigmoid", "sft"], "weights": [1, 2]}))
    assert config.loss.weights == [1.0, 2.0]
