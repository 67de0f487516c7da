"""One forward pass of the policy per batch serves the final and every intermediate layer; the
reference adds one (a frozen copy's, or the policy's own with its LoRA adapters off) or none
(precomputed, or a reference-free loss: SimPO, CPO, ORPO). Counted with a hook on each model's input embeddings during the training steps."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from transformers import TrainerCallback

from dpolab.training import config_from_dict, run

PAIRS = [{"prompt": f"Question {i}:", "chosen": " yes yes", "rejected": " no no"} for i in range(8)]
STEPS, ACCUMULATION = 2, 2  # two batches per optimiser step


def _adapters_on(model) -> bool | None:
    """Whether the LoRA layers of `model` are active now (None: it has none)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return not layers[0].disable_adapters if layers else None


class ForwardCounter(TrainerCallback):
    """Counts forward passes through the policy (by whether its adapters were on) and through a
    separate reference model, per optimiser step."""

    def __init__(self):
        self.per_step: list[Counter] = []
        self.reference = None
        self._current: Counter | None = None

    def watch(self, model, name):
        def hook(module, args, output):
            if self._current is not None:  # only inside training steps
                adapters = _adapters_on(model)
                self._current[
                    name if adapters is None else f"{name}, adapters {'on' if adapters else 'off'}"
                ] += 1

        model.get_input_embeddings().register_forward_hook(hook)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.watch(model, "policy")
        if self.reference is not None:
            self.watch(self.reference, "reference")

    def on_step_begin(self, args, state, control, **kwargs):
        self._current = Counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append(self._current)
        self._current = None


@pytest.mark.parametrize(
    "kind,method,expected",
    [
        ("live", "dpo", {"policy": 1, "reference": 1}),
        ("lora", "dpo", {"policy, adapters on": 1, "policy, adapters off": 1}),
        ("precomputed", "dpo", {"policy": 1}),
        # reference-free: one forward of the policy, and no reference loaded, computed or cached
        ("live", "simpo", {"policy": 1}),
        ("live", "orpo", {"policy": 1}),  # its prompts' tokens scored in the same forward
        ("live", ["cpo", "sft"], {"policy": 1}),
        ("lora", "orpo", {"policy, adapters on": 1}),
    ],
)
def test_forward_passes_per_batch(tmp_path, monkeypatch, model_dir, kind, method, expected):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
        "loss": {"method": method, "intermediate": {"layers": [1, 3]}},  # three layers from each forward
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": STEPS,
            "gradient_accumulation_steps": ACCUMULATION,
            "per_device_train_batch_size": 2,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
        },
    }
    if kind == "lora":
        values["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    if kind == "precomputed":
        values["reference"] = {"precompute": True, "cache_dir": str(tmp_path / "cache")}
    counter = ForwardCounter()

    import dpolab.training.reference_setup

    real_loader = dpolab.training.reference_setup.load_frozen_reference

    def capture_reference(section):
        counter.reference = real_loader(section)
        return counter.reference

    monkeypatch.setattr("dpolab.training.reference_setup.load_frozen_reference", capture_reference)
    if method != "dpo":

        def no_reference(*args, **kwargs):
            raise AssertionError("a reference-free loss computed reference log-probs")

        monkeypatch.setattr("dpolab.training.reference_setup.compute_reference_logps", no_reference)
        monkeypatch.setattr("dpolab.training.reference_setup.cached_reference_logps", no_reference)
    run(config_from_dict(values), callbacks=(counter,))

    assert (counter.reference is not None) == (
        kind == "live" and method == "dpo"
    )  # no second model otherwise
    per_batch = {name: n // ACCUMULATION for name, n in counter.per_step[0].items()}
    assert len(counter.per_step) == STEPS
    assert all(step == counter.per_step[0] for step in counter.per_step)
    assert all(n % ACCUMULATION == 0 for n in counter.per_step[0].values())
    assert per_batch == expected


@pytest.mark.parametrize("command,method,said", [("sft", "dpo", False), ("train", "simpo", True)])
def test_the_log_says_no_reference_for_a_reference_free_method_only(
    tmp_path, model_dir, caplog, command, method, said
):
    """SFT has no reference either, but its log does not name a loss it does not use."""
    import logging

    import dpolab

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
        "loss": {"method": method},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "disable_tqdm": True},
    }
    logger = logging.getLogger("dpolab")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="dpolab"):
            getattr(dpolab, command)(values)
    finally:
        logger.removeHandler(caplog.handler)
    assert "learning rate" in caplog.text  # the run's start-up lines were captured
    assert (f"loss.method {method} compares the policy with no reference" in caplog.text) is said
