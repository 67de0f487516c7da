"""A new loss is one pure function and one `register_loss` entry: nothing else lists methods.

The test registers a loss at run time (the registry restored afterwards) and trains with it end to
end through `dpolab train`'s own path: config validation, the objective, the metrics, the reference.
"""

from __future__ import annotations

import json

import pytest
import torch

import dpolab.objectives.registry as registry
from dpolab.errors import DpolabError
from dpolab.objectives.losses import LossOutput
from dpolab.objectives.registry import LossSpec, register_loss
from dpolab.training import config_from_dict, run


def squared_margin_loss(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *, beta
) -> LossOutput:
    """(β·(Δ_w − Δ_l) − 1)², a margin loss made up for this test, with one extra metric."""
    delta_w = policy_chosen_logps - reference_chosen_logps
    delta_l = policy_rejected_logps - reference_rejected_logps
    margin = beta * (delta_w - delta_l)
    return LossOutput(
        (margin - 1.0) ** 2, beta * delta_w.detach(), beta * delta_l.detach(), {"margin/raw": margin.detach()}
    )


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "LOSSES", dict(registry.LOSSES))


def test_a_loss_registered_at_run_time_trains_end_to_end(tmp_path, model_dir, fresh_registry):
    register_loss(LossSpec("squared_margin", squared_margin_loss, metrics=("margin/raw",)))
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}:", "chosen": " yes yes", "rejected": " no"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "eval": str(data), "max_length": 32, "max_prompt_length": 16},
        "loss": {"method": "squared_margin", "beta": 0.5, "intermediate": {"layers": [2]}},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "logging_steps": 1,
            "eval_steps": 2,
            "learning_rate": 1e-2,
            "disable_tqdm": True,
        },
    }
    run(config_from_dict(values))
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first = lines[0]
    # step 1: the policy is its own reference, Δ = 0, so every layer's loss is (0 − 1)² = 1
    assert first["loss"] == pytest.approx(1.0, abs=1e-6) and first["layers/2/loss"] == pytest.approx(
        1.0, abs=1e-6
    )
    assert first["margin/raw"] == 0.0 and first["layers/2/margin/raw"] == 0.0
    evals = [x for x in lines if x["split"] == "eval"]
    assert evals and "margin/raw" in evals[-1] and evals[-1]["loss"] != pytest.approx(1.0)
    # a key the new loss does not take is refused, naming the loss that does
    values["loss"]["dpop_lambda"] = 10
    with pytest.raises(DpolabError, match=r"loss\.dpop_lambda is only used by loss\.method dpop"):
        config_from_dict(values)


def test_a_name_is_registered_once(fresh_registry):
    with pytest.raises(ValueError, match="registered already"):
        register_loss(LossSpec("dpo", squared_margin_loss))
    with pytest.raises(ValueError, match="not keys of the loss section"):
        register_loss(LossSpec("mine", squared_margin_loss, keys=("beta", "temperature")))


def test_spec_compute_gives_what_the_spec_says():
    """length_averaged divides each log-prob by its completion's tokens; needs_lengths passes them."""
    seen = {}

    def spy(*logps, **kwargs):
        seen["logps"], seen["kwargs"] = [x.tolist() for x in logps], kwargs
        return LossOutput(logps[0], logps[0], logps[1])

    lengths = {"chosen_lengths": torch.tensor([2, 4]), "rejected_lengths": torch.tensor([1, 5])}
    pol = (torch.tensor([-4.0, -8.0]), torch.tensor([-3.0, -10.0]))
    ref = (torch.tensor([-2.0, -4.0]), torch.tensor([-1.0, -5.0]))
    LossSpec("a", spy, length_averaged=True).compute(*pol, *ref, **lengths, params={"beta": 0.1})
    # −4/2, −8/4 | −3/1, −10/5 | −2/2, −4/4 | −1/1, −5/5
    assert seen["logps"] == [[-2.0, -2.0], [-3.0, -2.0], [-1.0, -1.0], [-1.0, -1.0]]
    assert seen["kwargs"] == {"beta": 0.1}
    LossSpec("b", spy, needs_reference=False, needs_lengths=True).compute(
        *pol, None, None, **lengths, params={}
    )
    assert seen["logps"] == [[-4.0, -8.0], [-3.0, -10.0]] and set(seen["kwargs"]) == set(lengths)
