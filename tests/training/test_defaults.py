"""The defaults a TRL user expects: TRL's learning rates (DPOConfig 1e-6, SFTConfig 2e-5),
checkpoints saved so that a resume finds one, and the log at start saying when the run evaluates
and saves, and where each value came from."""

from __future__ import annotations

import dataclasses
import json
import logging

from dpolab.training import PREFERENCE, SFT, config_from_dict, run
from dpolab.training.arguments import settings_lines, training_arguments

ROWS = [
    {"prompt": f"Question: {i} + 2 = ?", "chosen": f" Answer: {i + 2}", "rejected": f" Answer: {i + 3}"}
    for i in range(4)
]


def values(tmp_path, **training):
    return {
        "model": {"name_or_path": "unused"},
        "data": {"train": str(tmp_path / "train.jsonl")},
        "training": {"output_dir": str(tmp_path / "out"), **training},
    }


def test_the_learning_rate_defaults_are_trls():
    """TRL's DPOConfig and SFTConfig defaults, not TrainingArguments' 5e-5."""
    from trl import DPOConfig, SFTConfig

    def default(cls):
        return next(f.default for f in dataclasses.fields(cls) if f.name == "learning_rate")

    config = config_from_dict(values_without_dir())
    assert training_arguments(config, PREFERENCE, has_eval=False).learning_rate == 1e-6
    assert training_arguments(config, SFT, has_eval=False).learning_rate == 2e-5
    assert (default(DPOConfig), default(SFTConfig)) == (1e-6, 2e-5)
    chosen = config_from_dict({**values_without_dir(), "training": {"learning_rate": 3e-4}})
    assert training_arguments(chosen, PREFERENCE, has_eval=False).learning_rate == 3e-4


def values_without_dir():
    return {"model": {"name_or_path": "unused"}, "data": {"train": "t.jsonl"}}


def test_checkpoints_are_saved_by_default(tmp_path):
    """Every 500 steps and at the last step (as TrainingArguments), the last 2 kept; `no` and
    `null` (keep all) can be written."""
    args = training_arguments(config_from_dict(values(tmp_path)), PREFERENCE, has_eval=False)
    assert (args.save_strategy.value, args.save_steps, args.save_total_limit) == ("steps", 500, 2)
    args = training_arguments(
        config_from_dict(values(tmp_path, save_strategy="no", save_total_limit=None)),
        PREFERENCE,
        has_eval=False,
    )
    assert (args.save_strategy.value, args.save_total_limit) == ("no", None)


def lines_of(tmp_path, stage=PREFERENCE, has_eval=True, **sections):
    config = config_from_dict({**values(tmp_path), **sections})
    return settings_lines(
        training_arguments(config, stage, has_eval=has_eval), config, stage, has_eval=has_eval
    )


def test_the_log_says_when_the_run_evaluates_and_saves(tmp_path):
    out = tmp_path / "out"
    assert lines_of(tmp_path) == [
        "learning rate 1e-06 (the default of dpolab train; set training.learning_rate)",
        "evaluation: every 10 steps and at the last step (by default every training.logging_steps; "
        "set training.eval_steps)",
        f"checkpoints: every 500 steps and at the last step in {out}/checkpoint-N, the last 2 kept (dpolab's "
        "defaults for training.save_strategy, training.save_steps, training.save_total_limit)",
    ]
    assert lines_of(tmp_path, SFT, has_eval=False)[:2] == [
        "learning rate 2e-05 (the default of dpolab sft; set training.learning_rate)",
        "evaluation: none (no eval data: set data.eval or data.eval_size)",
    ]
    chosen = lines_of(
        tmp_path,
        training={
            "output_dir": str(out),
            "learning_rate": 5e-7,
            "eval_steps": 25,
            "save_steps": 100,
            "save_total_limit": None,
        },
    )
    assert chosen == [
        "learning rate 5e-07 (training.learning_rate)",
        "evaluation: every 25 steps and at the last step (training.eval_steps)",
        f"checkpoints: every 100 steps and at the last step in {out}/checkpoint-N, all kept "
        "(training.save_steps, training.save_total_limit; dpolab's defaults for training.save_strategy)",
    ]
    off = lines_of(tmp_path, training={"output_dir": str(out), "eval_strategy": "no", "save_strategy": "no"})
    assert off[1:] == [
        "evaluation: none (training.eval_strategy no)",
        "checkpoints: none (training.save_strategy no); training.resume_from_checkpoint will find "
        "nothing to resume from",
    ]
    stopping = lines_of(
        tmp_path,
        data={"train": "t.jsonl", "eval_size": 2},
        early_stopping={"patience": 2},
        training={"output_dir": str(out), "eval_steps": 5},
    )
    assert stopping[2] == (
        f"checkpoints: every 5 steps and at the last step in {out}/checkpoint-N, the last 2 kept, and the best "
        "(dpolab's defaults for training.save_strategy, training.save_steps, training.save_total_limit; "
        "early stopping saves at each evaluation)"
    )


def test_a_run_with_the_defaults_can_be_resumed(tmp_path, model_dir, caplog):
    """No save option written: the run leaves a checkpoint at its last step, and
    `resume_from_checkpoint: true` continues from it; the log said so at start."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    first = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "disable_tqdm": True,
        },
    }
    logger = logging.getLogger("dpolab")
    logger.addHandler(caplog.handler)  # the command line's set-up stops it propagating to the root
    try:
        with caplog.at_level(logging.INFO, logger="dpolab"):
            run(config_from_dict(first))
    finally:
        logger.removeHandler(caplog.handler)
    assert "checkpoints: every 500 steps and at the last step" in caplog.text
    assert "learning rate 1e-06" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = {**first, "training": {**first["training"], "max_steps": 3, "resume_from_checkpoint": True}}
    summary = run(config_from_dict(resumed))
    # resumed after step 2: this session trained step 3 only (a fresh start would cover 1..3)
    assert (summary["global_step"], summary["train_loss_from_step"]) == (3, 3)
