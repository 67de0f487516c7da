"""`dpolab demo --quick` end to end: every stage runs, the report and summary.json hold what the
issue asks for, values are finite, and a second run reuses the finished stages."""

from __future__ import annotations

import json
import math

import pytest

from dpolab.cli import main

MODELS = ["sft", "dpo-low", "dpop-low", "idpo-low", "dpo-high", "dpop-high"]
KEYS = ["accuracy/greedy", "accuracy/sampled", "chosen_logp_change"]
TRAINED_KEYS = ["rewards/accuracies", "dpo_likelihood", "vs_sft/win", "vs_sft/lose", "vs_sft/tie"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for stage in ("task", "model", "sft", "train", "evaluate", "report"):
        assert (out / ".stages" / f"{stage}.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == MODELS
    for name, row in summary["models"].items():
        for key in KEYS + (TRAINED_KEYS if name != "sft" else []):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (name, key)
        assert 0 <= row["accuracy/greedy"] <= 1
    for name in ("sft", "dpo-low", "dpop-low", "idpo-low"):
        row = summary["models"][name]
        assert math.isfinite(row["tokens/chosen_before_m"]) and math.isfinite(row["tokens/chosen_from_m"])
    assert summary["models"]["sft"]["chosen_logp_change"] == 0.0
    for name in MODELS[1:]:
        row = summary["models"][name]
        assert row["vs_sft/win"] + row["vs_sft/lose"] + row["vs_sft/tie"] == 32
    # the task's pairs: low edit distance a few %, high far more, and reported
    assert 0.02 < summary["task"]["edit_distance"]["low/mean"] < 0.12
    assert summary["task"]["edit_distance"]["high/mean"] > 0.3
    assert summary["peak_rss_mib"] > 100 and summary["total_s"] == pytest.approx(
        sum(summary["timings_s"].values())
    )
    assert len(summary["findings"]) == 4 and all(isinstance(f["shown"], bool) for f in summary["findings"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "What it shows" in html and "--quick run" in html
    assert (out / "report.md").exists() and any((out / "plots").glob("*.png"))
    # configs a user can run again by hand
    assert (out / "configs" / "dpop-low.yaml").exists()

    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("done before, reused") == 6
    assert main(["demo", "--out", str(out)]) == 2  # a full run into a quick run's folder
    assert "use another --out, or --force" in capsys.readouterr().err

    # another seed into the same folder is refused; with --force every stage runs again, anew
    first_problem = (out / "data" / "test.problems.jsonl").read_text().splitlines()[0]
    assert main(["demo", "--quick", "--out", str(out), "--seed", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(out), "--seed", "1", "--force"]) == 0
    assert "done before, reused" not in capsys.readouterr().err
    assert (out / "data" / "test.problems.jsonl").read_text().splitlines()[0] != first_problem
    reseeded = json.loads((out / "summary.json").read_text())
    assert list(reseeded["models"]) == MODELS and reseeded["models"] != summary["models"]
