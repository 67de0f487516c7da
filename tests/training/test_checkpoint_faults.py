"""Faults around checkpoints, each made real: a disk that fills up (a small tmpfs) during a
checkpoint, the final save or metrics.jsonl; checkpoints torn by cutting their files short. Each
ends in one line naming the path; what was there before is intact, and a resume ends with the
numbers and weights of an uninterrupted run."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from dpolab.cli import main
from dpolab.errors import DpolabError
from dpolab.storage import format_size, free_space
from dpolab.testing import tiny_config
from dpolab.training import config_from_dict, run
from dpolab.training.checkpoints import (
    checkpoint_problem,
    folder_size,
    resume_target,
    staged_save,
)

ROW = {"prompt": "Question 1:", "chosen": " yes yes", "rejected": " no no"}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps({**ROW, "prompt": f"Question {i}:"}) + "\n" for i in range(12)))
    return path


def values(out, model_dir, train, **training):
    """A small run: 4 steps, a checkpoint every step (all kept), logging every step."""
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16},
        "training": {
            "output_dir": str(out),
            "max_steps": 4,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 1,
            "save_total_limit": None,  # every checkpoint kept (the default keeps the last 2)
            "per_device_train_batch_size": 2,
            "learning_rate": 5e-3,
            "seed": 3,
            "disable_tqdm": True,
            **training,
        },
    }


def write_config(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(out, whole):
    """`out` ended with the metrics and final weights of the uninterrupted run `whole`."""
    got, expected = metrics(out), metrics(whole)
    assert [x["step"] for x in got] == [x["step"] for x in expected]
    for a, b in zip(expected, got):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    final, reference = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert final.keys() == reference.keys()
    for name in final:
        torch.testing.assert_close(final[name], reference[name], rtol=1e-5, atol=1e-6)


def partial_folders(folder):
    return sorted(p.name for p in folder.rglob(".partial-*"))


def checkpoints(out):
    return sorted((p.name for p in out.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


@pytest.fixture(scope="module")
def whole(tmp_path_factory, model_dir, train_file):
    """The uninterrupted run: checkpoints 1-4 and the final model."""
    out = tmp_path_factory.mktemp("whole") / "out"
    run(config_from_dict(values(out, model_dir, train_file)))
    return out


def test_full_disk_during_a_checkpoint_keeps_the_last_complete_one(
    tmp_path, model_dir, train_file, whole, small_disk, capsys
):
    # room for one checkpoint, not two: save_total_limit=1 must not delete checkpoint-1 before
    # checkpoint-2 is whole, and checkpoint-2 never becomes whole
    disk = small_disk("1200k")
    out = disk.path / "out"
    config = write_config(tmp_path / "c.yaml", values(out, model_dir, train_file, save_total_limit=1))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    assert checkpoints(out) == ["checkpoint-1"] and partial_folders(out) == []
    assert checkpoint_problem(out / "checkpoint-1") is None
    first = out / "checkpoint-1"
    assert err.splitlines()[-1] == (
        f"dpolab train: error: {out / 'checkpoint-2'}: no space left on device: this checkpoint needs about "
        f"{format_size(folder_size(first))} (the size of checkpoint-1), {format_size(free_space(out))} free "
        f"there; it was not saved, the checkpoints before it are kept, the last is {first}: free some "
        f"space, then resume with training.resume_from_checkpoint=true"
    )
    disk.resize("4m")  # space freed
    assert main(["train", str(config), "training.resume_from_checkpoint=true"]) == 0
    assert checkpoints(out) == ["checkpoint-4"] and partial_folders(out) == []
    assert_same_run(out, whole)


class FillDisk(TrainerCallback):
    """Takes every free byte of a disk at an event of the Trainer."""

    def __init__(self, disk, event, step=None):
        self.disk, self.step = disk, step
        setattr(self, event, self._fill)

    def _fill(self, args, state, control, **kwargs):
        if self.step is None or state.global_step == self.step:
            self.disk.fill()


def test_full_disk_during_the_final_save_keeps_the_files_there(tmp_path, model_dir, train_file, small_disk):
    disk = small_disk("1m")
    out = disk.path / "out"
    run(config_from_dict(values(out, model_dir, train_file, max_steps=1, save_strategy="no")))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    second = values(out, model_dir, train_file, max_steps=2, save_strategy="no")
    with pytest.raises(DpolabError) as err:
        run(config_from_dict(second), callbacks=(FillDisk(disk, "on_train_end"),))
    weights = sum(t.numel() * t.element_size() for t in load_file(out / "model.safetensors").values())
    assert str(err.value) == (
        f"{out}: no space left on device: the final model needs at least {format_size(weights)}, "
        f"0 bytes free there; it was not saved and the files already there are as they were; no checkpoint "
        f"was saved (training.save_strategy)"
    )
    for name in set(before) - {"config.yaml", "metrics.jsonl", "summary.json"}:  # the first run's model
        assert (out / name).read_bytes() == before[name], name
    assert partial_folders(out) == []


def test_full_disk_while_appending_metrics_keeps_whole_lines(tmp_path, model_dir, train_file, small_disk):
    disk = small_disk("1m")
    out = disk.path / "out"
    config = values(out, model_dir, train_file, max_steps=40, save_strategy="no")
    with pytest.raises(DpolabError) as err:  # the disk fills after the first line is written
        run(config_from_dict(config), callbacks=(FillDisk(disk, "on_log", step=1),))
    text = (out / "metrics.jsonl").read_text()
    steps = [json.loads(line)["step"] for line in text.splitlines()]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last > 2 and text.endswith("\n")
    message = str(err.value)
    assert message.startswith(
        f"{out / 'metrics.jsonl'}: no space left on device: the line of step {last + 1} needs "
    )
    assert message.endswith(
        "bytes free there; the lines before it are kept: free some space, then resume with "
        "training.resume_from_checkpoint=true"
    )


# ----------------------------------------------------------------------------------------------
# Torn checkpoints
# ----------------------------------------------------------------------------------------------


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def keep_only(folder, *names):
    for path in folder.iterdir():
        if path.name not in names:
            path.unlink()


TORN = [
    (
        lambda c: cut_short(c / "model.safetensors"),
        "model.safetensors is cut short or damaged (",
        "; Error while deserializing header: incomplete metadata, file not fully covered)",
    ),
    (
        lambda c: cut_short(c / "optimizer.pt"),
        "optimizer.pt is cut short or damaged (",
        "; File is not a zip file)",
    ),
    (
        lambda c: (c / "rng_state.pth").write_bytes(b""),
        "rng_state.pth is cut short or damaged (0 bytes; ",
        ")",
    ),
    (lambda c: cut_short(c / "trainer_state.json"), "trainer_state.json is cut short or damaged (", ")"),
    # what a full disk left before saves were staged (the report)
    (
        lambda c: keep_only(c, "config.json", "generation_config.json"),
        "trainer_state.json is missing (the Trainer writes it last: the save was cut off)",
        "",
    ),
]


@pytest.mark.parametrize("tear,start,end", TORN, ids=["weights", "optimizer", "rng", "state", "only-configs"])
def test_resume_skips_a_torn_checkpoint_and_an_explicit_one_stops(tmp_path, whole, caplog, tear, start, end):
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    tear(out / "checkpoint-4")
    config = {
        "model": {"name_or_path": "m"},
        "data": {"train": "t.jsonl"},
        "training": {"output_dir": str(out)},
    }
    config["training"]["resume_from_checkpoint"] = True
    with caplog.at_level("WARNING", logger="dpolab"):
        assert resume_target(config_from_dict(config)) == str(out / "checkpoint-3")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(f"skipped {out / 'checkpoint-4'}, incomplete: {start}") and warning.endswith(
        end
    )

    config["training"]["resume_from_checkpoint"] = str(out / "checkpoint-4")
    with pytest.raises(DpolabError) as err:
        resume_target(config_from_dict(config))
    message = str(err.value)
    assert message.startswith(
        f"training.resume_from_checkpoint: {out / 'checkpoint-4'} is incomplete: {start}"
    )
    assert message.endswith(f"{end}; resume from {out / 'checkpoint-3'}, the last complete one")


def test_resume_after_a_torn_last_checkpoint_ends_as_the_uninterrupted_run(
    tmp_path, model_dir, train_file, whole, capsys
):
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    for name in ("checkpoint-3", "checkpoint-4", "model.safetensors"):  # as a run killed while saving 3
        (out / name).unlink() if name.endswith(".safetensors") else shutil.rmtree(out / name)
    shutil.copytree(whole / "checkpoint-3", out / "checkpoint-3")
    cut_short(out / "checkpoint-3" / "model.safetensors")
    config = write_config(tmp_path / "c.yaml", values(out, model_dir, train_file))
    assert main(["train", str(config), "training.resume_from_checkpoint=true"]) == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert skipped == [
        f"dpolab: skipped {out / 'checkpoint-3'}, incomplete: model.safetensors is cut short or damaged "
        f"({format_size((whole / 'checkpoint-3' / 'model.safetensors').stat().st_size // 2)}; Error while "
        f"deserializing header: incomplete metadata, file not fully covered)"
    ]
    assert checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert_same_run(out, whole)


def test_an_explicit_torn_checkpoint_stops_before_any_model_loads(tmp_path, tokenizer, whole, capsys):
    model = tmp_path / "config-only"  # no weights: loading any would fail otherwise
    tiny_config("llama", vocab_size=len(tokenizer)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    keep_only(out / "checkpoint-4", "config.json", "generation_config.json")
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3')
    train = tmp_path / "t.jsonl"
    train.write_text(json.dumps(ROW) + "\n")
    config = write_config(tmp_path / "c.yaml", values(out, model, train))
    assert main(["train", str(config), f"training.resume_from_checkpoint={out / 'checkpoint-3'}"]) == 2
    assert capsys.readouterr().err == (
        f"dpolab train: error: training.resume_from_checkpoint: {out / 'checkpoint-3'} is incomplete: "
        f"trainer_state.json is cut short or damaged (17 bytes; Expecting ',' delimiter: line 1 column 18 "
        f"(char 17)); resume from {out / 'checkpoint-2'}, the last complete one\n"
    )


# ----------------------------------------------------------------------------------------------
# The staged save itself
# ----------------------------------------------------------------------------------------------


def test_a_failed_save_leaves_no_partial_folder_and_the_old_one_as_it_was(tmp_path):
    final = tmp_path / "checkpoint-5"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyError), staged_save(final) as staging:
        assert staging == tmp_path / ".partial-checkpoint-5" / "checkpoint-5"
        (staging / "new.txt").write_text("new")
        raise KeyError("the save failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with staged_save(final) as staging:  # a checkpoint of the same step replaces the old one whole
        (staging / "new.txt").write_text("new")
        assert not (final / "new.txt").exists()  # nothing under the name until the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_a_final_save_moves_its_files_in_beside_the_others(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("kept")
    (tmp_path / "model.safetensors").write_text("old")
    with staged_save(tmp_path, into=True) as staging:
        assert staging == tmp_path / ".partial-save"
        (staging / "model.safetensors").write_text("new")
        (staging / "config.json").write_text("{}")
        assert (tmp_path / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors"]
    assert (tmp_path / "model.safetensors").read_text() == "new"


@pytest.mark.parametrize(
    "limit,best", [(1, None), (2, None), (2, 3), (1, 2), (3, 6), (None, None), (9, None)]
)
def test_rotation_deletes_what_the_trainer_would(tmp_path, limit, best):
    from transformers.trainer_utils import rotate_checkpoints as trainers_rotation

    from dpolab.training.checkpoints import rotate_checkpoints

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        for step in (2, 4, 6, 8, 10):
            (folder / f"checkpoint-{step}").mkdir(parents=True)
            (folder / f"checkpoint-{step}" / "weights").write_text("w")
    rotate_checkpoints(ours, limit, str(ours / f"checkpoint-{best}") if best else None)
    trainers_rotation(
        str(theirs), limit, str(theirs / f"checkpoint-{best}") if best else None, use_mtime=True
    )
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    assert len(list(ours.iterdir())) < 5 or limit in (None, 9)
