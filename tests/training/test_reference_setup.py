"""Precomputing the reference when it is the policy's own starting weights: the policy itself
computes the log-probs (no second copy is loaded), and training sees the live reference's numbers."""

from __future__ import annotations

import json

import pytest

from dpolab.testing import tiny_model
from dpolab.training import config_from_dict, run

ROWS = [
    {"prompt": "Question: 3 + 5 = ?", "chosen": " Answer: 8", "rejected": " Answer: 9"},
    {"prompt": "Human: What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon, I think."},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sleeps."},
    {"prompt": "Question: 4 + 5 = ?", "chosen": " Answer: 9", "rejected": " Answer: 10"},
]


def _values(tmp_path, model_dir, data, *, precompute, out):
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data)},
        "loss": {"method": "dpo", "beta": 0.5, "intermediate": {"layers": [2]}},
        "reference": {"precompute": precompute, "cache_dir": str(tmp_path / "cache")},
        "training": {
            "output_dir": str(tmp_path / out),
            "per_device_train_batch_size": 2,
            "max_steps": 2,
            "logging_steps": 1,
            "learning_rate": 1e-2,
            "disable_tqdm": True,
            "seed": 0,
        },
    }


def test_precompute_uses_the_policy_itself_and_matches_the_live_reference(tmp_path, tokenizer, monkeypatch):
    model_dir = tmp_path / "model"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")

    run(config_from_dict(_values(tmp_path, model_dir, data, precompute=False, out="live")))

    def no_second_copy(section):
        raise AssertionError("a reference copy was loaded although the policy's start is the reference")

    monkeypatch.setattr("dpolab.training.reference_setup.load_frozen_reference", no_second_copy)
    run(config_from_dict(_values(tmp_path, model_dir, data, precompute=True, out="precomputed")))

    live, precomputed = (
        [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("live", "precomputed")
    )
    assert len(live) == len(precomputed) == 2
    # step 2 follows a real update, so its rewards are not trivially zero
    assert abs(live[1]["rewards/margins"]) > 1e-4
    for a, b in zip(live, precomputed):
        for key, value in a.items():
            if isinstance(value, float) and key != "epoch":
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (a["step"], key)


@pytest.mark.parametrize(
    "lora,precompute,ok", [(True, False, True), (False, False, False), (True, True, False)]
)
def test_zero3_accepts_only_lora_with_the_live_reference(monkeypatch, lora, precompute, ok):
    """ZeRO-3 partitions every model as it loads; only the policy runs in DeepSpeed's engine, so a
    frozen reference copy or a precomputation before training would see empty weights."""
    from dpolab.errors import DpolabError
    from dpolab.training.reference_setup import check_sharding

    values = {
        "model": {"name_or_path": "m"},
        "data": {"train": "t.jsonl"},
        "reference": {"precompute": precompute},
    }
    if lora:
        values["model"]["lora"] = {"r": 4}
    config = config_from_dict(values)
    check_sharding(config)  # no DeepSpeed here: nothing to say
    monkeypatch.setattr("transformers.integrations.deepspeed.is_deepspeed_zero3_enabled", lambda: True)
    if ok:
        check_sharding(config)
    else:
        with pytest.raises(DpolabError, match="ZeRO-3 dpolab supports only LoRA with the live reference"):
            check_sharding(config)
