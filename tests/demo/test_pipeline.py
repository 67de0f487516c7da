"""`dpolab demo --quick` end to end: every stage runs, the report and summary.json hold what the
issue asks for, values are finite, and a second run reuses the finished stages; the same on a
pretrained model given as a GGUF file (`--model`: chat pairs, LoRA, the paper's layers)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from dpolab.cli import main
from dpolab.training.sweep import config_differences

MODELS = ["sft", "dpo-low", "dpop-low", "idpo-low", "dpo-high", "dpop-high"]
KEYS = ["accuracy/greedy", "accuracy/sampled", "chosen_logp_change"]
TRAINED_KEYS = ["rewards/accuracies", "dpo_likelihood", "vs_sft/win", "vs_sft/lose", "vs_sft/tie"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for stage in ("task", "model", "sft", "train", "sweep", "evaluate", "report"):
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
    assert len(summary["findings"]) == 6 and all(isinstance(f["shown"], bool) for f in summary["findings"])
    check_practice(out, summary, run="dpo-low", steps=[2, 4, 6, 8], problems=16, models=["sft"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "What it shows" in html and "--quick run" in html
    assert (out / "report.md").exists() and any((out / "plots").glob("*.png"))
    # configs a user can run again by hand
    assert (out / "configs" / "dpop-low.yaml").exists()

    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("done before, reused") == 7
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


def check_practice(out, summary, *, run, steps, problems, models):
    """The practitioner study's part of summary.json and the runs behind it."""
    practice = summary["practice"]
    loss = practice["forgetting"]["loss"]
    assert list(loss) == [*models, "beta 0.1", "beta 0.3", "beta 0.5"]
    assert all(math.isfinite(v) and v > 0 for v in loss.values())
    early = practice["early_stopping"]
    assert early["run"] == run and [r["step"] for r in early["checkpoints"]] == steps
    for row in early["checkpoints"]:
        assert 0 <= row["rewards/accuracies"] <= 1 and row["wins"] + row["losses"] + row["ties"] == problems
    verdicts = [f["verdict"] for f in summary["findings"][-2:]]
    assert all(v in ("reproduced", "partly", "not") for v in verdicts)
    names = [f["finding"].split(":")[0] for f in summary["findings"][-2:]]
    assert names == ["Practitioner study, forgetting", "Practitioner study, early stopping"]
    # β 0.3 is the run itself; the sweep trained the others with its config but for β (and its checkpoints)
    sweep = out / "runs" / "beta-sweep"
    assert sorted(p.name for p in sweep.iterdir()) == ["beta-0.1", "beta-0.5"]
    first = yaml.safe_load((out / "runs" / run / "config.yaml").read_text())
    other = yaml.safe_load((sweep / "beta-0.1" / "config.yaml").read_text())
    differences = {d.split(":")[0] for d in config_differences(first, other)}
    checkpointing = {
        "training.eval_steps",
        "training.save_strategy",
        "training.save_steps",
        "training.save_total_limit",
        "training.save_only_model",
    }
    assert (
        {"loss.beta", "training.save_strategy"}
        <= differences
        <= {"loss.beta", "training.output_dir", *checkpointing}
    )
    assert (out / "plots" / "checkpoints.png").exists()


@pytest.mark.slow
def test_quick_demo_on_a_pretrained_gguf_model(tmp_path, tokenizer):
    """`dpolab demo --quick --model FILE.gguf`: the file converted once into base-model/, the pairs
    rendered through its chat template, LoRA adapters with Table 1's targets, intermediate DPO at the
    paper's depths of its 4 layers (1 and 3), forgetting on standard-library docstrings."""
    pytest.importorskip("gguf")
    from dpolab.testing import tiny_model
    from dpolab.testing_gguf import write_tiny_gguf

    gguf = write_tiny_gguf(
        tiny_model("llama", vocab_size=len(tokenizer) + 1), tokenizer, tmp_path / "tiny.gguf"
    )
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--model", str(gguf), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["source"] == str(gguf) and summary["model"]["num_layers"] == 4
    assert summary["model"]["path"] == str(out / "base-model")
    assert "quantization_config" not in json.loads((out / "base-model" / "config.json").read_text())
    assert list(summary["models"]) == ["sft", "dpo-low", "dpop-low", "idpo-low"]
    idpo = yaml.safe_load((out / "configs" / "idpo-low.yaml").read_text())
    assert idpo["loss"]["intermediate"]["layers"] == [1, 3]
    assert idpo["model"]["lora"]["target_modules"] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip
    adapter = json.loads((out / "runs" / "dpo-low" / "checkpoint-2" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(out / "runs" / "sft")
    pair = json.loads((out / "data" / "train.low.chat.jsonl").read_text().splitlines()[0])
    assert pair["prompt"][0]["role"] == "user" and pair["prompt"][0]["content"].endswith("now?")
    for row in summary["models"].values():
        assert math.isfinite(row["accuracy/greedy"]) and math.isfinite(row["chosen_logp_change"])
    check_practice(out, summary, run="dpo-low", steps=[2, 4], problems=4, models=["base", "sft"])
    assert "docstrings of the Python" in summary["practice"]["forgetting"]["text"]
    assert "a pretrained model" in (out / "report.md").read_text()


def test_a_pretrained_model_without_a_chat_template_is_one_line(tmp_path, capsys):
    from dpolab.testing import build_tokenizer, tiny_model

    tokenizer = build_tokenizer(chat_template=False)
    folder = tmp_path / "base"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main(["demo", "--quick", "--model", str(folder), "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        f"--model {folder}: its tokenizer has no chat template; the demo on a pretrained model renders the "
        "problems as conversations (give an instruct model)"
    )
