"""The openai: judge against a real chat-completions server on 127.0.0.1 (see conftest.py):
verdicts, retries on 429/500, a bad key, malformed replies and timeouts, through the library and
through `dpolab eval winrate`."""

from __future__ import annotations

import json

import pytest
from chat_server import answers_in, chat_reply

from dpolab.cli import main
from dpolab.evaluation.answer_files import Answer
from dpolab.evaluation.judges import JudgeError, build_judge
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


def test_cli_401_is_a_clear_error(chat_server, tmp_path, capsys):
    def reply(n, body):
        if n < 2:
            return prefer_longer(n, body)
        return 401, {}, {"error": {"message": "Incorrect API key provided"}}, 0.0

    chat_server.reply = reply
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, items in ((a, A), (b, B)):
        path.write_text(
            "".join(json.dumps({"prompt": x.prompt, "completion": x.completion}) + "\n" for x in items)
        )
    out = tmp_path / "r.json"
    args = [
        "eval",
        "winrate",
        "--a",
        str(a),
        "--b",
        str(b),
        "--judge",
        "openai:gpt-x",
        "--base-url",
        chat_server.url,
        "--output",
        str(out),
        "--concurrency",
        "1",
        "--backoff",
        "0.01",
    ]
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


def test_unreachable_endpoint(monkeypatch):
    j = build_judge("openai:m", base_url="http://127.0.0.1:9/v1", backoff=0.01, max_retries=1, timeout=1)
    with pytest.raises(JudgeError, match="gave up after 2 attempts"):
        winrate(A[:1], B[:1], j)


def test_key_required_for_the_openai_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(JudgeError, match="no API key; put it in the environment variable OPENAI_API_KEY"):
        build_judge("openai:gpt-4")
