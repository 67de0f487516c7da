"""The local judges (hf:, rm:, exact:) and the judge prompt."""

from __future__ import annotations

import json

import pytest
import torch

from dpolab.cli import main
from dpolab.errors import DpolabError
from dpolab.evaluation.answer_files import Answer
from dpolab.evaluation.judges import (
    JudgeRequest,
    build_judge,
    default_judge_prompt,
    load_judge_prompt,
    render_judge_prompt,
)
from dpolab.evaluation.winrate import winrate
from dpolab.testing import tiny_config

A = [
    Answer(i, i + 1, f"Question {i}?", c, {}) for i, c in enumerate(["Paris.", "It is 8 apples.", "No idea."])
]
B = [Answer(i, i + 1, f"Question {i}?", c, {}) for i, c in enumerate(["Rome.", "8", "The answer is 42."])]


def test_default_prompt():
    text = default_judge_prompt()
    for word in ("helpfulness", "correctness", "harmlessness", "order", "Length", "[[A]]", "[[B]]", "[[C]]"):
        assert word in text
    rendered = render_judge_prompt(text, JudgeRequest("Q {x}?", "ans {answer_b}", "two"))
    assert "[Question]\nQ {x}?" in rendered and "[Answer A]\nans {answer_b}" in rendered  # no re-substitution
    assert "[Answer B]\ntwo" in rendered


def test_custom_prompt_needs_placeholders(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Compare {answer_a} and {answer_b}.")
    with pytest.raises(DpolabError, match=r"lacks the placeholder\(s\) \{question\}"):
        load_judge_prompt(path)
    with pytest.raises(DpolabError, match="unknown judge 'gpt4'"):
        build_judge("gpt4")


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    LlamaForSequenceClassification(
        tiny_config("llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=2, num_labels=1)
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_causal_lm_is_not_a_reward_model(model_dir):
    """A checkpoint without a trained score head would judge at random: refused."""
    with pytest.raises(DpolabError, match=r"is not a reward model.*score\.weight"):
        build_judge(f"rm:{model_dir}", device="cpu")


def test_reward_model_judge(reward_model_dir):
    judge = build_judge(f"rm:{reward_model_dir}", device="cpu")
    scores = {}
    for x, y in zip(A, B):
        scores[x.completion] = judge.score(x.prompt, x.completion)
        scores[y.completion] = judge.score(y.prompt, y.completion)
    # a reward model scores each answer alone, so both orders agree: never a tie from position
    result = winrate(A, B, judge)
    expected = ["win" if scores[x.completion] > scores[y.completion] else "loss" for x, y in zip(A, B)]
    assert [p["outcome"] for p in result["pairs"]] == expected
    # a margin not above the threshold is a tie
    wide = build_judge(f"rm:{reward_model_dir}", device="cpu", threshold=1e6)
    assert winrate(A, B, wide)["ties"] == 3


def test_causal_lm_judge_reads_the_verdict_tokens(model_dir, tokenizer):
    judge = build_judge(f"hf:{model_dir}", device="cpu")
    request = JudgeRequest("What is the capital of France?", "Paris.", "Rome.")
    context = judge.context(request)
    assert context.startswith("<s><|user|>\n") and context.endswith("<|assistant|>\nVerdict: [[")
    judgement = judge.judge(request)
    lp = json.loads(judgement.raw)
    # the naive way: one forward over the context, log-softmax of the last position
    ids_a = tokenizer(context + "A", add_special_tokens=False)["input_ids"]
    ids_b = tokenizer(context + "B", add_special_tokens=False)["input_ids"]
    n = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y)
    with torch.no_grad():
        logp = torch.log_softmax(judge.model(input_ids=torch.tensor([ids_a[:n]])).logits[0, -1], -1)
    assert lp["A"] == pytest.approx(float(logp[ids_a[n]]), abs=1e-5)
    assert lp["B"] == pytest.approx(float(logp[ids_b[n]]), abs=1e-5)
    assert judgement.verdict == ("first" if lp["A"] > lp["B"] else "second")


def test_causal_lm_judge_refuses_a_tokenizer_without_the_verdicts(tmp_path):
    """The demo's word-level tokenizer has no 'A' or 'B': both are <unk>, so no verdict can be read."""
    from dpolab.demo.tokenizer import build_demo_tokenizer
    from dpolab.testing import tiny_model

    tokenizer = build_demo_tokenizer()
    assert tokenizer("A", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = build_judge(f"hf:{tmp_path}", device="cpu")
    with pytest.raises(
        DpolabError, match=r"does not tell the verdicts 'A' and 'B' apart.*openai:, rm: or exact:"
    ):
        judge.judge(JudgeRequest("What is 2 + 2?", "4", "5"))


def test_cli_exact_judge_against_chosen(tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"index": 0, "prompt": "Tom has 3 apples and buys 5 more.", "completion": "#### 8"},
                {"index": 1, "prompt": "2 + 2?", "completion": "#### 5"},
            ]
        )
    )
    prefs = tmp_path / "pairs.jsonl"
    prefs.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {
                    "prompt": "Tom has 3 apples and buys 5 more.",
                    "chosen": "3 + 5 = 8 #### 8",
                    "rejected": "#### 9",
                },
                {"prompt": "2 + 2?", "chosen": "#### 4", "rejected": "#### 5"},
            ]
        )
    )
    out = tmp_path / "eval" / "exact.json"
    assert (
        main(
            ["eval", "winrate", "--a", str(gen), "--b", str(prefs), "--judge", "exact:", "--output", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert (result["wins"], result["losses"], result["ties"]) == (0, 1, 1)
    assert result["b"]["name"] == "pairs"
    printed = capsys.readouterr().out
    assert "gen vs pairs" in printed and "win rate" in printed
    prefs.write_text(
        json.dumps({"prompt": "something else", "chosen": "#### 8", "rejected": "#### 9"}) + "\n"
    )
    assert (
        main(
            ["eval", "winrate", "--a", str(gen), "--b", str(prefs), "--judge", "exact:", "--output", str(out)]
        )
        == 2
    )
    assert "gen.jsonl, row 1, field 'prompt'" in capsys.readouterr().err


def test_judge_cache_key_follows_the_weights(tmp_path, reward_model_dir):
    """A judge model retrained into the same folder must not reuse the old verdicts: the cache key
    covers its weights (and dtype), not just its path."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "rm"
    shutil.copytree(reward_model_dir, folder)
    before = build_judge(f"rm:{folder}", device="cpu").cache_id
    assert before == build_judge(f"rm:{folder}", device="cpu").cache_id  # stable
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.score.weight.mul_(2)
    model.save_pretrained(folder)
    after = build_judge(f"rm:{folder}", device="cpu").cache_id
    assert after != before and after.startswith(f"rm:{folder}|threshold=0.0|weights=")
    assert "dtype=float32" in after
