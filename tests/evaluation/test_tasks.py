"""Downstream tasks: acc/acc_norm worked out by hand, lm-eval's encoding and schemas, GSM8K scoring."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from dpolab.errors import DpolabError
from dpolab.evaluation.harness import harness_metrics, run_harness
from dpolab.evaluation.tasks import (
    choice_metrics,
    cut_at_stop,
    encode_pair,
    evaluate_choices,
    evaluate_generation,
    evaluate_tasks,
    gsm8k_metrics,
    hellaswag_doc,
    load_task,
)
from dpolab.testing import build_tokenizer, tiny_model


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def byte_tokenizer():
    """Byte-level BPE with no merges (256 bytes + 4 specials = 260): one token per ASCII character."""
    return build_tokenizer(vocab_size=260)


@pytest.fixture(scope="module")
def uniform_model(byte_tokenizer):
    """A tiny Llama whose output head is zero: every next token has probability exactly 1/260."""
    model = tiny_model("llama", vocab_size=len(byte_tokenizer), hidden_size=16, num_layers=2)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def arc_row(question, texts, key_index):
    labels = ["A", "B", "C", "D"][: len(texts)]
    return {
        "id": question,
        "question": question,
        "choices": {"text": texts, "label": labels},
        "answerKey": labels[key_index],
    }


def test_acc_and_acc_norm_by_hand(tmp_path, byte_tokenizer, uniform_model):
    # With p = 1/260 per token and one token per character, choice c (continuation " " + c) has
    #   LL = −(1 + len(c))·log 260.
    # acc picks the highest LL = the SHORTEST choice (first one on a tie, as numpy's argmax);
    # acc_norm picks the highest LL/len(c) = −(1 + 1/len(c))·log 260 = the LONGEST choice.
    rows = [
        arc_row("q1", ["Paris", "Rome", "Lyon city"], 1),  # gold shortest: acc 1, acc_norm 0
        arc_row("q2", ["Paris", "Rome", "Lyon city"], 2),  # gold longest:  acc 0, acc_norm 1
        arc_row("q3", ["Paris", "Rome", "Lyon city"], 0),  # gold middle:   acc 0, acc_norm 0
        arc_row("q4", ["ab", "abc", "abcd"], 0),  # gold shortest: acc 1, acc_norm 0
        arc_row("q5", ["red", "blue", "tan"], 0),  # red/tan tie on LL -> first (red): acc 1; acc_norm blue: 0
    ]
    path = write_jsonl(tmp_path / "arc.jsonl", rows)
    result = evaluate_tasks(uniform_model, byte_tokenizer, ["arc"], {"arc": str(path)}, batch_size=4)
    arc = result["tasks"]["arc"]
    assert result["kind"] == "tasks"
    assert arc["n"] == 5
    assert arc["acc"] == pytest.approx(3 / 5)
    assert arc["acc_norm"] == pytest.approx(1 / 5)
    assert [s["acc"] for s in arc["samples"]] == [1, 0, 0, 1, 1]
    assert [s["acc_norm"] for s in arc["samples"]] == [0, 1, 0, 0, 0]
    log_v = math.log(260)
    assert arc["samples"][0]["loglikelihoods"] == pytest.approx(
        [-6 * log_v, -5 * log_v, -10 * log_v], rel=1e-5
    )
    # standard error as lm-eval: sample std / sqrt(n); acc values 1,0,0,1,1: mean .6, var .3
    assert arc["acc_stderr"] == pytest.approx(math.sqrt(0.3 / 5))


def test_loglikelihoods_match_a_naive_forward(tmp_path, tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, seed=3)
    rows = [
        {
            "ind": 1,
            "activity_label": "Fox",
            "ctx_a": "The quick brown fox",
            "ctx_b": "jumps",
            "ctx": "The quick brown fox jumps",
            "endings": ["over the dog.", "a capital.", "is Paris", "8 apples"],
            "label": "0",
            "split": "val",
        },
        {
            "ind": 2,
            "activity_label": "Math",
            "ctx_a": "Tom has 3 apples",
            "ctx_b": "and buys 5 more.",
            "ctx": "Tom has 3 apples and buys 5 more.",
            "endings": ["He has 8.", "He has 2 apples now", "Paris."],
            "label": "1",
            "split": "val",
        },
    ]
    docs = load_task("hellaswag", write_jsonl(tmp_path / "hs.jsonl", rows))
    result = evaluate_choices(model, tokenizer, docs, batch_size=3)
    for doc, sample in zip(docs, result["samples"]):
        naive = []
        for choice in doc.choices:
            ctx, cont = encode_pair(tokenizer, doc.context, " " + choice)
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            naive.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        assert sample["loglikelihoods"] == pytest.approx(naive, abs=1e-4)
        expected = choice_metrics(naive, doc.choices, doc.gold)
        assert (sample["acc"], sample["acc_norm"]) == (expected["acc"], expected["acc_norm"])
        assert sample["gold"] == doc.gold


def test_encode_pair_moves_trailing_space(byte_tokenizer):
    ctx, cont = encode_pair(byte_tokenizer, "Answer: ", "Paris")
    assert byte_tokenizer.decode(ctx) == "Answer:" and byte_tokenizer.decode(cont) == " Paris"
    ctx, cont = encode_pair(byte_tokenizer, "", "Hi")
    assert ctx == [byte_tokenizer.eos_token_id] and byte_tokenizer.decode(cont) == "Hi"
    ctx, _ = encode_pair(byte_tokenizer, "Q", " a", add_bos_token=True)
    assert ctx[0] == byte_tokenizer.bos_token_id


def test_hellaswag_schema():
    doc = hellaswag_doc(
        {
            "activity_label": "Making a cake",
            "ctx_a": "She mixes flour [header] and sugar.",
            "ctx_b": "then",
            "endings": [" puts it in the oven [title] Bake it.", "eats"],
            "label": "1",
        },
        7,
    )
    # lm-eval: preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()); " [title]" -> ". ", [..] dropped
    assert doc.context == "Making a cake: She mixes flour and sugar. Then"
    assert doc.choices == ["puts it in the oven. Bake it.", "eats"]
    assert doc.gold == 1 and doc.row == 7


def test_bad_rows_are_named(tmp_path):
    path = write_jsonl(
        tmp_path / "arc.jsonl",
        [
            arc_row("q", ["a", "b"], 0),
            {"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"},
        ],
    )
    with pytest.raises(
        DpolabError, match=r"arc.jsonl, row 2, field 'answerKey': 'E' is not one of the labels"
    ):
        load_task("arc", path)
    path = write_jsonl(tmp_path / "hs.jsonl", [{"ctx": "x", "endings": ["a", "b"], "label": "nine"}])
    with pytest.raises(DpolabError, match=r"row 1, field 'label'"):
        load_task("hellaswag", path)
    with pytest.raises(DpolabError, match="no data for task 'gsm8k'"):
        evaluate_tasks(None, None, ["gsm8k"], {})


def test_gsm8k_scoring():
    assert cut_at_stop("3 + 5 = 8\n#### 8\n\nQuestion: next one") == "3 + 5 = 8\n#### 8\n\n"
    # the reference is the dataset's answer field; lm-eval strips everything up to the last '#### '
    m = gsm8k_metrics("so 1,000 apples.\n#### 1,000", "500 + 500 = 1000 apples\n#### 1,000")
    assert m["reference"] == "1000" and m["strict"] == "1000"
    assert m["exact_match"] == 1.0 and m["exact_match_flexible"] == 1.0
    m = gsm8k_metrics("The answer is 72.", "#### 72")  # no '####': strict misses, flexible finds it
    assert m["strict"] == "[invalid]" and m["flexible"] == "72"
    assert m["exact_match"] == 0.0 and m["exact_match_flexible"] == 1.0
    m = gsm8k_metrics("#### 7 apples, not 8", "#### 8")
    assert m["exact_match"] == 0.0 and m["flexible"] == "8" and m["exact_match_flexible"] == 1.0
    # lm-eval's strict match: a number right after '#### ', the FIRST such line
    assert gsm8k_metrics("#### 5\n#### 7", "#### 5")["exact_match"] == 1.0
    for loose in ("#### The answer is 7", "#### $7", "####7", "#### = = 3 = = 6 = 7"):
        assert gsm8k_metrics(loose, "#### 7")["exact_match"] == 0.0, loose
    # no number normalisation beyond its regexes: 7.0 is not 7, a final '.' is dropped
    assert gsm8k_metrics("#### 7.0", "#### 7")["exact_match"] == 0.0
    assert gsm8k_metrics("#### 7.", "#### 7")["exact_match"] == 1.0


def test_gsm8k_generation_runs(tmp_path, tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=2)
    path = write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "Tom has 3 apples and buys 5 more. How many?", "answer": "3 + 5 = 8\n#### 8"},
            {"question": "What is 2 + 2?", "answer": "#### 4"},
        ],
    )
    docs = load_task("gsm8k", path)
    assert [d.reference for d in docs] == ["3 + 5 = 8\n#### 8", "#### 4"]
    result = evaluate_generation(model, tokenizer, docs, max_new_tokens=6, batch_size=2)
    assert result["n"] == 2
    for sample in result["samples"]:
        assert sample["reference"] in ("8", "4")
        assert sample["exact_match"] == float(sample["strict"] == sample["reference"])
        assert "Question:" not in sample["output"]


@pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is not None, reason="lm-evaluation-harness is installed"
)
def test_harness_bridge_says_it_is_missing():
    with pytest.raises(DpolabError, match="lm-evaluation-harness is not installed"):
        run_harness("some/model", ["arc_challenge"])


def test_harness_metrics_keep_both_gsm8k_filters_apart():
    # the shape of lm_eval.simple_evaluate's result (v0.4): METRIC,FILTER keys, "N/A" stderrs
    out = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.02,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": 0.03,
            },
            "arc_challenge": {
                "alias": "arc_challenge",
                "acc,none": 0.4,
                "acc_stderr,none": 0.01,
                "acc_norm,none": 0.45,
                "acc_norm_stderr,none": "N/A",
            },
            "other": {"exact_match,get-answer": 0.1, "exact_match_stderr,get-answer": 0.01},
        },
        "n-samples": {"gsm8k": {"original": 1319, "effective": 100}, "arc_challenge": {"original": 1172}},
    }
    tasks = harness_metrics(out)
    # the names dpolab's own gsm8k and arc results use
    assert tasks["gsm8k"] == {
        "exact_match": 0.25,
        "exact_match_stderr": 0.02,
        "exact_match_flexible": 0.5,
        "exact_match_flexible_stderr": 0.03,
        "n": 100,
    }
    assert tasks["arc_challenge"] == {"acc": 0.4, "acc_stderr": 0.01, "acc_norm": 0.45}
    assert tasks["other"] == {"exact_match_get_answer": 0.1, "exact_match_get_answer_stderr": 0.01}
    # two keys that would share a name keep lm-eval's own keys
    clash = harness_metrics({"results": {"t": {"acc,none": 0.1, "acc,strict-match": 0.2}}})
    assert clash == {"t": {"acc,none": 0.1, "acc,strict-match": 0.2}}


FIXTURES = Path(__file__).parent.parent / "data" / "fixtures"


def test_harness_runs_lm_eval_itself_on_local_files_and_agrees_per_document(tmp_path, model_dir, capsys):
    """`dpolab eval tasks --harness --data TASK=FILE` runs lm-evaluation-harness (its own ARC and
    HellaSwag configs, reading the local files) on the same documents dpolab scores itself: each
    document's choice log-likelihoods, acc and acc_norm agree. The tiny tokenizer adds a BOS by
    default; both leave it out (dpolab hands lm-eval add_bos_token=False, not its tokenizer default)."""
    pytest.importorskip("lm_eval")
    from dpolab.cli import main

    data = ["--data", f"arc={FIXTURES / 'arc_challenge_train.jsonl'}"]
    data += ["--data", f"hellaswag={FIXTURES / 'hellaswag_train.jsonl'}"]
    common = ["eval", "tasks", "--model", str(model_dir), "--tasks", "arc,hellaswag", *data, "--limit", "3"]
    assert main([*common, "--device", "cpu", "--output", str(tmp_path / "own.json")]) == 0
    assert main([*common, "--device", "cpu", "--harness", "--output", str(tmp_path / "lm_eval.json")]) == 0
    own = json.loads((tmp_path / "own.json").read_text())
    theirs = json.loads((tmp_path / "lm_eval.json").read_text())
    assert theirs["backend"] == "lm-evaluation-harness" and theirs["lm_eval"]
    for task in ("arc", "hellaswag"):
        ours, harness = own["tasks"][task]["samples"], theirs["tasks"][task]["samples"]
        assert [s["doc_id"] for s in harness] == [0, 1, 2] and len(ours) == 3
        for a, b in zip(ours, harness):
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], rel=1e-4, abs=1e-4), task
            assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"]), task
        for metric in ("acc", "acc_norm"):
            assert own["tasks"][task][metric] == pytest.approx(theirs["tasks"][task][metric]), (task, metric)
