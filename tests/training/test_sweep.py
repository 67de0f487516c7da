"""`dpolab sweep`: a grid of runs, one process each, named by their values, resumable."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from dpolab.cli import main
from dpolab.config import dump_config
from dpolab.errors import DpolabError
from dpolab.training import load_config
from dpolab.training.sweep import grid, run_name, run_state, split_values, sweep


def test_values_split_outside_brackets():
    assert split_values("0.1,0.3") == ["0.1", "0.3"]
    assert split_values("[11],[11,22],[]") == ["[11]", "[11,22]", "[]"]
    with pytest.raises(DpolabError, match="unbalanced"):
        split_values("[11,22")


def test_grid_and_names():
    combos = grid(["loss.beta=0.1,0.3", "loss.intermediate.layers=[],[2,3]"])
    assert combos == [
        ["loss.beta=0.1", "loss.intermediate.layers=[]"],
        ["loss.beta=0.1", "loss.intermediate.layers=[2,3]"],
        ["loss.beta=0.3", "loss.intermediate.layers=[]"],
        ["loss.beta=0.3", "loss.intermediate.layers=[2,3]"],
    ]
    assert run_name(combos[1]) == "beta-0.1_intermediate_layers-2-3"
    assert run_name(combos[2]) == "beta-0.3_intermediate_layers-none"
    # named by the value the config reads: 0.10 is 0.1, one folder for one config
    assert run_name(["loss.beta=0.10", "loss.method=dpo"]) == "beta-0.1_method-dpo"
    assert run_name(["loss.intermediate.layers=[ 2, 3 ]"]) == "intermediate_layers-2-3"


def test_grid_refuses_a_key_or_a_value_given_twice():
    with pytest.raises(DpolabError, match=r"loss\.beta is given twice"):
        grid(["loss.beta=0.1", "loss.beta=0.3"])
    with pytest.raises(DpolabError, match="lists the same value twice"):
        grid(["loss.beta=0.1,0.10"])


@pytest.mark.slow
def test_sweep_runs_each_point_once(tmp_path, model_dir, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Q{i}:", "chosen": " yes", "rejected": " no"}) + "\n" for i in range(4)
        )
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(model_dir)},
                "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
                "training": {
                    "output_dir": str(tmp_path / "sweep"),
                    "max_steps": 1,
                    "logging_steps": 1,
                    "disable_tqdm": True,
                },
            }
        )
    )
    # an invalid point stops the sweep before any run starts
    assert main(["sweep", str(config), "loss.beta=0.1,-1", "--no-report"]) == 2
    assert "loss.beta: -1.0 must be positive" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()

    assert main(["sweep", str(config), "loss.beta=0.1,0.5", "loss.method=dpo"]) == 0
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.name.startswith("beta"))
    assert runs == ["beta-0.1", "beta-0.5"]
    report = (tmp_path / "sweep" / "report.html").read_text()
    assert "beta-0.1" in report and "beta-0.5" in report
    for name, beta in (("beta-0.1", 0.1), ("beta-0.5", 0.5)):
        assert yaml.safe_load((tmp_path / "sweep" / name / "config.yaml").read_text())["loss"]["beta"] == beta
    capsys.readouterr()
    # the same configs (loss.method=dpo is the default): both runs are finished, skipped
    assert main(["sweep", str(config), "loss.beta=0.1,0.5", "--no-report"]) == 0
    assert capsys.readouterr().err.count("already finished, skipped") == 2
    # the same folder names, another fixed value: refused before anything runs, the runs untouched
    summary = (tmp_path / "sweep" / "beta-0.1" / "summary.json").read_text()
    assert main(["sweep", str(config), "loss.beta=0.1,0.5", "loss.method=ipo", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "beta-0.1 holds a run made with another config (loss.method: 'dpo' there, 'ipo' here)" in err
    assert "beta-0.5 holds a run made with another config" in err and "already finished" not in err
    assert (tmp_path / "sweep" / "beta-0.1" / "summary.json").read_text() == summary


def write_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "some/model"},
                "data": {"train": "pairs.jsonl"},
                "training": {"output_dir": str(tmp_path / "sweep"), "max_steps": 1},
            }
        )
    )
    return config


@pytest.fixture
def fake_train(monkeypatch):
    """`dpolab train` replaced by what it leaves behind: config.yaml, then summary.json."""
    commands = []

    def run(command):
        config_path, overrides = command[4], command[5:]
        config = load_config(config_path, overrides)
        folder = config.training["output_dir"]
        dump_config(config, f"{folder}/config.yaml")
        with open(f"{folder}/summary.json", "w") as handle:
            json.dump({"global_step": 1}, handle)
        commands.append(overrides)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr("dpolab.training.sweep.subprocess.run", run)
    return commands


def test_a_run_counts_as_finished_only_with_the_same_config(tmp_path, fake_train):
    config = write_config(tmp_path)
    root = tmp_path / "sweep"
    sweep(str(config), ["loss.beta=0.1,0.5", "loss.method=dpo"], report=False)
    assert [c[:2] for c in fake_train] == [
        ["loss.beta=0.1", "loss.method=dpo"],
        ["loss.beta=0.5", "loss.method=dpo"],
    ]
    # the same configs: skipped (the output folder written another way is the same folder)
    fake_train.clear()
    sweep(str(config), ["loss.beta=0.1,0.5"], out_dir=f"{tmp_path}/./sweep", report=False)
    assert fake_train == []
    # another fixed value names the same folders: refused, nothing run, nothing overwritten
    with pytest.raises(DpolabError) as err:
        sweep(str(config), ["loss.beta=0.1,0.5", "loss.method=ipo"], report=False)
    message = str(err.value)
    assert (
        f"{root / 'beta-0.1'} holds a run made with another config (loss.method: 'dpo' there, 'ipo' here)"
        in message
    )
    assert f"{root / 'beta-0.5'} holds a run made with another config" in message
    assert "--out DIR" in message and fake_train == []
    assert yaml.safe_load((root / "beta-0.1" / "config.yaml").read_text())["loss"]["method"] == "dpo"
    # in another folder it runs
    sweep(str(config), ["loss.beta=0.1,0.5", "loss.method=ipo"], out_dir=str(tmp_path / "ipo"), report=False)
    assert len(fake_train) == 2


def test_run_states(tmp_path):
    config = load_config(write_config(tmp_path), ["loss.beta=0.1"])
    folder = tmp_path / "run"
    assert run_state(folder, config) == ("new", None)
    folder.mkdir()
    assert run_state(folder, config) == ("new", None)  # an empty folder
    (folder / "notes.txt").write_text("mine")
    state, why = run_state(folder, config)
    assert state == "other" and "holds files but no config.yaml" in why
    (folder / "notes.txt").unlink()
    dump_config(config, folder / "config.yaml")
    assert run_state(folder, config) == ("unfinished", None)  # interrupted: it runs again
    (folder / "summary.json").write_text("{}")
    assert run_state(folder, config) == ("finished", None)
    other = load_config(write_config(tmp_path), ["loss.beta=0.3", "training.learning_rate=1e-5"])
    state, why = run_state(folder, other)
    assert state == "other"
    assert "loss.beta: 0.1 there, 0.3 here; training.learning_rate: '(not set)' there, 1e-05 here" in why
