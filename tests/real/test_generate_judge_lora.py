"""On the real model: `dpolab generate` through the chat template answers a simple sum; the `hf:`
judge runs on it in both orders; LoRA with the Intermediate DPO paper's Table-1 settings trains a
step of intermediate DPO."""

from __future__ import annotations

import json
import math

import pytest

from dpolab.cli import main
from dpolab.evaluation.answers import lm_eval_gsm8k

pytestmark = pytest.mark.real

# the Intermediate DPO paper's Table 1 (docs/notes.md)
TABLE_1_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_generation_through_the_chat_template_answers_a_sum(tmp_path, smollm2_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "What is 2 + 3?"}]}) + "\n")
    answers = tmp_path / "answers.jsonl"
    command = ["generate", "--model", str(smollm2_dir), "--prompts", str(prompts), "--output", str(answers)]
    greedy = ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "12"]
    assert main([*command, *greedy, "--device", "cpu"]) == 0
    completion = json.loads(answers.read_text())["completion"]
    # its last number is the sum (lm-eval's flexible-extract): "2 + 3 = 5"
    assert lm_eval_gsm8k(completion, "#### 5")["exact_match_flexible"] == 1.0, completion


def test_the_hf_judge_runs_on_the_real_model(tmp_path, smollm2_dir):
    questions = ["What is 2 + 3?", "What is the capital of France?"]
    right, wrong = ["2 + 3 = 5", "The capital of France is Paris."], ["2 + 3 = 7", "The capital is Berlin."]
    for name, completions in (("a", right), ("b", wrong)):
        rows = [{"prompt": q, "completion": c} for q, c in zip(questions, completions)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = tmp_path / "winrate.json"
    command = ["eval", "winrate", "--a", str(tmp_path / "a.jsonl"), "--b", str(tmp_path / "b.jsonl")]
    command += [
        "--judge",
        f"hf:{smollm2_dir}",
        "--output",
        str(result),
        "--bootstrap",
        "10",
        "--device",
        "cpu",
    ]
    assert main(command) == 0
    verdicts = json.loads(result.read_text())
    assert verdicts["wins"] + verdicts["losses"] + verdicts["ties"] == 2
    assert verdicts["judgements"]["new"] == 4  # each prompt judged in both orders
    cache = [json.loads(line) for line in (tmp_path / "winrate.judgements.jsonl").read_text().splitlines()]
    for judgement in cache:  # the log-probs of the verdict tokens "A" and "B", from the real model
        logps = json.loads(judgement["raw"])
        assert set(logps) == {"A", "B"} and all(-30 < v < 0 for v in logps.values()), judgement


def test_lora_with_table_1_targets_trains_a_step_of_intermediate_dpo(tmp_path, smollm2_dir):
    pairs = [
        {"prompt": "Question: What is 3 + 5?\nAnswer:", "chosen": " 8", "rejected": " 9"},
        {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon."},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    config = tmp_path / "lora.yaml"
    config.write_text(
        f"model:\n  name_or_path: {smollm2_dir}\n  lora:\n    r: 16\n    alpha: 16\n    dropout: 0.05\n"
        f"    target_modules: {json.dumps(TABLE_1_TARGETS)}\n"
        f"data:\n  train: {data}\n"
        "loss:\n  method: dpo\n  beta: 0.1\n  intermediate:\n    layers: [10, 21]\n    gamma: 0.9\n"
        f"training:\n  output_dir: {tmp_path / 'run'}\n  learning_rate: 5.0e-4\n  max_steps: 1\n"
        "  per_device_train_batch_size: 2\n  logging_steps: 1\n  disable_tqdm: true\n"
    )
    assert main(["train", str(config)]) == 0
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # LoRA's B starts at zero: at the first step the policy is the reference (adapters off), so
    # every layer's DPO loss is log 2, and so is γ·L_final + (1 − γ)·mean_k L_k
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(TABLE_1_TARGETS)
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (16, 16, 0.05)

    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "adapter_model.safetensors")
    # r·(in + out) per target and layer; SmolLM2: hidden 576, kv 3 heads × 64 = 192, MLP 1536
    per_layer = 16 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert sum(w.numel() for w in weights.values()) == 30 * per_layer == 4_884_480
    # the step moved every B away from zero: it trained
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
