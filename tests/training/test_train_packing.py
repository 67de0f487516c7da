"""`data.pack_tokens` in whole runs: a packed run logs what the same run with one pair a row logs
(train and eval, live and precomputed reference, intermediate layers, SFT), its batches are
grouped by length and the same for a seed, and what cannot be packed says so in one line."""

from __future__ import annotations

import json
import logging

import pytest
from test_train import ROWS, base_config, save_model, write_jsonl
from transformers.trainer_pt_utils import LengthGroupedSampler

from dpolab.errors import DpolabError
from dpolab.testing import tiny_model
from dpolab.training import PREFERENCE, SFT, config_from_dict, run
from dpolab.training.arguments import settings_lines, training_arguments
from dpolab.training.run import build_trainer, prepare, train_and_save

# ROWS take 30, 34, 46, 36, 45 and 32 tokens as pairs: three rows of two pairs at 80 a row
PACK = 80


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """A policy and a different reference (other random weights)."""
    root = tmp_path_factory.mktemp("packing-models")
    return save_model(root / "policy", tokenizer, seed=0), save_model(root / "ref", tokenizer, seed=1)


def metric_lines(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_lines(packed: list[dict], apart: list[dict]) -> None:
    assert [(x["step"], x["split"]) for x in packed] == [(x["step"], x["split"]) for x in apart]
    for got, expected in zip(packed, apart):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, float) and "runtime" not in key and "per_second" not in key:
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (got["step"], got["split"], key)


CASES = {
    # intermediate DPO against a frozen copy of another model, evaluated at each step
    "live": ({"loss": {"method": "dpo", "beta": 0.5, "intermediate": {"layers": [1, 3]}}}, "ref"),
    # the reference's log-probs precomputed through the packing collator, cached apart per run
    "precomputed": ({"loss": {"method": "dpo", "beta": 0.5}, "reference": {"precompute": True}}, "ref"),
    # LoRA: the reference is the policy with its adapters off, on the same packed rows
    "lora": ({"loss": {"method": "dpo", "beta": 0.5}}, "adapters"),
    # ORPO scores the prompts' own tokens as well (no reference)
    "orpo": ({"loss": {"method": "orpo", "beta": 0.5}}, None),
    "sft": ({}, None),
}


@pytest.mark.parametrize("case", CASES)
def test_a_packed_run_logs_what_one_pair_a_row_logs(tmp_path, models, case):
    """The whole data in one batch, so that grouping by length changes no batch: two steps (the
    second after an update, so the gradients agree too) and an evaluation after each."""
    sections, reference = CASES[case]
    policy_dir, ref_dir = models
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    lines = []
    for pack in (None, PACK):
        values = base_config(tmp_path, policy_dir, data, **sections)
        values["data"].update(eval=str(data), pack_tokens=pack)
        values["training"].update(
            output_dir=str(tmp_path / f"out-{pack}"),
            max_steps=2,
            learning_rate=1e-3,
            per_device_eval_batch_size=len(ROWS),
        )
        if reference == "ref":
            values["model"]["ref_name_or_path"] = str(ref_dir)
        elif reference == "adapters":
            values["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
        if "reference" in values:
            values["reference"]["cache_dir"] = str(tmp_path / f"cache-{pack}")
        prepared = prepare(config_from_dict(values), SFT if case == "sft" else PREFERENCE)
        train_and_save(prepared, build_trainer(prepared))
        lines.append(metric_lines(tmp_path / f"out-{pack}"))
        rows = prepared.collator(list(prepared.data.train))["input_ids"].shape[0]
        assert rows == (len(ROWS) if pack is None else 3)  # the same collator serves eval and the reference
    apart, packed = lines
    assert {x["split"] for x in apart} == {"train", "eval"} and len(apart) == 4
    assert_same_lines(packed, apart)


def test_packing_groups_batches_by_length(tmp_path, tokenizer, model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    values = base_config(tmp_path, model_dir, data)
    values["data"]["pack_tokens"] = PACK
    config = config_from_dict(values)
    args = training_arguments(config, SFT, has_eval=False)
    assert args.train_sampling_strategy == "group_by_length"
    assert (
        "rows: up to 80 tokens a row; batches drawn group_by_length (with data.pack_tokens; set "
        in (settings_lines(args, config, SFT, has_eval=False)[1])
    )
    values["training"]["train_sampling_strategy"] = "random"  # a choice of the user's is kept
    kept = config_from_dict(values)
    assert training_arguments(kept, SFT, has_eval=False).train_sampling_strategy == "random"
    # the Trainer samples by the pairs' lengths
    trainer = build_trainer(prepare(config))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == [30, 34, 46, 36, 45, 32]


def test_packed_runs_are_the_same_for_a_seed(tmp_path, tokenizer, model_dir, caplog):
    """Batches of two pairs grouped by length, 40 tokens a row (the pairs of 46 and 45 tokens go in
    rows of their own, said once): two runs with one seed log the same numbers."""
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    lines = []
    for attempt in range(2):
        values = base_config(tmp_path, model_dir, data)
        values["data"]["pack_tokens"] = 40
        values["training"].update(
            output_dir=str(tmp_path / f"out-{attempt}"),
            per_device_train_batch_size=2,
            max_steps=3,
            learning_rate=1e-3,
        )
        with caplog.at_level(logging.WARNING, logger="dpolab"):
            run(config_from_dict(values))
        lines.append(metric_lines(tmp_path / f"out-{attempt}"))
    assert len(lines[0]) == 3
    assert_same_lines(lines[1], lines[0])
    assert (
        "data.pack_tokens 40: 2 of 6 training examples are longer (up to 46 tokens); each goes in a row of its own"
        in caplog.text
    )


def test_what_cannot_be_packed_says_so(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    bloom = tmp_path / "bloom"
    tiny_model("bloom", vocab_size=len(tokenizer)).save_pretrained(bloom)
    tokenizer.save_pretrained(bloom)
    values = base_config(tmp_path, bloom, data)
    values["data"]["pack_tokens"] = PACK
    with pytest.raises(DpolabError) as err:
        run(config_from_dict(values))
    assert str(err.value) == (
        "data.pack_tokens: BloomForCausalLM cannot take packed rows (its forward takes no position_ids); "
        "remove data.pack_tokens"
    )
    values["data"]["pack_tokens"] = 1
    with pytest.raises(DpolabError, match=r"data.pack_tokens: 1 is too small"):
        run(config_from_dict(values))


def test_flex_attention_does_not_train_on_a_cpu(tmp_path, tokenizer, model_dir):
    """Said before any weights load: torch's FlexAttention has no backward on a CPU."""
    values = base_config(tmp_path, model_dir, write_jsonl(tmp_path / "train.jsonl", ROWS))
    values["model"]["attn_implementation"] = "flex_attention"
    values["training"]["use_cpu"] = True
    with pytest.raises(
        DpolabError, match=r"^model.attn_implementation flex_attention: torch .*'s FlexAttention has no"
    ):
        run(config_from_dict(values))
