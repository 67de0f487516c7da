"""Faults of `dpolab generate` and `dpolab eval winrate`, each made real: a disk that fills up (a
small tmpfs) while the answers file or the judgement cache grows, and SIGKILL at random moments
(seeded). Each file keeps whole lines only; a re-run continues to what an uninterrupted run
writes; no judgement is lost or made twice."""

from __future__ import annotations

import json
import random
import time

import pytest
from chat_server import answers_in, chat_reply

from dpolab.cli import main

KEY = "sk-test-123"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def whole_lines(path):
    """The rows of a JSONL file, less a last line a kill cut off (no newline)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


def lines_reach(path, count):
    """A `when` for `run_and_kill`: true once `path` holds `count` whole lines."""
    return lambda: path.exists() and path.read_bytes().count(b"\n") >= count


def after(condition, extra):
    """A `when`: true `extra` seconds after `condition()` first was."""
    since = []

    def when():
        if not since and condition():
            since.append(time.monotonic())
        return bool(since) and time.monotonic() >= since[0] + extra

    return when


# ----------------------------------------------------------------------------------------------
# dpolab generate
# ----------------------------------------------------------------------------------------------


PROMPTS = 16  # 8 batches of 2


def generate_args(model_dir, prompts, output, *extra):
    return [
        "generate",
        *("--model", str(model_dir), "--prompts", str(prompts), "--output", str(output)),
        *("--max-new-tokens", "16", "--batch-size", "2", "--seed", "3", "--device", "cpu", *extra),
    ]


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}: what is {i} + {i}?"} for i in range(PROMPTS)]
    )


def test_generate_killed_at_random_moments_writes_what_one_run_writes(tmp_path, model_dir, prompts, killer):
    whole, out = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    start = time.monotonic()
    assert main(generate_args(model_dir, prompts, whole)) == 0
    batch_time = (time.monotonic() - start) / (PROMPTS // 2)  # (an overestimate: the model's loading too)
    rng, moments = random.Random(7), []
    for _ in range(4):  # once `count` rows are written, a random part of a batch later
        count, extra = min(len(whole_lines(out)) + rng.randint(0, 4), PROMPTS - 1), rng.uniform(0, batch_time)
        killed = killer(
            lambda: main(generate_args(model_dir, prompts, out)), when=after(lines_reach(out, count), extra)
        )
        moments.append((count, round(extra, 3), killed))
        indices = [row["index"] for row in whole_lines(out)]
        assert len(indices) == len(set(indices)), moments  # no answer twice
    assert any(killed for _, _, killed in moments), moments  # (a child that finishes first is not killed)
    assert main(generate_args(model_dir, prompts, out)) == 0
    assert out.read_text() == whole.read_text(), moments


def test_generate_on_a_full_disk_keeps_the_answers_before(tmp_path, model_dir, prompts, small_disk, capsys):
    whole = tmp_path / "whole.jsonl"
    assert main(generate_args(model_dir, prompts, whole)) == 0
    disk = small_disk("64k")
    out = disk.path / "answers.jsonl"
    assert main(generate_args(model_dir, prompts, out, "--limit", "4")) == 0
    disk.fill()  # the file's last page has room for a batch or two, then none
    capsys.readouterr()
    assert main(generate_args(model_dir, prompts, out)) == 2
    err = capsys.readouterr().err  # (after the model's loading bars)
    assert "Traceback" not in err and err.count("error:") == 1
    assert err.splitlines()[-1].startswith(
        f"dpolab generate: error: {out}: no space left on device: the next batch of answers needs "
    )
    assert err.endswith(
        " bytes free there; the answers before it are kept: free some space and run the same command again "
        "to continue\n"
    )
    kept = out.read_text()
    assert kept.endswith("\n") and whole.read_text().startswith(kept) and kept.count("\n") >= 4
    disk.resize("1m")
    assert main(generate_args(model_dir, prompts, out)) == 0
    assert out.read_text() == whole.read_text()


# ----------------------------------------------------------------------------------------------
# dpolab eval winrate: the judgement cache
# ----------------------------------------------------------------------------------------------

PAIRS = 10


def answer_files(tmp_path):
    a = write_jsonl(
        tmp_path / "a.jsonl", [{"prompt": f"q{i}", "completion": "a" * (i % 4 + 1)} for i in range(PAIRS)]
    )
    b = write_jsonl(
        tmp_path / "b.jsonl", [{"prompt": f"q{i}", "completion": "b" * (i % 3 + 1)} for i in range(PAIRS)]
    )
    return a, b


def winrate_args(a, b, output, url, *extra):
    return [
        "eval",
        "winrate",
        *("--a", str(a), "--b", str(b), "--output", str(output)),
        *("--judge", "openai:judge", "--base-url", url, "--concurrency", "2", "--backoff", "0.01", *extra),
    ]


def cache_entries(path):
    """key -> verdict of every whole line of a judgement cache; no key twice."""
    lines = whole_lines(path)
    keys = [entry["key"] for entry in lines]
    assert len(keys) == len(set(keys)), "a judgement written twice"
    return {entry["key"]: entry["verdict"] for entry in lines}


def test_winrate_killed_at_random_moments_loses_and_repeats_no_judgement(
    tmp_path, chat_server, killer, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def prefer_longer(n, body):  # a slow judge: each reply takes 20 ms
        first, second = answers_in(body)
        return 200, {}, chat_reply("[[A]]" if len(first) > len(second) else "[[B]]"), 0.02

    chat_server.reply = prefer_longer
    a, b = answer_files(tmp_path)
    whole, out = tmp_path / "whole.json", tmp_path / "killed.json"
    start = time.monotonic()
    assert main(winrate_args(a, b, whole, chat_server.url)) == 0
    duration = time.monotonic() - start
    judgements = 2 * PAIRS
    assert len(chat_server.requests) == judgements
    cache = tmp_path / "killed.judgements.jsonl"
    rng, seen, kills = random.Random(11), {}, 0
    for _ in range(4):  # by the clock (not by what is cached): a moment in the time the rest takes
        left = 1 - len(cache_entries(cache)) / judgements
        delay = rng.uniform(0, duration * max(left, 0.2))
        kills += killer(lambda: main(winrate_args(a, b, out, chat_server.url)), delay=delay)
        now = cache_entries(cache)
        assert seen.items() <= now.items()  # every judgement cached before is still there
        seen = now
    assert kills > 0  # (a child that finishes first is not killed)
    assert main(winrate_args(a, b, out, chat_server.url)) == 0
    assert cache_entries(cache) == cache_entries(tmp_path / "whole.judgements.jsonl")
    results = [json.loads(path.read_text()) for path in (out, whole)]
    assert results[0]["pairs"] == results[1]["pairs"]
    asked = len(chat_server.requests) - judgements
    # each judgement asked once, but those in flight when a kill came (2 at most: --concurrency 2)
    assert judgements <= asked <= judgements + 2 * kills


def test_winrate_on_a_full_disk_keeps_the_judgements_before(tmp_path, small_disk, capsys):
    rows = [
        {"prompt": f"What is {i} + {i}? Think step by step.", "answer": f"#### {2 * i}"} for i in range(PAIRS)
    ]
    a = write_jsonl(
        tmp_path / "a.jsonl", [{**r, "completion": f"It is #### {2 * i}"} for i, r in enumerate(rows)]
    )
    b = write_jsonl(
        tmp_path / "b.jsonl", [{**r, "completion": f"It is #### {2 * i + 1}"} for i, r in enumerate(rows)]
    )
    whole = tmp_path / "whole.json"
    assert (
        main(["eval", "winrate", "--a", str(a), "--b", str(b), "--judge", "exact:", "--output", str(whole)])
        == 0
    )
    disk = small_disk("64k")
    out = disk.path / "r.json"
    args = ["eval", "winrate", "--a", str(a), "--b", str(b), "--judge", "exact:", "--output", str(out)]
    assert main([*args, "--limit", "3"]) == 0
    cache = disk.path / "r.judgements.jsonl"
    disk.fill()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"dpolab eval: error: {cache}: no space left on device: the next judgement needs "
    )
    assert err.endswith(
        " bytes free there; the judgements before it are kept: free some space and run the same command "
        "again to continue\n"
    )
    kept = cache_entries(cache)
    assert len(kept) >= 6 and cache.read_text().endswith("\n")
    disk.resize("1m")
    assert main(args) == 0
    assert cache_entries(cache).items() >= kept.items() and len(cache_entries(cache)) == 2 * PAIRS
    assert json.loads(out.read_text())["pairs"] == json.loads(whole.read_text())["pairs"]
