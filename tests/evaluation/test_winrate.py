"""Win/tie rules, counts, bootstrap intervals and the judgement cache, on hand-made verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpolab.errors import DpolabError
from dpolab.evaluation.answer_files import Answer, load_answers
from dpolab.evaluation.judges import ExactJudge, Judge, JudgeError, Judgement, parse_verdict
from dpolab.evaluation.winrate import (
    JudgementCache,
    bootstrap_ci,
    combine_orders,
    winrate,
    winrate_stats,
)


class FirstJudge(Judge):
    """Always prefers whatever is shown first: the position bias the two-order rule must cancel."""

    spec = "test:first"

    def judge(self, request):
        return Judgement("first", "[[A]]")


class LongerJudge(Judge):
    """Prefers the longer answer whichever position it is in; counts its calls."""

    spec = "test:longer"

    def __init__(self):
        self.calls = 0

    def judge(self, request):
        self.calls += 1
        if len(request.first) == len(request.second):
            return Judgement("tie", "[[C]]")
        return Judgement("first" if len(request.first) > len(request.second) else "second", "")


def answers(completions, prompts=None, records=None):
    prompts = prompts or [f"question {i}" for i in range(len(completions))]
    return [
        Answer(i, i + 1, p, c, (records or [{}] * len(completions))[i])
        for i, (p, c) in enumerate(zip(prompts, completions))
    ]


@pytest.mark.parametrize(
    ("a_first", "b_first", "expected"),
    [
        # A shown first says "first" (A better); B shown first says "second" (A better): agreement
        ("first", "second", "win"),
        ("second", "first", "loss"),
        # position bias: each order prefers whatever came first -> disagreement -> tie
        ("first", "first", "tie"),
        ("second", "second", "tie"),
        ("tie", "tie", "tie"),
        ("first", "tie", "tie"),
        ("tie", "first", "tie"),
        ("unparsed", "second", "unparsed"),
        ("first", "unparsed", "unparsed"),
    ],
)
def test_combine_orders(a_first, b_first, expected):
    assert combine_orders(a_first, b_first) == expected


def test_always_first_judge_gives_only_ties(tmp_path):
    a = answers(["short", "a much longer answer", "x"])
    b = answers(["a longer answer here", "tiny", "y"])
    result = winrate(a, b, FirstJudge(), cache=tmp_path / "cache.jsonl")
    assert (result["wins"], result["losses"], result["ties"]) == (0, 0, 3)
    assert result["win_rate"] == 0.5
    assert result["win_rate_no_ties"] is None
    assert [p["a_first"] for p in result["pairs"]] == ["first"] * 3


def test_consistent_judge_counts_wins_and_losses(tmp_path):
    a = answers(["long answer one", "s", "same", "another long one"])
    b = answers(["short", "longer answer", "same", "x"])
    result = winrate(a, b, LongerJudge(), cache=tmp_path / "c.jsonl", samples=200)
    # pair 0: A longer -> win; 1: B longer -> loss; 2: equal -> tie; 3: A longer -> win
    assert [p["outcome"] for p in result["pairs"]] == ["win", "loss", "tie", "win"]
    assert (result["wins"], result["losses"], result["ties"]) == (2, 1, 1)
    assert result["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert result["win_rate_no_ties"] == pytest.approx(2 / 3)
    assert result["kind"] == "winrate"


def test_stats_by_hand():
    stats = winrate_stats(["win", "win", "loss", "tie", "unparsed"], samples=500, seed=1)
    assert (stats["wins"], stats["losses"], stats["ties"], stats["unparsed"]) == (2, 1, 1, 1)
    assert stats["n_judged"] == 4  # the unparsed pair is left out of the rates
    assert stats["win_rate"] == pytest.approx(0.625)  # (2 + 1/2) / 4
    assert stats["win_rate_no_ties"] == pytest.approx(2 / 3)
    assert stats["win_fraction"] + stats["loss_fraction"] + stats["tie_fraction"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "outcomes",
    [
        ["win"] * 7 + ["loss"] * 2 + ["tie"] * 3,
        ["win", "loss"] * 10,
        ["tie"] * 4 + ["win"],
        ["loss"] * 9 + ["win"],
    ],
)
def test_bootstrap_interval_contains_the_estimate(outcomes):
    stats = winrate_stats(outcomes, samples=2000, seed=0)
    low, high = stats["ci95"]
    assert low <= stats["win_rate"] <= high
    assert 0.0 <= low < high <= 1.0
    low, high = stats["ci95_no_ties"]
    assert low <= stats["win_rate_no_ties"] <= high


def test_bootstrap_is_seeded_and_degenerate_cases():
    scores = np.array([1.0, 0.0, 0.5, 1.0, 1.0])
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(np.ones(6)) == [1.0, 1.0]  # every resample is all wins
    assert bootstrap_ci(np.array([])) is None


def test_rerun_uses_the_cache(tmp_path):
    a = answers(["long answer one", "s"])
    b = answers(["short", "longer answer"])
    judge = LongerJudge()
    first = winrate(a, b, judge, cache=tmp_path / "c.jsonl")
    assert judge.calls == 4 and first["judgements"]["new"] == 4
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["raw"] is not None
    again = winrate(a, b, judge, cache=JudgementCache(tmp_path / "c.jsonl"))
    assert judge.calls == 4  # nothing judged twice
    assert again["judgements"] == {"total": 4, "from_cache": 4, "new": 0}
    assert again["pairs"] == first["pairs"]


def test_cache_survives_a_half_written_line(tmp_path):
    a, b = answers(["aa", "b"]), answers(["a", "bb"])
    judge = LongerJudge()
    winrate(a, b, judge, cache=tmp_path / "c.jsonl")
    with (tmp_path / "c.jsonl").open("a") as handle:
        handle.write('{"key": "abc", "verd')  # killed mid-write
    winrate(a, b, judge, cache=tmp_path / "c.jsonl")
    assert judge.calls == 4
    assert (tmp_path / "c.jsonl").read_text().endswith("\n")


class StopsJudge(LongerJudge):
    """Stops (a `JudgeError`) at its call number `at`, counted from 0."""

    spec = "test:stops"

    def __init__(self, at, about_request=False):
        super().__init__()
        self.at, self.about_request = at, about_request

    def judge(self, request):
        if self.calls == self.at:
            raise JudgeError("judge gone", about_request=self.about_request)
        return super().judge(request)


def test_a_stopped_judge_names_the_pair_and_keeps_what_it_made(tmp_path):
    a = answers(["long answer one", "s", "x"])
    b = answers(["short", "longer answer", "yy"])
    with pytest.raises(JudgeError) as err:
        winrate(a, b, StopsJudge(3), cache=tmp_path / "c.jsonl", sources=("a.jsonl", "b.jsonl"))
    message = str(err.value)
    assert message.startswith(
        "judge gone\nit stopped at pair 2 of 3 (a.jsonl, row 2 and b.jsonl, row 2; B shown first)"
    )
    assert "3 new judgement(s) made before it stopped, kept in" in message
    assert "refused that request" not in message  # not about the request: no advice on the row
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3
    # no judgement made and no cache written: the message mentions no file
    with pytest.raises(JudgeError) as err:
        winrate(a, b, StopsJudge(0, about_request=True), cache=tmp_path / "new.jsonl")
    message = str(err.value)
    assert "it stopped at pair 1 of 3 (A, row 1 and B, row 1; A shown first)" in message
    assert "leave that row out of both files\n" in message and "--limit" not in message
    assert "no new judgement was made before it stopped; run the same command again" in message
    assert "new.jsonl" not in message and not (tmp_path / "new.jsonl").exists()


def test_unparsed_verdicts():
    assert parse_verdict("Reasoning... so [[B]]") == "second"
    assert parse_verdict("[[ c ]]") == "tie"
    assert parse_verdict("I cannot decide.") == "unparsed"
    assert parse_verdict("[[A]] or maybe [[B]]") == "unparsed"  # never guessed


def test_prompts_must_line_up(tmp_path):
    a = answers(["x", "y", "z"], prompts=["p1", "p2", "p3"])
    b = answers(["x", "y", "z"], prompts=["p1", "other", "p3"])
    with pytest.raises(DpolabError, match=r"A, row 2, field 'prompt' is 'p2' but B, row 2"):
        winrate(a, b, FirstJudge())
    with pytest.raises(DpolabError, match="has 3 answers but B has 2"):
        winrate(a, b[:1] + answers(["y"], prompts=["p2"]), FirstJudge())


def test_exact_judge_with_chosen_responses_as_b(tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "2+2?", "chosen": "2+2=4 #### 4", "rejected": "2+2=5 #### 5"},
                {"prompt": "3*3?", "chosen": "3*3=9 #### 9", "rejected": "#### 6"},
                {"prompt": "1+0?", "chosen": "#### 1", "rejected": "#### 0"},
            ]
        )
    )
    gen = tmp_path / "gen.jsonl"
    gen.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "2+2?", "completion": "It is 4. #### 4"},  # correct, B correct too -> tie
                {"prompt": "3*3?", "completion": "#### 8"},  # wrong vs correct chosen -> loss
                {"prompt": "1+0?", "completion": "no final answer"},  # no answer -> loss
            ]
        )
    )
    result = winrate(load_answers(gen), load_answers(prefs), ExactJudge(), cache=None)
    assert [p["outcome"] for p in result["pairs"]] == ["tie", "loss", "loss"]
    # with a reference field instead, B's answer can lose
    gen.write_text(json.dumps({"prompt": "q", "completion": "#### 1,000", "answer": "x #### 1000"}) + "\n")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "q", "completion": "#### 999"}) + "\n")
    result = winrate(load_answers(gen), load_answers(other), ExactJudge())
    assert result["wins"] == 1


def test_exact_judge_needs_a_reference(tmp_path):
    with pytest.raises(DpolabError, match="needs a reference answer"):
        winrate(answers(["#### 1"]), answers(["#### 2"]), ExactJudge())


def test_exact_judge_reference_from_the_chosen_response_a_was_generated_from():
    # `dpolab generate` on a preference file copies the row's chosen response into the answer row
    a = answers(
        ["#### 8", "#### 5"],
        records=[
            {"chosen": "3 + 5 = 8 #### 8"},
            {"chosen": [{"role": "assistant", "content": "2 + 2 = 4 #### 4"}]},
        ],
    )
    b = answers(["#### 9", "#### 4"])
    result = winrate(a, b, ExactJudge())
    assert [p["outcome"] for p in result["pairs"]] == ["win", "loss"]
