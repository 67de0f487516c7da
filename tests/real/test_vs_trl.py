"""On the real model, dpolab's log-probs and first-step DPO loss equal TRL 1.16 DPOTrainer's, for
standard text pairs (EOS appended) and for conversational pairs rendered through SmolLM2's ChatML
template (its own `<|im_end|>` ending each completion).

The policy is SmolLM2-135M-Instruct; the reference is the same model with its final norm scaled
by 1.1 (saved once for the module), so that Δ_w − Δ_l is not zero and the loss is not log 2.
Learning rate 0 and one step of all four pairs: the logged loss and `logps/chosen`,
`logps/rejected` (batch means of the policy's summed completion log-probs) are both trainers'
first forward passes over the same tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpolab.training import config_from_dict, run

pytestmark = pytest.mark.real

STANDARD = [
    {"prompt": "Question: What is 3 + 5?\nAnswer:", "chosen": " 3 + 5 = 8", "rejected": " 3 + 5 = 9"},
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon, I think."},
    {"prompt": "Question: 7 - 2 = ?\nAnswer:", "chosen": " 5", "rejected": " 7 - 2 = 4"},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sleeps."},
]


def _chat(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


CONVERSATIONAL = [
    _chat("What is 12 + 7?", "12 + 7 = 19", "12 + 7 = 21"),
    _chat("Name the capital of France.", "The capital of France is Paris.", "It is Lyon."),
    _chat("What is 6 * 3?", "6 * 3 = 18", "6 * 3 = 16"),
    _chat("Say hello.", "Hello!", "Goodbye."),
]
BETA = 0.1
KEYS = ("loss", "logps/chosen", "logps/rejected", "rewards/margins")


@pytest.fixture(scope="module")
def reference_dir(smollm2_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.1)
    path = tmp_path_factory.mktemp("smollm2-reference")
    model.save_pretrained(path)
    return path


def _dpolab(tmp_path, policy, reference, rows) -> dict:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {
        "model": {"name_or_path": str(policy), "ref_name_or_path": str(reference)},
        "data": {"train": str(data), "max_length": None, "max_prompt_length": None},
        "loss": {"method": "dpo", "beta": BETA},
        "training": {
            "output_dir": str(tmp_path / "dpolab"),
            "per_device_train_batch_size": len(rows),
            "max_steps": 1,
            "logging_steps": 1,
            "learning_rate": 0.0,
            "disable_tqdm": True,
            "seed": 0,
            "save_strategy": "no",
        },
    }
    run(config_from_dict(config))
    lines = (tmp_path / "dpolab" / "metrics.jsonl").read_text().splitlines()
    return next(x for x in map(json.loads, lines) if x["split"] == "train")


def _trl(tmp_path, policy, reference, rows) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        learning_rate=0.0,
        per_device_train_batch_size=len(rows),
        max_steps=1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # TRL's configs default to bf16 autocast, even on the CPU
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy),
        ref_model=AutoModelForCausalLM.from_pretrained(reference),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(policy),
    )
    trainer.train()
    return trainer.state.log_history[0]


@pytest.mark.parametrize("rows", [STANDARD, CONVERSATIONAL], ids=["standard", "conversational"])
def test_logprobs_and_first_step_loss_equal_trl(tmp_path, smollm2_dir, reference_dir, rows):
    ours = _dpolab(tmp_path, smollm2_dir, reference_dir, rows)
    theirs = _trl(tmp_path, smollm2_dir, reference_dir, rows)
    for key in KEYS:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-4), key
    # a real model's log-probs of real text, and a loss away from log 2 (policy ≠ reference)
    assert -80 < ours["logps/chosen"] < 0 and abs(ours["loss"] - math.log(2)) > 1e-3
