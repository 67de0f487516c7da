"""The openai: judge against a real chat-completions server on 127.0.0.1 (see conftest.py):
verdicts, concurrency, retries on 429/500 and their jittered back-off, a bad key (never shown),
malformed and text-less replies, a refused pair, timeouts, a custom judge prompt, through the
library and through `dpolab eval winrate`."""

from __future__ import annotations

import json
import time

import pytest
from chat_server import answers_in, chat_reply

from dpolab.cli import main
from dpolab.evaluation.answer_files import Answer
from dpolab.evaluation.judges import JudgeError, JudgeRequest, build_judge
from dpolab.evaluation.winrate import winrate

KEY = "sk-test-SECRET-123"


def answers(completions):
    return [Answer(i, i + 1, f"question {i}", c, {}) for i, c in enumerate(completions)]


A = answers(["a long answer", "s", "another long answer"])
B = answers(["short", "a longer answer", "x"])


def prefer_longer(n, body):
    first, second = answers_in(body)
    verdict = "[[A]]" if len(first) > len(second) else "[[B]]"
    return 200, {}, chat_reply(f"The better one is clear. {verdict}"), 0.0


def judge(server, **options):
    options = {"base_url": server.url, "backoff": 0.01, "timeout": 5, "concurrency": 2, **options}
    return build_judge("openai:judge-model", **options)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_consistent_judge_over_http(chat_server, tmp_path):
    chat_server.reply = prefer_longer
    result = winrate(A, B, judge(chat_server), cache=tmp_path / "c.jsonl")
    assert [p["outcome"] for p in result["pairs"]] == ["win", "loss", "win"]
    assert len(chat_server.requests) == 6  # both orders of 3 pairs
    body = chat_server.requests[0]
    assert body["model"] == "judge-model" and body["messages"][0]["role"] == "user"
    assert "helpfulness" in body["messages"][0]["content"]
    assert all(h["Authorization"] == f"Bearer {KEY}" for h in chat_server.headers)
    cache_text = (tmp_path / "c.jsonl").read_text()
    assert KEY not in cache_text and "The better one is clear." in cache_text  # raw replies kept, key never


def test_position_biased_server_gives_only_ties(chat_server):
    chat_server.reply = lambda n, body: (200, {}, chat_reply("Answer A. [[A]]"), 0.0)
    result = winrate(A, B, judge(chat_server))
    assert (result["wins"], result["losses"], result["ties"]) == (0, 0, 3)


def test_429_then_success(chat_server):
    def reply(n, body):
        if n < 2:
            return 429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}}, 0.0
        return prefer_longer(n, body)

    chat_server.reply = reply
    result = winrate(A[:1], B[:1], judge(chat_server, concurrency=1))
    assert result["wins"] == 1
    assert len(chat_server.requests) == 4  # two refused, then both orders


def test_500_stops_and_keeps_judgements(chat_server, tmp_path):
    chat_server.reply = lambda n, body: prefer_longer(n, body) if n < 3 else (500, {}, {"error": "boom"}, 0.0)
    with pytest.raises(JudgeError, match=r"gave up after 3 attempts \(HTTP 500: boom\)") as err:
        winrate(A, B, judge(chat_server, concurrency=1, max_retries=2), cache=tmp_path / "c.jsonl")
    assert "3 new judgement(s) made" in str(err.value)
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3
    # the server recovers: a re-run asks only for the 3 judgements still missing
    chat_server.requests.clear()
    chat_server.reply = prefer_longer
    result = winrate(A, B, judge(chat_server), cache=tmp_path / "c.jsonl")
    assert len(chat_server.requests) == 3
    assert result["judgements"] == {"total": 6, "from_cache": 3, "new": 3}


def test_malformed_reply(chat_server):
    chat_server.reply = lambda n, body: (200, {}, b"<html>not an API</html>", 0.0)
    with pytest.raises(JudgeError, match=r"not a chat completion .*is --base-url right"):
        winrate(A, B, judge(chat_server))
    chat_server.reply = lambda n, body: (200, {}, {"choices": []}, 0.0)
    with pytest.raises(JudgeError, match="not a chat completion"):
        winrate(A, B, judge(chat_server))


def test_reply_without_verdict_is_unparsed(chat_server):
    chat_server.reply = lambda n, body: (200, {}, chat_reply("Both are fine, I think."), 0.0)
    result = winrate(A, B, judge(chat_server))
    assert result["unparsed"] == 3 and result["wins"] + result["losses"] + result["ties"] == 0
    assert result["win_rate"] is None


def test_timeout(chat_server):
    chat_server.reply = lambda n, body: (200, {}, chat_reply("[[A]]"), 1.0)
    with pytest.raises(JudgeError, match=r"no reply within 0.2 s"):
        winrate(A[:1], B[:1], judge(chat_server, timeout=0.2, max_retries=1, concurrency=1))
    # one slow reply, then prompt ones: the retry succeeds
    chat_server.requests.clear()
    chat_server.reply = lambda n, body: ((*prefer_longer(n, body)[:3], 1.0 if n == 0 else 0.0))
    result = winrate(A[:1], B[:1], judge(chat_server, timeout=0.3, max_retries=2, concurrency=1))
    assert result["wins"] == 1


def winrate_args(tmp_path, url, *extra):
    """`dpolab eval winrate` on A and B written as answer files, result r.json."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, items in ((a, A), (b, B)):
        path.write_text(
            "".join(json.dumps({"prompt": x.prompt, "completion": x.completion}) + "\n" for x in items)
        )
    out = tmp_path / "r.json"
    return [
        "eval",
        "winrate",
        "--a",
        str(a),
        "--b",
        str(b),
        "--judge",
        "openai:gpt-x",
        "--base-url",
        url,
        "--output",
        str(out),
        "--concurrency",
        "1",
        "--backoff",
        "0.01",
        *extra,
    ]


def test_cli_401_is_a_clear_error(chat_server, tmp_path, capsys):
    def reply(n, body):
        if n < 2:
            return prefer_longer(n, body)
        return 401, {}, {"error": {"message": "Incorrect API key provided"}}, 0.0

    chat_server.reply = reply
    args = winrate_args(tmp_path, chat_server.url)
    out = tmp_path / "r.json"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "HTTP 401: Incorrect API key provided" in err and "OPENAI_API_KEY" in err
    assert "Traceback" not in err and KEY not in err
    assert not out.exists()
    cache = tmp_path / "r.judgements.jsonl"
    assert len(cache.read_text().splitlines()) == 2  # the judgements made before the 401 are kept
    # with a working key the command finishes, reusing the two
    chat_server.reply = prefer_longer
    chat_server.requests.clear()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wins" in printed and "4 new judgement(s), 2 from the cache" in printed
    result = json.loads(out.read_text())
    assert {k: result[k] for k in ("wins", "losses", "ties")} == {"wins": 2, "losses": 1, "ties": 0}
    assert len(result["ci95"]) == 2


def test_unreachable_endpoint(tmp_path, capsys):
    j = build_judge("openai:m", base_url="http://127.0.0.1:9/v1", backoff=0.01, max_retries=1, timeout=1)
    with pytest.raises(JudgeError, match="gave up after 2 attempts"):
        winrate(A[:1], B[:1], j)
    # the message names no cache file that was never written
    args = winrate_args(tmp_path, "http://127.0.0.1:9/v1", "--max-retries", "1", "--timeout", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "gave up after 2 attempts" in err and "no new judgement was made before it stopped" in err
    assert "kept in" not in err and "judgements.jsonl" not in err
    assert not (tmp_path / "r.judgements.jsonl").exists()


def test_requests_overlap_under_concurrency(chat_server):
    def reply_once_another_arrives(n, body):
        # hold each reply until a second request is in flight (at most 3 s, under the client's 5 s
        # timeout; a judge that sends one at a time fails the assertion below, slowly), so that a
        # loaded machine cannot hide the overlap
        deadline = time.monotonic() + 3
        while chat_server.max_in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return prefer_longer(n, body)

    chat_server.reply = reply_once_another_arrives
    four_a, four_b = answers(["a", "bb", "ccc", "dddd"]), answers(["xx", "y", "zzzz", "w"])
    result = winrate(four_a, four_b, judge(chat_server, concurrency=8))
    assert len(chat_server.requests) == 8 and result["n_judged"] == 4
    assert chat_server.max_in_flight > 1
    # one at a time when told so (the count itself works)
    chat_server.max_in_flight = 0
    chat_server.reply = prefer_longer
    winrate(four_a, four_b, judge(chat_server, concurrency=1))
    assert chat_server.max_in_flight == 1


def test_backoff_grows_without_retry_after(chat_server):
    def reply(n, body):
        if n < 3:
            return 429, {}, {"error": {"message": "rate limited"}}, 0.0  # no Retry-After
        return 200, {}, chat_reply("[[A]]"), 0.0

    chat_server.reply = reply
    j = judge(chat_server, backoff=0.15, max_retries=3)
    assert j.judge(JudgeRequest("q", "x", "y")).verdict == "first"
    t = chat_server.arrivals
    gaps = [t[k + 1] - t[k] for k in range(3)]
    # backoff·2^attempt: at least 0.15, 0.3, 0.6 s (a constant back-off would leave the last at 0.15)
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3 and gaps[2] >= 0.6
    assert gaps[2] > gaps[0]


def test_key_never_shown_even_when_the_server_echoes_it(chat_server, tmp_path, capsys):
    def echo(n):
        return f"you sent Authorization: {chat_server.headers[n]['Authorization']}"

    def reply(n, body):
        if n < 2:  # judgements whose reply text echoes the header
            return 200, {}, chat_reply(f"{echo(n)} [[A]]"), 0.0
        return 401, {}, {"error": {"message": echo(n)}}, 0.0

    chat_server.reply = reply
    assert main(winrate_args(tmp_path, chat_server.url)) == 2
    err = capsys.readouterr().err
    assert "HTTP 401: you sent Authorization: Bearer ***" in err
    cache = (tmp_path / "r.judgements.jsonl").read_text()
    assert len(cache.splitlines()) == 2 and "Bearer ***" in cache
    assert KEY not in err and KEY not in cache
    # the same for a reply that is not a chat completion, and for retried 5xx
    for status, payload in ((200, lambda n: echo(n).encode()), (503, lambda n: {"error": echo(n)})):
        chat_server.reply = lambda n, body, s=status, p=payload: (s, {}, p(n), 0.0)
        with pytest.raises(JudgeError) as raised:
            winrate(A, B, judge(chat_server, max_retries=1), cache=tmp_path / "r.judgements.jsonl")
        assert "Bearer ***" in str(raised.value) and KEY not in str(raised.value)
    assert KEY not in (tmp_path / "r.judgements.jsonl").read_text()


def test_reply_without_text_is_unparsed(chat_server, tmp_path):
    filtered = {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"}
        ],
    }
    no_message = {"id": "y", "choices": [{"index": 0, "finish_reason": "content_filter"}]}

    def reply(n, body):
        if n == 0:
            return 200, {}, filtered, 0.0
        if n == 1:
            return 200, {}, no_message, 0.0
        return prefer_longer(n, body)

    chat_server.reply = reply
    result = winrate(A, B, judge(chat_server, concurrency=1), cache=tmp_path / "c.jsonl")
    assert [p["outcome"] for p in result["pairs"]] == ["unparsed", "loss", "win"]
    assert (result["pairs"][0]["a_first"], result["pairs"][0]["b_first"]) == ("unparsed", "unparsed")
    entries = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    pair_0 = {e["first"]: e for e in entries if e["prompt"] == "question 0"}  # the raw replies kept
    assert pair_0["a long answer"]["verdict"] == pair_0["short"]["verdict"] == "unparsed"
    assert json.loads(pair_0["a long answer"]["raw"]) == filtered
    assert json.loads(pair_0["short"]["raw"]) == no_message


def test_refused_pair_is_named_and_judgements_kept(chat_server, tmp_path, capsys):
    def reply(n, body):
        if "another long answer" in body["messages"][0]["content"]:
            return 400, {}, {"error": {"message": "maximum context length is 8 tokens"}}, 0.0
        return prefer_longer(n, body)

    chat_server.reply = reply
    args = winrate_args(tmp_path, chat_server.url)
    cache = tmp_path / "r.judgements.jsonl"
    for run in range(2):  # a re-run stops at the same pair, with the same advice, losing nothing
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "HTTP 400: maximum context length is 8 tokens" in err
        assert (
            f"it stopped at pair 3 of 3 ({tmp_path / 'a.jsonl'}, row 3 and {tmp_path / 'b.jsonl'}, row 3"
            in err
        )
        assert "leave that row out of both files (--limit 2 judges only the pairs before it)" in err
        made = (
            "4 new judgement(s) made before it stopped, kept in" if run == 0 else "no new judgement was made"
        )
        assert made in err and "Traceback" not in err
        assert len(cache.read_text().splitlines()) == 4  # pairs 1 and 2, both orders
    assert main([*args, "--limit", "2"]) == 0
    assert "0 new judgement(s), 4 from the cache" in capsys.readouterr().out


def test_custom_judge_prompt_reaches_the_server(chat_server, tmp_path, capsys):
    template = (
        "CUSTOM RUBRIC 7. Question: {question}\nFirst: {answer_a}\nSecond: {answer_b}\nSay [[A]] or [[B]]."
    )
    (tmp_path / "judge.txt").write_text(template)

    def reply(n, body):
        content = body["messages"][0]["content"]
        first = content.split("First: ")[1].split("\n")[0]
        second = content.split("Second: ")[1].split("\n")[0]
        return 200, {}, chat_reply("[[A]]" if len(first) > len(second) else "[[B]]"), 0.0

    chat_server.reply = reply
    assert main(winrate_args(tmp_path, chat_server.url, "--judge-prompt", str(tmp_path / "judge.txt"))) == 0
    sent = [r["messages"][0]["content"] for r in chat_server.requests]
    assert len(sent) == 6
    assert sent[0] == template.format(question="question 0", answer_a="a long answer", answer_b="short")
    assert sent[1] == template.format(question="question 0", answer_a="short", answer_b="a long answer")
    assert all(s.startswith("CUSTOM RUBRIC 7.") and "helpfulness" not in s for s in sent)
    result = json.loads((tmp_path / "r.json").read_text())
    assert (result["wins"], result["losses"]) == (2, 1)


def test_key_required_for_the_openai_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(JudgeError, match="no API key; put it in the environment variable OPENAI_API_KEY"):
        build_judge("openai:gpt-4")


def test_backoff_waits_are_jittered_within_their_bounds(chat_server, monkeypatch):
    """The wait before each retry is drawn from [d, 1.5·d], d = min(backoff·2^k, 40 s): two judges
    failing the same way wait different times (they do not retry in step), each within bounds."""
    from dpolab.evaluation.judges import openai

    chat_server.reply = lambda n, body: (503, {}, {"error": "busy"}, 0.0)  # no Retry-After
    waits: list[float] = []
    monkeypatch.setattr(openai.time, "sleep", waits.append)  # record the waits instead of sleeping
    runs = []
    for _ in range(2):
        waits.clear()
        with pytest.raises(JudgeError, match=r"gave up after 4 attempts \(HTTP 503: busy\)"):
            judge(chat_server, backoff=0.15, max_retries=3).judge(JudgeRequest("q", "x", "y"))
        runs.append(list(waits))
    # backoff 0.15: d = 0.15·2^0 = 0.15, 0.15·2^1 = 0.3, 0.15·2^2 = 0.6; waits in [d, 1.5·d]
    bounds = [(0.15, 0.225), (0.3, 0.45), (0.6, 0.9)]
    for run in runs:
        assert len(run) == 3
        assert all(lo <= w <= hi for w, (lo, hi) in zip(run, bounds))
    assert all(first != second for first, second in zip(*runs))  # the same attempt, another wait


def test_backoff_bounds_and_retry_after():
    j = build_judge("openai:m", base_url="http://127.0.0.1:9/v1", backoff=1.0)
    assert j.backoff_bounds(0) == (1.0, 1.5)
    assert j.backoff_bounds(3) == (8.0, 12.0)  # 1·2^3 = 8
    # 1·2^6 = 64 > 40: d is capped at 40 s so that the longest draw, 1.5·40, is the 60 s cap
    assert j.backoff_bounds(6) == j.backoff_bounds(1000) == (40.0, 60.0)
    late = [j._wait(1000, None) for _ in range(50)]
    assert all(40.0 <= w <= 60.0 for w in late) and len(set(late)) > 1
    # the server's Retry-After is followed as given (no jitter), at most 60 s, never negative
    assert [j._wait(2, "3") for _ in range(3)] == [3.0, 3.0, 3.0]
    assert (j._wait(0, "120"), j._wait(0, "-5"), j._wait(0, "0")) == (60.0, 0.0, 0.0)
    # a Retry-After that is not a number of seconds (an HTTP date): the back-off instead
    assert 4.0 <= j._wait(2, "Wed, 21 Oct 2026 07:28:00 GMT") <= 6.0  # d = 1·2^2 = 4


def test_a_redirect_or_a_url_without_scheme_stops_at_once(chat_server):
    chat_server.reply = lambda n, body: (307, {"Location": "http://elsewhere/v1"}, b"", 0.0)
    with pytest.raises(
        JudgeError, match=r"answered HTTP 307: .*points to http://elsewhere/v1; is --base-url"
    ):
        judge(chat_server).judge(JudgeRequest("q", "x", "y"))
    assert len(chat_server.requests) == 1  # not retried, not followed
    with pytest.raises(JudgeError, match=r"'127.0.0.1:8000/v1' must start with http:// or https://"):
        build_judge("openai:m", base_url="127.0.0.1:8000/v1")
