"""Token-level analysis on hand-made pairs: m, the spans, and per-token log-probs against a naive forward."""

from __future__ import annotations

import json

import pytest
import torch

from dpolab.analysis.tokens import first_difference, span_logprobs, token_analysis
from dpolab.cli import main
from dpolab.data.tokenize import TokenizedPair
from dpolab.testing import tiny_model


def test_first_difference():
    assert first_difference([5, 6, 7, 1], [5, 9, 7, 1]) == 1
    assert first_difference([5, 6, 1], [8, 6, 1]) == 0
    assert first_difference([5, 6, 7, 1], [5, 6, 1]) == 2  # 7 against EOS
    assert first_difference([5, 6], [5, 6, 7]) == 2  # chosen a prefix of rejected: m = its length


def test_spans_by_hand():
    logps = [
        ([-1.0, -2.0, -3.0], [-1.0, -5.0, -6.0]),  # m = 1
        ([-4.0], [-8.0]),
    ]  # m = 0
    spans = span_logprobs(logps, [1, 0])
    assert spans["chosen_before_m"] == {"mean": -1.0, "pair_mean": -1.0, "tokens": 1, "pairs": 1}
    # pooled: (−2 − 3 − 4)/3 = −3; per pair first: mean(−2.5, −4) = −3.25
    assert spans["chosen_from_m"] == {"mean": -3.0, "pair_mean": -3.25, "tokens": 3, "pairs": 2}
    assert spans["rejected_from_m"]["mean"] == pytest.approx((-5 - 6 - 8) / 3)


PAIRS = [
    TokenizedPair(prompt_ids=[0, 10, 11], chosen_ids=[20, 21, 22, 1], rejected_ids=[20, 30, 22, 1]),  # m = 1
    TokenizedPair(prompt_ids=[0, 12], chosen_ids=[40, 41, 1], rejected_ids=[50, 41, 1]),  # m = 0
    TokenizedPair(prompt_ids=[0, 13, 14, 15], chosen_ids=[60, 61, 62, 1], rejected_ids=[60, 61, 1]),  # m = 2
]


def naive_token_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(completion)]


def test_token_analysis_matches_a_naive_forward(tokenizer):
    reference = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, seed=0)
    policy = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, seed=4)
    result = token_analysis({"dpo": policy}, reference, PAIRS, batch_size=2)
    assert list(result["models"]) == ["reference", "dpo"]
    assert result["m"]["mean"] == pytest.approx(1.0) and result["m"]["zero"] == 1
    for name, model in (("reference", reference), ("dpo", policy)):
        before, after, rejected_after = [], [], []
        for pair, m in zip(PAIRS, (1, 0, 2)):
            chosen = naive_token_logps(model, pair.prompt_ids, pair.chosen_ids)
            rejected = naive_token_logps(model, pair.prompt_ids, pair.rejected_ids)
            before += chosen[:m]
            after += chosen[m:]
            rejected_after += rejected[m:]
        spans = result["models"][name]
        assert spans["chosen_before_m"]["tokens"] == 3 and spans["chosen_from_m"]["tokens"] == 8
        assert spans["chosen_before_m"]["mean"] == pytest.approx(sum(before) / len(before), abs=1e-5)
        assert spans["chosen_from_m"]["mean"] == pytest.approx(sum(after) / len(after), abs=1e-5)
        assert spans["rejected_from_m"]["mean"] == pytest.approx(
            sum(rejected_after) / len(rejected_after), abs=1e-5
        )


def test_cli(tmp_path, model_dir, capsys):
    pairs = tmp_path / "metamath.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {
                    "prompt": "Tom has 3 apples and buys 5 more.",
                    "chosen": " 3 + 5 = 8. #### 8",
                    "rejected": " 3 + 5 = 9. #### 9",
                },
                {
                    "prompt": "What is 2 + 2?",
                    "chosen": " 2 + 2 = 4. #### 4",
                    "rejected": " 2 + 2 = 5. #### 5",
                },
            ]
        )
    )
    out = tmp_path / "tokens.json"
    plot = tmp_path / "plots" / "tokens.png"
    assert (
        main(
            [
                "analyze",
                "tokens",
                "--model",
                f"dpo={model_dir}",
                "--reference",
                str(model_dir),
                "--pairs",
                str(pairs),
                "--output",
                str(out),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["kind"] == "tokens" and list(result["models"]) == ["reference", "dpo"]
    # the same weights: identical numbers
    assert result["models"]["dpo"] == result["models"]["reference"]
    assert result["m"]["zero"] == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "chosen from m" in capsys.readouterr().out


def test_cli_bad_row_names_the_flag(tmp_path, model_dir, capsys):
    """A bad pair stops `dpolab analyze` with file, row and field, and advises the command's own
    flag (not the training config's key)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "What is 2 + 2?", "chosen": " 4", "rejected": " 4"}) + "\n")
    args = ["analyze", "tokens", "--model", f"dpo={model_dir}", "--reference", str(model_dir)]
    assert main([*args, "--pairs", str(pairs), "--output", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "pairs.jsonl, row 1, field 'rejected'" in err and "pass --on-bad-rows skip" in err
    assert "data.on_bad_rows" not in err
