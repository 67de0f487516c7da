"""What a user can get wrong, and what can go wrong during a run: each ends in one clear message
(file, row, field), never a traceback; a killed run resumes to the same numbers; a diverging run
stops before it overwrites a good checkpoint; early stopping keeps the best checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import TrainerCallback

from dpolab.cli import main
from dpolab.config import config_from_dict
from dpolab.errors import DpolabError
from dpolab.runner import run
from dpolab.tiny import tiny_config

GOOD = {"prompt": "Question 1:", "chosen": " yes yes", "rejected": " no no"}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_config(tmp_path, model_dir, train, **sections):
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 2,
            "logging_steps": 1,
            "per_device_train_batch_size": 2,
            "disable_tqdm": True,
        },
    }
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def good_rows(n=8):
    return [json.dumps({**GOOD, "prompt": f"Question {i}:"}) for i in range(n)]


BAD_ROWS = [
    ('{"prompt": "Q", "chosen": " a", ', "row 3: not valid JSON"),
    ('{"prompt": "Q", "chosen": " a"}', "row 3, field 'rejected': missing"),
    ('{"prompt": "Q", "chosen": 7, "rejected": " b"}', "row 3, field 'chosen': expected a string, found int"),
    ('{"prompt": "Q", "chosen": "  ", "rejected": " b"}', "row 3, field 'chosen': empty"),
    (
        '{"prompt": "Q", "chosen": " same", "rejected": " same"}',
        "row 3, field 'rejected': identical to chosen",
    ),
    ("[1, 2]", "row 3: not a JSON object but list"),
    (
        '{"prompt": "' + "word " * 40 + '", "chosen": " a", "rejected": " b"}',
        "row 3, field 'prompt': the prompt alone",
    ),
]


@pytest.mark.parametrize("line,message", BAD_ROWS)
def test_each_bad_row_stops_with_file_row_and_field(tmp_path, model_dir, capsys, line, message):
    lines = good_rows(4)
    lines.insert(2, line)  # line 3 of the file
    train = write_lines(tmp_path / "train.jsonl", lines)
    extra = {"data": {"max_prompt_length": None}} if "prompt alone" in message else {}
    config = write_config(tmp_path, model_dir, train, **extra)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{train}, {message}" in err
    assert "on_bad_rows=skip" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # stopped before training


def test_skip_bad_rows_counts_them_by_reason(tmp_path, model_dir, capsys):
    lines = good_rows(6)
    lines[1] = BAD_ROWS[0][0]
    lines[3] = BAD_ROWS[1][0]
    lines[4] = BAD_ROWS[4][0]
    train = write_lines(tmp_path / "train.jsonl", lines)
    config = write_config(tmp_path, model_dir, train, data={"on_bad_rows": "skip"})
    assert main(["train", str(config)]) == 0
    assert "skipped 3 bad rows" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "bad_rows.json").read_text())
    assert [r["row"] for r in report[0]["rows"]] == [2, 4, 5]
    assert report[0]["by_reason"] == {
        "not valid JSON (Expecting property name enclosed in double quotes)": 1,
        "rejected: missing": 1,
        "rejected: identical to chosen": 1,
    }
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_rows"] == 3 and summary["pairs"]["train"] == 3


def test_layer_outside_the_model_fails_before_weights_load(tmp_path, tokenizer, capsys):
    # a model folder with a config and a tokenizer but no weights: only the config may be read
    folder = tmp_path / "config-only"
    tiny_config("llama", vocab_size=len(tokenizer), num_layers=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train = write_lines(tmp_path / "train.jsonl", good_rows())
    config = write_config(tmp_path, folder, train, loss={"intermediate_layers": [4]})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss.intermediate_layers: layer 4 is outside 1..3" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "model,train,message",
    [
        ("no-such-org/no-such-model", None, "model 'no-such-org/no-such-model' cannot be loaded"),
        # more than one '/': a local path, never a hub id; the message names the directory it was read from
        (
            "demo-out/runs/sft",
            None,
            "model 'demo-out/runs/sft': no such folder (a relative path is read from ",
        ),
        (None, "missing.jsonl", "missing.jsonl: no such file"),
    ],
)
def test_missing_model_or_data(tmp_path, model_dir, capsys, model, train, message):
    train_path = tmp_path / train if train else write_lines(tmp_path / "train.jsonl", good_rows())
    config = write_config(tmp_path, model or model_dir, train_path)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_override_on_the_command_line(tmp_path, model_dir, capsys):
    config = write_config(tmp_path, model_dir, write_lines(tmp_path / "t.jsonl", good_rows()))
    assert main(["train", str(config), "loss.bta=0.2"]) == 2
    assert "unknown key 'loss.bta'; did you mean 'loss.beta'?" in capsys.readouterr().err


class CrashAt(TrainerCallback):
    """Stands in for a killed process: raises at the start of a given step."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_killed_run_resumes_to_the_uninterrupted_numbers(tmp_path, model_dir):
    train = write_lines(tmp_path / "train.jsonl", good_rows(12))
    common = {
        "max_steps": 6,
        "save_strategy": "steps",
        "save_steps": 3,
        "learning_rate": 5e-3,
        "seed": 3,
        "per_device_train_batch_size": 2,
    }

    def values(out):
        return {
            "model": {"name_or_path": str(model_dir)},
            "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16},
            "loss": {"intermediate_layers": [2]},
            "training": {**common, "output_dir": str(out), "logging_steps": 1, "disable_tqdm": True},
        }

    run(config_from_dict(values(tmp_path / "whole")))
    with pytest.raises(KeyboardInterrupt):
        run(config_from_dict(values(tmp_path / "killed")), callbacks=(CrashAt(5),))
    killed = tmp_path / "killed"
    assert (killed / "checkpoint-3").is_dir() and max(
        x["step"] for x in _lines(killed / "metrics.jsonl")
    ) == 4

    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(values(killed)))
    assert main(["train", str(config), f"training.resume_from_checkpoint={killed / 'checkpoint-3'}"]) == 0
    whole, resumed = _lines(tmp_path / "whole" / "metrics.jsonl"), _lines(killed / "metrics.jsonl")
    assert [x["step"] for x in resumed] == [x["step"] for x in whole] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(whole[3:], resumed[3:]):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "layers/2/loss", "logps/chosen"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)


class PoisonAt(TrainerCallback):
    """Makes the weights non-finite at the start of a step, as a diverging run would."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, model_dir):
    train = write_lines(tmp_path / "train.jsonl", good_rows())
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 8,
            "logging_steps": 2,
            "save_strategy": "steps",
            "save_steps": 1,
            "disable_tqdm": True,
        },
    }
    with pytest.raises(DpolabError) as err:
        run(config_from_dict(values), callbacks=(PoisonAt(4),))
    message = str(err.value)
    assert "the loss became non-finite at step 4" in message
    assert f"the last good checkpoint is {tmp_path / 'out' / 'checkpoint-3'}" in message
    checkpoints = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_early_stopping_keeps_the_peak(tmp_path, model_dir):
    train = write_lines(tmp_path / "train.jsonl", good_rows(12))
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16, "eval_size": 4},
        "early_stopping": {"patience": 2},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 20,
            "logging_steps": 1,
            "eval_steps": 1,
            "learning_rate": 0.0,
            "disable_tqdm": True,
        },
    }
    summary = run(config_from_dict(values))
    # with a learning rate of 0 the first evaluation is the peak; two more without a new one stop the run
    assert summary["global_step"] == 3
    assert summary["best_checkpoint"].endswith("checkpoint-1")
    evals = [x for x in _lines(tmp_path / "out" / "metrics.jsonl") if x["split"] == "eval"]
    assert [x["step"] for x in evals] == [1, 2, 3]
    assert summary["best_metric"] == pytest.approx(evals[0]["rewards/accuracies"])
