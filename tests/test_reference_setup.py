"""Precomputing the reference when it is the policy's own starting weights: the policy itself
computes the log-probs (no second copy is loaded), and training sees the live reference's numbers."""

from __future__ import annotations

import json

import pytest

from dpolab.config import config_from_dict
from dpolab.runner import run
from dpolab.tiny import tiny_model

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
        "loss": {"method": "dpo", "beta": 0.5, "intermediate_layers": [2]},
        "reference": {"precompute": precompute, "cache_dir": str(tmp_path / "cache")},
        "training": {"output_dir": str(tmp_path / out), "per_device_train_batch_size": 2, "max_steps": 2,
                     "logging_steps": 1, "learning_rate": 1e-2, "disable_tqdm": True, "seed": 0},
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

    monkeypatch.setattr("dpolab.models.load_frozen_reference", no_second_copy)
    run(config_from_dict(_values(tmp_path, model_dir, data, precompute=True, out="precomputed")))

    live, precomputed = ([json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                         for name in ("live", "precomputed"))
    assert len(live) == len(precomputed) == 2
    # step 2 follows a real update, so its rewards are not trivially zero
    assert abs(live[1]["rewards/margins"]) > 1e-4
    for a, b in zip(live, precomputed):
        for key, value in a.items():
            if isinstance(value, float) and key != "epoch":
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (a["step"], key)
