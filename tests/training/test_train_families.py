"""One `dpolab train` step with a live reference for each of the 23 families of issue 15 (tiny
configs with the settings under which their specialities matter; LoRA on every linear layer for a
few): the first logged figures are the exact ones — the loss is log 2 (policy = reference at the
first step) plus, for a mixture-of-experts model, its weighted load-balancing loss as TRL adds
it; `logps/chosen` is what the model's own forward gives — and the step moves the weights."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpolab.data.formats import normalise
from dpolab.data.tokenize import tokenize_pair
from dpolab.modeling.loading import load_tokenizer
from dpolab.testing import FAMILIES, FAMILY_SETTINGS, tiny_model
from dpolab.training import config_from_dict, run

ROWS = [
    {"prompt": "Question: 3 + 5 = ?", "chosen": " Answer: 8", "rejected": " The answer is 9, I think."},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sleeps."},
]
LORA = {
    "gemma2",
    "mixtral",
    "opt",
    "bloom",
    "phi3",
}  # LoRA target_modules all-linear: adapters off = reference
MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}


def _own_sums(model, pairs):
    """Mean over pairs of the chosen completion's summed log-prob, from the model's own forward."""
    sums = []
    for pair in pairs:
        ids = torch.tensor([pair.prompt_ids + pair.chosen_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
        n = len(pair.prompt_ids)
        sums.append(sum(logp[n - 1 + j, t].item() for j, t in enumerate(pair.chosen_ids)))
    return sum(sums) / len(sums)


def _trl_aux_loss(model, pairs):
    """The model's own aux_loss on TRL's batch: chosen rows, then rejected rows, right-padded."""
    rows = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_router_logits=True).aux_loss.item()


@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_with_a_live_reference(tmp_path, tokenizer, family, caplog):
    model_dir = tmp_path / "model"
    tiny_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        **FAMILY_SETTINGS[family],
    ).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32},
        "loss": {"method": "dpo", "beta": 0.1},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "per_device_train_batch_size": len(ROWS),
            "max_steps": 1,
            "logging_steps": 1,
            "learning_rate": 0.05,
            "disable_tqdm": True,
            "seed": 0,
        },
    }
    if family in LORA:
        values["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    with caplog.at_level(logging.INFO, logger="dpolab"):
        run(config_from_dict(values))
    reference_line = "the policy with its LoRA adapters disabled" if family in LORA else "a frozen copy of"
    assert f"reference: {reference_line}" in caplog.text
    rows_line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("rows: "))
    assert ("chosen and rejected in separate rows" in rows_line) == (family == "bloom"), rows_line
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = next(line for line in lines if line["split"] == "train")

    start = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    # the tokenizer as the run loads it: next to a Qwen2 config it splits digits as Qwen2's does
    loaded = load_tokenizer(str(model_dir))
    pairs = [tokenize_pair(normalise(r), loaded, max_length=64, max_prompt_length=32) for r in ROWS]
    assert logged["logps/chosen"] == pytest.approx(_own_sums(start, pairs), rel=1e-5, abs=1e-5)
    expected_loss = math.log(2)
    if family in MOE:
        aux = _trl_aux_loss(start, pairs)
        assert logged["aux_loss"] == pytest.approx(aux, rel=1e-5)
        expected_loss += FAMILY_SETTINGS[family]["router_aux_loss_coef"] * aux
    else:
        assert "aux_loss" not in logged
    assert logged["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)

    # the step trained: the saved weights (or adapter) are not the starting ones
    out = tmp_path / "out"
    if family in LORA:
        from peft import PeftModel

        trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out)
        moved = any(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)
    else:
        trained = AutoModelForCausalLM.from_pretrained(out)
        before = dict(start.named_parameters())
        moved = any(not torch.equal(p, before[n]) for n, p in trained.named_parameters())
    assert moved


def _save(path, tokenizer, family, seed=0, **settings):
    tiny_model(
        family, vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=seed, **settings
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", ["gemma2", "bloom", "mixtral"])
def test_first_step_equals_trl(tmp_path, tokenizer, family):
    """Against TRL 1.16's DPOTrainer (policy ≠ reference, learning rate 0): Gemma 2's softcapped
    logits, Bloom's separate rows, Mixtral's load-balancing loss added to the loss and logged."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    settings = FAMILY_SETTINGS[family]
    policy = _save(tmp_path / "policy", tokenizer, family, seed=0, **settings)
    ref = _save(tmp_path / "ref", tokenizer, family, seed=1, **settings)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    common = {
        "per_device_train_batch_size": len(ROWS),
        "max_steps": 1,
        "logging_steps": 1,
        "learning_rate": 0.0,
    }
    run(
        config_from_dict(
            {
                "model": {"name_or_path": str(policy), "ref_name_or_path": str(ref)},
                "data": {"train": str(data), "max_length": None, "max_prompt_length": None},
                "loss": {"method": "dpo", "beta": 0.1},
                "training": {**common, "output_dir": str(tmp_path / "out"), "disable_tqdm": True, "seed": 0},
            }
        )
    )
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    ours = next(line for line in lines if line["split"] == "train")
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy),
        ref_model=AutoModelForCausalLM.from_pretrained(ref),
        args=DPOConfig(
            **common,
            output_dir=str(tmp_path / "trl"),
            beta=0.1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
            seed=0,
        ),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=load_tokenizer(str(policy)),
    )
    trainer.train()
    theirs = trainer.state.log_history[0]
    keys = ["loss", "rewards/margins", "logps/chosen", "logps/rejected"] + (
        ["aux_loss"] if family in MOE else []
    )
    for key in keys:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-5), key


def test_intermediate_layers_are_refused_where_the_logit_lens_is_not_defined(tmp_path, tokenizer):
    """RoBERTa's head applies a GELU outside any module before its norm: dpolab trains its final
    layer (in separate rows: it counts positions its own way) but refuses intermediate layers."""
    from dpolab.errors import DpolabError

    model = _save(tmp_path / "roberta", tokenizer, "roberta", is_decoder=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    values = {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32},
        "loss": {"method": "dpo", "intermediate": {"layers": [1]}},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "disable_tqdm": True},
    }
    with pytest.raises(
        DpolabError, match=r"^RobertaForCausalLM: intermediate layers .* not defined for it: between"
    ):
        run(config_from_dict(values))
