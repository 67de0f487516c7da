"""The analyses and the report on a real `dpolab train` run: the layer analysis of the saved model
reproduces the eval metrics the trainer logged at its last step, final and intermediate layers."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from dpolab.analysis.layers import analyze_layers
from dpolab.analysis.pairs import load_tokenized_pairs
from dpolab.evaluation.results import write_result
from dpolab.report import write_report
from dpolab.training import config_from_dict, run

ROWS = [
    {"prompt": "Question: 3 + 5 = ?", "chosen": " Answer: 8", "rejected": " Answer: 9"},
    {"prompt": "Question: 2 + 2 = ?", "chosen": " Answer: 4", "rejected": " The answer is 5"},
    {"prompt": "Human: What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon, I think."},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sleeps."},
]


def test_layer_analysis_equals_the_logged_eval_metrics(tmp_path, tokenizer, model_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "run"
    beta = 0.5
    run(
        config_from_dict(
            {
                "model": {"name_or_path": str(model_dir)},
                "data": {"train": str(data), "eval": str(data), "max_length": 64, "max_prompt_length": 32},
                "loss": {"method": "dpo", "beta": beta, "intermediate": {"layers": [2]}},
                "training": {
                    "output_dir": str(out),
                    "max_steps": 2,
                    "logging_steps": 1,
                    "eval_strategy": "steps",
                    "eval_steps": 2,
                    "learning_rate": 1e-2,
                    "per_device_train_batch_size": 4,
                    "per_device_eval_batch_size": 4,
                    "disable_tqdm": True,
                    "seed": 0,
                },
            }
        )
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if x["split"] == "eval"][-1]
    assert logged["step"] == 2  # evaluated with the weights that were saved

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # the policy's starting weights
    pairs = load_tokenized_pairs(data, tokenizer, max_length=64, max_prompt_length=32)
    result = analyze_layers({"run": model}, reference, pairs, beta=beta)
    ours = result["models"]["run"]
    assert ours["dpo_likelihood"][-1] == pytest.approx(logged["dpo_likelihood"], abs=1e-5)
    assert ours["dpo_likelihood"][-1] == pytest.approx(-logged["loss/final"], abs=1e-5)
    assert ours["dpo_likelihood"][1] == pytest.approx(logged["layers/2/dpo_likelihood"], abs=1e-5)
    assert ours["rewards/accuracies"][-1] == pytest.approx(logged["rewards/accuracies"])
    assert ours["rewards/margins"][1] == pytest.approx(logged["layers/2/rewards/margins"], abs=1e-5)
    assert ours["dpo_likelihood"][-1] != pytest.approx(-0.693147, abs=1e-4)  # training moved the model

    write_result(out / "eval" / "layers.json", result)
    page = write_report([out], tmp_path / "report.html").read_text()
    assert "layers/&lt;k&gt;/rewards/accuracies" in page  # the per-layer training curves
    assert "Layer-wise DPO likelihood" in page and "@ step 2" in page
