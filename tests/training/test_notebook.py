"""`PreferenceTrainer` (built from objects, as TRL's DPOTrainer) and `dpolab.train` / `load_config`:
the same run as `dpolab train`, the objects' settings turned into a config without dropping any,
and the log visible outside the command line."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import datasets
import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, TrainingArguments

import dpolab
from dpolab import PreferenceTrainer, load_config, train
from dpolab.errors import DpolabError
from dpolab.logs import StderrHandler
from dpolab.testing import tiny_model
from dpolab.training import PREFERENCE, config_from_dict, run
from dpolab.training.notebook import lora_section, training_section

ROWS = [
    {"prompt": f"Question: {a} * 2 = ?", "chosen": f" Answer: {2 * a}", "rejected": f" Answer: {2 * a + 1}"}
    for a in range(6)
]
TRAINING = {"max_steps": 2, "per_device_train_batch_size": 3, "learning_rate": 1e-2, "logging_steps": 1}


def write_rows(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(output_dir):
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"], r.get("rewards/accuracies")) for r in rows]


def test_import_dpolab_loads_no_torch():
    code = "import sys, dpolab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "False\n"
    assert {"train", "sft", "load_config", "PreferenceTrainer", "RunResult"} <= set(dir(dpolab))
    assert dpolab.train is train and dpolab.PreferenceTrainer is PreferenceTrainer  # resolved on first use


def test_the_notebook_run_is_the_command_lines(tmp_path, model_dir, tokenizer):
    """The same config through `run` (what `dpolab train` calls) and through a PreferenceTrainer
    given the model as an object logs the same numbers, step for step; the object is trained in
    place and is the result's model."""
    data = write_rows(tmp_path / "train.jsonl")
    evals = write_rows(tmp_path / "eval.jsonl", ROWS[:3])
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "eval": str(evals)},
        "loss": {"beta": 0.5},
        "training": {**TRAINING, "output_dir": str(tmp_path / "cli"), "disable_tqdm": True},
    }
    run(config_from_dict(values))

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    notebook = {**values, "training": {**values["training"], "output_dir": str(tmp_path / "nb")}}
    del notebook["model"], notebook["data"]
    trainer = PreferenceTrainer(
        model,
        args=notebook,
        train_dataset=datasets.Dataset.from_list(ROWS),
        eval_dataset=ROWS[:3],
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.model is model and trainer.state.global_step == 2  # Trainer attributes pass through
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    cli, nb = losses(tmp_path / "cli"), losses(tmp_path / "nb")
    assert (
        [r[:2] for r in cli] == [r[:2] for r in nb] == [(1, "train"), (1, "eval"), (2, "train"), (2, "eval")]
    )
    assert [x for r in nb for x in r[2:]] == pytest.approx([x for r in cli for x in r[2:]], abs=1e-6)
    assert result.summary["global_step"] == 2 and result.evals()[-1]["loss"] == pytest.approx(
        cli[-1][2], abs=1e-6
    )
    assert (tmp_path / "nb" / "summary.json").is_file() and (tmp_path / "nb" / "checkpoint-2").is_dir()


def test_a_given_reference_is_used_and_precompute_caches_by_weights(tmp_path, model_dir, tokenizer):
    """ref_model given: the first step's rewards are measured against it (not 0, as against a
    copy of the policy); with reference.precompute the cache key is the given weights' hash."""
    reference = tiny_model("llama", vocab_size=len(tokenizer), seed=7)
    args = {
        "reference": {"precompute": True, "cache_dir": str(tmp_path / "cache")},
        "training": {**TRAINING, "max_steps": 1, "output_dir": str(tmp_path / "out"), "disable_tqdm": True},
    }
    trainer = PreferenceTrainer(
        AutoModelForCausalLM.from_pretrained(model_dir),
        ref_model=reference,
        args=args,
        train_dataset=ROWS,
        processing_class=tokenizer,
    )
    first = trainer.train().metrics[0]
    assert first["split"] == "train" and abs(first["rewards/chosen"]) > 1e-3
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_training_arguments_are_taken_as_they_are(tmp_path):
    """Transformers' defaults included: 5e-5, no evaluation, no total limit; fields set kept."""
    section = training_section(TrainingArguments(output_dir=str(tmp_path)), PREFERENCE)
    assert section["learning_rate"] == 5e-5 and section["eval_strategy"] == "no"
    assert (section["save_strategy"], section["save_steps"], section["save_total_limit"]) == (
        "steps",
        500,
        None,
    )
    assert "remove_unused_columns" not in section and "label_names" not in section
    chosen = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=3e-6, eval_strategy="steps", eval_steps=7
    )
    section = training_section(chosen, PREFERENCE)
    assert (section["learning_rate"], section["eval_strategy"], section["eval_steps"]) == (3e-6, "steps", 7)
    config = config_from_dict(
        {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}, "training": section}
    )
    assert config.training["learning_rate"] == 3e-6  # every kept field passes dpolab's checks


def test_a_lora_config_becomes_the_lora_section():
    assert lora_section(
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    ) == {
        "r": 4,
        "alpha": 8,
        "dropout": 0.1,
        "target_modules": ["q_proj", "v_proj"],
    }
    assert lora_section(LoraConfig())["target_modules"] == "all-linear"
    with pytest.raises(
        DpolabError, match=re.escape("peft_config.use_dora=True: dpolab's LoRA takes r, lora_alpha")
    ):
        lora_section(LoraConfig(use_dora=True))


def test_mistakes_stop_before_any_model_loads(tmp_path, model_dir, tokenizer):
    args = {"training": {"output_dir": str(tmp_path / "out")}}
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    both = {**args, "data": {"train": "t.jsonl"}}
    with pytest.raises(
        DpolabError, match=re.escape("train_dataset and the config's data.train are both set")
    ):
        PreferenceTrainer(model, args=both, train_dataset=ROWS, processing_class=tokenizer)
    with pytest.raises(
        DpolabError, match=r"pass one split as a datasets.Dataset \(e.g. dataset\['train'\]\)"
    ):
        splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
        PreferenceTrainer(model, args=args, train_dataset=splits, processing_class=tokenizer)
    nameless = tiny_model("llama", vocab_size=len(tokenizer))  # built from a config, no folder
    with pytest.raises(DpolabError, match="processing_class: the model was not loaded from a folder"):
        PreferenceTrainer(nameless, args=args, train_dataset=ROWS)
    with pytest.raises(DpolabError, match=re.escape("unknown key 'loss.betta'; did you mean 'loss.beta'")):
        PreferenceTrainer(model, args=args, train_dataset=ROWS, processing_class=tokenizer, loss={"betta": 1})


def test_load_config_takes_files_dicts_and_configs_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {train: t.jsonl}\nloss: {method: dpo}\n")
    from_file = load_config(path, ["loss.beta=0.3"])
    from_dict = load_config(
        {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}, {"loss.beta": 0.3}
    )
    assert from_file.loss.beta == from_dict.loss.beta == 0.3
    # a RunConfig keeps what its source left at the defaults: ipo takes no label_smoothing, and
    # dpo's unwritten default of it must not become an explicit (refused) key
    ipo = load_config(from_file, {"loss.method": "ipo"})
    assert ipo.loss.method == "ipo" and "loss.label_smoothing" not in ipo.explicit
    with pytest.raises(DpolabError, match="sft"):
        load_config(from_dict, {"early_stopping.metric": "rewards/margins"}, stage="sft")


def test_train_logs_to_stderr_unless_the_logger_has_a_handler(tmp_path, model_dir, capsys):
    """A notebook sees the run's log as the command line shows it; a handler of the caller's own
    is left alone (no second copy of each line)."""
    logger = logging.getLogger("dpolab")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    for handler in saved[0]:
        logger.removeHandler(handler)
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(write_rows(tmp_path / "train.jsonl"))},
        "training": {**TRAINING, "max_steps": 1, "output_dir": str(tmp_path / "a"), "disable_tqdm": True},
    }
    try:
        result = train(values)
        assert "dpolab: learning rate 0.01 (training.learning_rate)\n" in capsys.readouterr().err
        assert result.summary["global_step"] == 1 and result.output_dir == tmp_path / "a"
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        mine = logging.Handler()
        records = []
        mine.emit = records.append
        logger.addHandler(mine)
        train(values, {"training.output_dir": str(tmp_path / "b")})
        assert "dpolab: learning rate" not in capsys.readouterr().err
        assert not any(isinstance(h, StderrHandler) for h in logger.handlers)
        assert any(r.getMessage().startswith("learning rate 0.01") for r in records)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
