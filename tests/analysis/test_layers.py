"""The layer-wise DPO likelihood: the final layer equals the training metric −(DPO loss); an
intermediate layer equals the logit lens computed the obvious way."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpolab.analysis.layers import analyze_layers, layer_metrics
from dpolab.analysis.pairs import load_tokenized_pairs
from dpolab.cli import main
from dpolab.errors import DpolabError
from dpolab.objectives.losses import dpo_loss
from dpolab.testing import tiny_model

PAIRS = [
    {
        "prompt": "What is the capital of France?",
        "chosen": " The capital of France is Paris.",
        "rejected": " Rome.",
    },
    {
        "prompt": "Tom has 3 apples and buys 5 more.",
        "chosen": " 3 + 5 = 8. #### 8",
        "rejected": " 3 + 5 = 9. #### 9",
    },
    {
        "prompt": [{"role": "user", "content": "Say hi"}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]


def write_pairs(path, rows=PAIRS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def naive_logp(model, prompt_ids, completion_ids, layer=None):
    """Σ log p(completion | prompt) from one unpacked sequence; layer k < L through final norm + head."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        if layer is None:
            logits = out.logits[0]
        else:
            logits = model.lm_head(model.model.norm(out.hidden_states[layer]))[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    n = len(prompt_ids)
    return sum(float(logp[n - 1 + j, t]) for j, t in enumerate(completion_ids))


@pytest.fixture(scope="module")
def models(tokenizer):
    reference = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=3, seed=0)
    policy = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=3, seed=1)
    return reference, policy


def test_final_layer_is_minus_the_dpo_loss(tmp_path, tokenizer, models):
    reference, policy = models
    pairs = load_tokenized_pairs(write_pairs(tmp_path / "p.jsonl"), tokenizer)
    beta = 0.1
    result = analyze_layers({"policy": policy}, reference, pairs, beta=beta, batch_size=2)
    assert result["layers"] == [1, 2, 3] and result["kind"] == "layers"

    def logps(model, layer=None):
        return (
            torch.tensor([naive_logp(model, p.prompt_ids, p.chosen_ids, layer) for p in pairs]),
            torch.tensor([naive_logp(model, p.prompt_ids, p.rejected_ids, layer) for p in pairs]),
        )

    (pc, pr), (rc, rr) = logps(policy), logps(reference)
    losses, chosen_rewards, rejected_rewards, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    final = result["models"]["policy"]
    assert final["dpo_likelihood"][-1] == pytest.approx(-float(losses.mean()), abs=1e-5)
    assert final["rewards/accuracies"][-1] == pytest.approx(
        float((chosen_rewards > rejected_rewards).float().mean())
    )
    assert final["rewards/margins"][-1] == pytest.approx(
        float((chosen_rewards - rejected_rewards).mean()), abs=1e-5
    )
    # layer 2 of 3: the logit lens through the final norm, policy and reference alike
    (pc, pr), (rc, rr) = logps(policy, 2), logps(reference, 2)
    expected = torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
    assert final["dpo_likelihood"][1] == pytest.approx(float(expected), abs=1e-5)


def test_the_reference_against_itself_is_log_half(tmp_path, tokenizer, models):
    reference, _ = models
    pairs = load_tokenized_pairs(write_pairs(tmp_path / "p.jsonl"), tokenizer)
    result = analyze_layers({"same": reference}, reference, pairs, beta=0.5, layers=[1, 3])
    assert result["models"]["same"]["dpo_likelihood"] == pytest.approx([math.log(0.5)] * 2)
    assert result["models"]["same"]["rewards/accuracies"] == [0.0, 0.0]  # r_w > r_l is strict


def test_layer_metrics_by_hand():
    # one layer, two pairs; β = 1: pair 1 Δ_w − Δ_l = (−1 − −2) − (−3 − −1) = 3; pair 2 = (0 − 0) − (1 − 0) = −1
    pc, pr = torch.tensor([[-1.0, 0.0]]), torch.tensor([[-3.0, 1.0]])
    rc, rr = torch.tensor([[-2.0, 0.0]]), torch.tensor([[-1.0, 0.0]])
    m = layer_metrics(pc, pr, rc, rr, beta=1.0)
    expected = (math.log(1 / (1 + math.exp(-3))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert float(m["dpo_likelihood"][0]) == pytest.approx(expected)
    assert float(m["rewards/accuracies"][0]) == 0.5 and float(m["rewards/margins"][0]) == pytest.approx(1.0)


def test_layer_counts_must_match(tmp_path, tokenizer, models):
    reference, _ = models
    other = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2)
    pairs = load_tokenized_pairs(write_pairs(tmp_path / "p.jsonl"), tokenizer)
    with pytest.raises(DpolabError, match="has 2 layers but the reference has 3"):
        analyze_layers({"other": other}, reference, pairs, beta=0.1)


def test_cli_several_models_one_plot(tmp_path, tokenizer, model_dir, capsys):
    second = tmp_path / "dpo"
    tiny_model("llama", vocab_size=len(tokenizer), seed=5).save_pretrained(second)
    tokenizer.save_pretrained(second)
    pairs = write_pairs(tmp_path / "p.jsonl")
    out = tmp_path / "eval" / "layers.json"
    assert (
        main(
            [
                "analyze",
                "layers",
                "--model",
                f"sft={model_dir}",
                "--model",
                str(second),
                "--reference",
                str(model_dir),
                "--pairs",
                str(pairs),
                "--beta",
                "0.1",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert list(result["models"]) == ["sft", "dpo"] and len(result["layers"]) == 4
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "DPO likelihood" in capsys.readouterr().out
    assert (
        main(
            [
                "analyze",
                "layers",
                "--model",
                str(second),
                "--reference",
                str(model_dir),
                "--pairs",
                str(pairs),
                "--beta",
                "0.1",
                "--output",
                str(out),
                "--layers",
                "0,9",
            ]
        )
        == 2
    )
    assert "outside 1..4" in capsys.readouterr().err
