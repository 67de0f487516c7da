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
from dpolab.errors import DpolabError
from dpolab.testing import tiny_config
from dpolab.training import config_from_dict, run

GOOD = {"prompt": "Question 1:", "chosen": " yes yes", "rejected": " no no"}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def config_values(tmp_path, model_dir, train, **sections):
    """A small run's config (2 steps, logging every step), sections updated by `sections`."""
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
    return values


def write_config(tmp_path, model_dir, train, **sections):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_values(tmp_path, model_dir, train, **sections)))
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


def test_rows_skipped_at_loading_and_at_tokenisation_make_one_report_per_file(tmp_path, model_dir, capsys):
    lines = good_rows(6)
    lines[1] = BAD_ROWS[0][0]  # not valid JSON: skipped while loading
    lines[3] = BAD_ROWS[-1][0]  # the prompt alone is too long: skipped while tokenising
    train = write_lines(tmp_path / "train.jsonl", lines)
    config = write_config(tmp_path, model_dir, train, data={"on_bad_rows": "skip", "max_prompt_length": None})
    assert main(["train", str(config)]) == 0
    report = json.loads((tmp_path / "out" / "bad_rows.json").read_text())
    assert [r["source"] for r in report] == [str(train)]
    assert [r["row"] for r in report[0]["rows"]] == [2, 4] and report[0]["skipped"] == 2
    said = [
        line for line in capsys.readouterr().err.splitlines() if ": skipped" in line
    ]  # not tmp_path's name
    assert said == [
        f"dpolab: {train}: skipped 2 bad rows ({'; '.join(f'1 × {k}' for k in report[0]['by_reason'])})"
    ]


def test_layer_outside_the_model_fails_before_weights_load(tmp_path, tokenizer, capsys):
    # a model folder with a config and a tokenizer but no weights: only the config may be read
    folder = tmp_path / "config-only"
    tiny_config("llama", vocab_size=len(tokenizer), num_layers=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train = write_lines(tmp_path / "train.jsonl", good_rows())
    config = write_config(tmp_path, folder, train, loss={"intermediate": {"layers": [4]}})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss.intermediate.layers: layer 4 is outside 1..3" in err and "Traceback" not in err


def _config_only(folder, tokenizer, **config):
    """A model folder with a config and a tokenizer but no weights: only the config may be read."""
    tiny_config("llama", **{"vocab_size": len(tokenizer), **config}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reference_with_a_smaller_vocabulary_fails_before_weights_load(
    tmp_path, tokenizer, model_dir, capsys
):
    reference = _config_only(tmp_path / "ref-v100", tokenizer, vocab_size=100)
    train = write_lines(tmp_path / "train.jsonl", good_rows())
    config = write_config(tmp_path, model_dir, train, model={"ref_name_or_path": str(reference)})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"dpolab train: error: model.ref_name_or_path {reference}: its embeddings hold 100 tokens, but the "
        f"tokenizer ({model_dir}) has {len(tokenizer)}; the policy and the reference must share the "
        f"tokenizer's vocabulary\n"
    )


def test_resume_with_no_checkpoint_fails_before_models_load(tmp_path, tokenizer, capsys):
    model = _config_only(tmp_path / "config-only", tokenizer)
    train = write_lines(tmp_path / "train.jsonl", good_rows())
    config = write_config(tmp_path, model, train, training={"resume_from_checkpoint": True})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"dpolab train: error: training.resume_from_checkpoint: true, but {tmp_path / 'out'} holds no "
        f"checkpoint-N folder to resume from; name a checkpoint folder, or remove the option to start afresh\n"
    )


def test_resume_true_takes_the_last_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from dpolab.training.checkpoints import resume_target

    values = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}
    values["training"] = {"output_dir": str(tmp_path), "resume_from_checkpoint": True}
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text('{"global_step": 1}')
        save_file({"w": torch.zeros(2)}, tmp_path / name / "model.safetensors")
    assert resume_target(config_from_dict(values)) == str(tmp_path / "checkpoint-10")


def test_mistyped_early_stopping_metric_fails_at_start_up(tmp_path, tokenizer, capsys):
    model = _config_only(tmp_path / "config-only", tokenizer)
    train = write_lines(tmp_path / "train.jsonl", good_rows())
    config = write_config(
        tmp_path,
        model,
        train,
        data={"eval_size": 2},
        early_stopping={"patience": 1, "metric": "rewards/accuracy"},
    )
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "early_stopping.metric: 'rewards/accuracy' is not logged at evaluation" in err
    assert "did you mean 'rewards/accuracies'?" in err and err.count("\n") == 1


def test_sft_early_stopping_keeps_the_lowest_eval_loss(tmp_path, model_dir):
    train = write_lines(tmp_path / "train.jsonl", good_rows(12))
    config = write_config(
        tmp_path,
        model_dir,
        train,
        data={"eval_size": 4},
        early_stopping={"patience": 1},
        training={"max_steps": 4, "eval_steps": 1, "learning_rate": 5e-3, "per_device_train_batch_size": 4},
    )
    assert main(["sft", str(config)]) == 0
    evals = [x for x in _lines(tmp_path / "out" / "metrics.jsonl") if x["split"] == "eval"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert evals and summary["best_metric"] == pytest.approx(min(x["loss"] for x in evals))


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
            "loss": {"intermediate": {"layers": [2]}},
            "training": {**common, "output_dir": str(out), "logging_steps": 1, "disable_tqdm": True},
        }

    run(config_from_dict(values(tmp_path / "whole")))
    with pytest.raises(KeyboardInterrupt):
        run(config_from_dict(values(tmp_path / "killed")), callbacks=(CrashAt(5),))
    killed = tmp_path / "killed"
    assert (killed / "checkpoint-3").is_dir() and max(
        x["step"] for x in _lines(killed / "metrics.jsonl")
    ) == 4

    with (killed / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "split": "train", "lo')  # a kill in the middle of a write
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(values(killed)))
    assert main(["train", str(config), f"training.resume_from_checkpoint={killed / 'checkpoint-3'}"]) == 0
    whole, resumed = _lines(tmp_path / "whole" / "metrics.jsonl"), _lines(killed / "metrics.jsonl")
    assert [x["step"] for x in resumed] == [x["step"] for x in whole] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(whole[3:], resumed[3:]):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "layers/2/loss", "logps/chosen"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    # the summary's train_loss is the mean over all six steps, not over the three resumed ones
    summaries = [json.loads((out / "summary.json").read_text()) for out in (tmp_path / "whole", killed)]
    assert summaries[1]["train_loss"] == pytest.approx(summaries[0]["train_loss"], rel=1e-5)
    assert summaries[0]["train_loss_from_step"] == summaries[1]["train_loss_from_step"] == 1


def test_train_loss_after_a_resume_between_logging_steps_is_the_resumed_steps_mean():
    from dpolab.training.run import whole_run_train_loss

    history = [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}, {"step": 4, "eval_loss": 9.0}]
    # resumed at step 4, trained 5..6 with mean 0.2: (2·1.0 + 2·0.5 + 2·0.2) / 6
    assert whole_run_train_loss(history, start=4, end=6, session_loss=0.2) == (pytest.approx(3.4 / 6), 1)
    # resumed at step 3: the loss of step 3 was never logged
    assert whole_run_train_loss(history[:1], start=3, end=6, session_loss=0.2) == (0.2, 4)
    assert whole_run_train_loss([], start=0, end=6, session_loss=0.3) == (0.3, 1)


def test_resume_drops_a_torn_last_metrics_line_and_nothing_else():
    from dpolab.training.callbacks import lines_up_to

    whole = ['{"step": 1, "split": "train"}', '{"step": 2, "split": "eval"}', '{"step": 3, "split": "train"}']
    text = "\n".join(whole) + "\n"
    assert lines_up_to(text, 2) == (whole[:2], False)
    assert lines_up_to(text + '{"step": 4, "spl', 3) == (whole, True)
    with pytest.raises(DpolabError, match="line 2: not valid JSON"):
        lines_up_to(whole[0] + '\n{"step": 2\n' + whole[2] + "\n", 3, source="metrics.jsonl")
    # a last line with its newline was written whole: unreadable, it is not a torn write
    with pytest.raises(DpolabError, match="line 3: not valid JSON"):
        lines_up_to(text.replace(whole[2], '{"step": 3,'), 3)


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
            "save_total_limit": None,  # keep every checkpoint (dpolab's default keeps the last 2)
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


def test_non_finite_loss_with_epoch_saves_keeps_no_bad_checkpoint(tmp_path, model_dir):
    """With logging and saving by epoch the Trainer decides to save at the epoch's end, not at a
    step's: the bad epoch must not be saved, nor the run go on to later epochs."""
    train = write_lines(tmp_path / "train.jsonl", good_rows(8))
    values = config_values(tmp_path, model_dir, train)
    del values["training"]["max_steps"], values["training"]["logging_steps"]
    # batch 2 of 8 rows: 4 steps per epoch
    values["training"].update(num_train_epochs=3, logging_strategy="epoch", save_strategy="epoch")
    stepped = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stepped.append(state.global_step)

    with pytest.raises(DpolabError) as err:
        run(config_from_dict(values), callbacks=(PoisonAt(6), Steps()))  # step 6: in the second epoch
    message = str(err.value)
    assert "the loss became non-finite at step 6" in message
    assert f"the last good checkpoint is {tmp_path / 'out' / 'checkpoint-4'}" in message
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-4"]
    assert max(stepped) == 8  # stopped at the end of the second epoch, its first check
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_last_good_checkpoint_is_the_last_before_the_bad_step(tmp_path):
    from dpolab.training.checkpoints import last_checkpoint_before

    for name in ("checkpoint-2", "checkpoint-5", "checkpoint-6", "checkpoint-10", "checkpoint-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-4").write_text("not a folder")
    # checkpoint-6 holds the weights after step 6's update, checkpoint-10 is from an earlier run
    assert last_checkpoint_before(tmp_path, 6) == tmp_path / "checkpoint-5"
    assert last_checkpoint_before(tmp_path, 3) == tmp_path / "checkpoint-2"
    assert last_checkpoint_before(tmp_path, 2) is None


def test_early_stopping_keeps_the_peak(tmp_path, model_dir):
    """The peak of eval rewards/accuracies comes after the first evaluation (warm-up: the first
    update has learning rate 0, so the first evaluation sees policy = reference, accuracy 0); the
    run stops `patience` evaluations after it, and the model saved is the peak's checkpoint."""
    from safetensors.torch import load_file

    train = write_lines(tmp_path / "train.jsonl", good_rows(12))
    patience = 2
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16, "eval_size": 4},
        "early_stopping": {"patience": patience},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 20,
            "logging_steps": 1,
            "eval_steps": 1,
            "learning_rate": 5e-3,
            "warmup_steps": 2,
            "per_device_train_batch_size": 4,
            "disable_tqdm": True,
        },
    }
    summary = run(config_from_dict(values))
    evals = [x for x in _lines(tmp_path / "out" / "metrics.jsonl") if x["split"] == "eval"]
    accuracies = [x["rewards/accuracies"] for x in evals]
    peak = accuracies.index(max(accuracies))  # the first evaluation at the highest value
    assert accuracies[0] == 0 and peak > 0, accuracies
    assert len(evals) == peak + 1 + patience  # then `patience` evaluations without a new peak
    assert summary["global_step"] == evals[-1]["step"] < 20
    best = tmp_path / "out" / f"checkpoint-{evals[peak]['step']}"
    assert summary["best_checkpoint"] == str(best)
    assert summary["best_metric"] == pytest.approx(accuracies[peak])

    final = load_file(tmp_path / "out" / "model.safetensors")
    peak_weights = load_file(best / "model.safetensors")
    last_weights = load_file(tmp_path / "out" / f"checkpoint-{evals[-1]['step']}" / "model.safetensors")
    assert final.keys() == peak_weights.keys()
    assert all(torch.equal(final[name], peak_weights[name]) for name in final)
    assert not all(torch.equal(final[name], last_weights[name]) for name in final)  # training went on
