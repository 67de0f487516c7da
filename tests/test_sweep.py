"""`dpolab sweep`: a grid of runs, one process each, named by their values, resumable."""

from __future__ import annotations

import json

import pytest
import yaml

from dpolab.cli import main
from dpolab.errors import DpolabError
from dpolab.sweep import grid, run_name, split_values


def test_values_split_outside_brackets():
    assert split_values("0.1,0.3") == ["0.1", "0.3"]
    assert split_values("[11],[11,22],[]") == ["[11]", "[11,22]", "[]"]
    with pytest.raises(DpolabError, match="unbalanced"):
        split_values("[11,22")


def test_grid_and_names():
    combos = grid(["loss.beta=0.1,0.3", "loss.intermediate_layers=[],[2,3]"])
    assert combos == [
        ["loss.beta=0.1", "loss.intermediate_layers=[]"],
        ["loss.beta=0.1", "loss.intermediate_layers=[2,3]"],
        ["loss.beta=0.3", "loss.intermediate_layers=[]"],
        ["loss.beta=0.3", "loss.intermediate_layers=[2,3]"],
    ]
    assert run_name(combos[1]) == "beta-0.1_intermediate_layers-2-3"
    assert run_name(combos[2]) == "beta-0.3_intermediate_layers-none"


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
    assert main(["sweep", str(config), "loss.beta=0.1,0.5", "--no-report"]) == 0
    assert capsys.readouterr().err.count("already finished, skipped") == 2
