"""Loading the policy: fresh LoRA adapters are drawn from `training.seed`, whatever the process did
before, so that two runs with the same seed start from the same adapters."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from dpolab.training import config_from_dict, run

PAIRS = [{"prompt": f"Question {i}:", "chosen": " yes yes", "rejected": " no no"} for i in range(4)]


def _lora_run(tmp_path, model_dir, name, *, seed):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS), encoding="utf-8")
    values = {
        "model": {"name_or_path": str(model_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
        "training": {
            "output_dir": str(tmp_path / name),
            "per_device_train_batch_size": 4,
            "max_steps": 1,
            "learning_rate": 0.0,  # the saved adapter is the initial one
            "disable_tqdm": True,
            "seed": seed,
        },
    }
    run(config_from_dict(values))
    return load_file(tmp_path / name / "adapter_model.safetensors")


def test_same_seed_gives_the_same_initial_adapters(tmp_path, model_dir):
    torch.manual_seed(1)  # the process's random state before each run differs ...
    first = _lora_run(tmp_path, model_dir, "first", seed=7)
    torch.manual_seed(2)
    second = _lora_run(tmp_path, model_dir, "second", seed=7)
    other = _lora_run(tmp_path, model_dir, "other", seed=8)

    lora_a = [name for name in first if "lora_A" in name]
    assert lora_a and first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)  # ... the adapters do not
    assert not all(torch.equal(first[name], other[name]) for name in lora_a)
