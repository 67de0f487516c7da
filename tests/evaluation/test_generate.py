"""`dpolab generate`: left padding, chat templates, seeds, and resuming an interrupted run."""

from __future__ import annotations

import json

import pytest

from dpolab.cli import main
from dpolab.errors import DpolabError
from dpolab.evaluation.answer_files import load_answers, load_prompts
from dpolab.evaluation.generate import (
    GenerationSettings,
    generate_answers,
    generate_batch,
    left_pad,
    prompt_ids,
)
from dpolab.modeling.loading import load_for_inference
from dpolab.testing import build_tokenizer

PROMPTS = [
    {"prompt": "What is the capital of France?", "id": "a"},
    {
        "prompt": [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many?"}],
        "answer": "#### 8",
    },
    {"prompt": "The quick brown fox"},
    {"prompt": "Question: 2 + 2 ="},
    {"chosen": "Human: hi Assistant: hello there", "rejected": "Human: hi Assistant: go away"},
]


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_for_inference(model_dir, device="cpu")


def write_prompts(path, rows=PROMPTS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_chat_template_for_messages(tokenizer):
    ids = prompt_ids(tokenizer, [{"role": "user", "content": "hi"}])
    assert tokenizer.decode(ids) == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    assert prompt_ids(tokenizer, "hi") == tokenizer("hi")["input_ids"]  # text: as training tokenises it


def test_chat_template_option():
    tok = build_tokenizer()  # with a small chat template
    user_hi = [{"role": "user", "content": "hi"}]
    chat = "<s><|user|>\nhi</s>\n<|assistant|>\n"
    # auto: text as training tokenises it, messages through the template
    assert prompt_ids(tok, "hi", chat_template="auto") == tok("hi")["input_ids"]
    assert tok.decode(prompt_ids(tok, user_hi, chat_template="auto")) == chat
    # always: a text prompt is one user message
    assert tok.decode(prompt_ids(tok, "hi", chat_template="always")) == chat
    assert prompt_ids(tok, user_hi, chat_template="always") == prompt_ids(tok, user_hi)
    # never: messages as plain text (the judges' rendering), tokenised as text
    assert prompt_ids(tok, user_hi, chat_template="never") == tok("hi")["input_ids"]
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert prompt_ids(tok, turns, chat_template="never") == tok("user: hi\n\nassistant: yo")["input_ids"]
    plain = build_tokenizer(chat_template=False)
    with pytest.raises(DpolabError, match=r"--chat-template always: the tokenizer .* has no chat template"):
        prompt_ids(plain, "hi", chat_template="always")
    assert prompt_ids(plain, user_hi, chat_template="never") == plain("hi")["input_ids"]
    with pytest.raises(DpolabError, match="chat_template must be one of auto, always, never"):
        GenerationSettings(chat_template="sometimes").check()


def test_padding_does_not_change_greedy_answers(loaded):
    model, tokenizer = loaded
    greedy = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=8)
    alone = generate_batch(model, tokenizer, ["The quick brown fox"], greedy, seed=0)
    batched = generate_batch(
        model,
        tokenizer,
        ["A much longer prompt than the other one, surely.", "The quick brown fox"],
        greedy,
        seed=0,
    )
    assert batched[1] == alone[0]


def test_resume_writes_what_an_uninterrupted_run_writes(tmp_path, loaded):
    model, tokenizer = loaded
    prompts = load_prompts(write_prompts(tmp_path / "p.jsonl"))
    assert prompts[4].prompt == "Human: hi Assistant:"  # a preference row: the prompt as training takes it
    settings = GenerationSettings(max_new_tokens=6, batch_size=2, seed=7)
    full = tmp_path / "full.jsonl"
    report = generate_answers(model, tokenizer, prompts, full, settings=settings, model_name="tiny")
    assert (report.generated, report.resumed) == (5, 0)
    lines = full.read_text().splitlines(keepends=True)
    rows = [json.loads(x) for x in lines]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and [r["row"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["id"] == "a" and rows[1]["answer"] == "#### 8"  # the prompt rows' other fields are kept
    assert all(isinstance(r["completion"], str) for r in rows)
    # an interrupted run: the first batch written, the second half-written when it was killed
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:2]) + lines[2][:25])
    report = generate_answers(model, tokenizer, prompts, cut, settings=settings, model_name="tiny")
    assert (report.generated, report.resumed) == (3, 2)
    assert cut.read_text() == full.read_text()
    # nothing left to do
    assert (
        generate_answers(model, tokenizer, prompts, cut, settings=settings, model_name="tiny").generated == 0
    )
    assert [a.completion for a in load_answers(cut)] == [r["completion"] for r in rows]
    # killed inside a batch: one row of the second batch whole, its other row lost. The batch is
    # sampled together (padding, seed), so it is sampled again whole, not its missing row alone
    inside = tmp_path / "inside.jsonl"
    inside.write_text("".join(lines[:3]) + lines[3][:10])
    report = generate_answers(model, tokenizer, prompts, inside, settings=settings, model_name="tiny")
    assert (report.generated, report.resumed) == (3, 2)
    assert inside.read_text() == full.read_text()
    # more prompts than last time: the last batch then (prompt 2 alone) is the start of a longer one now
    grown = tmp_path / "grown.jsonl"
    generate_answers(model, tokenizer, prompts[:3], grown, settings=settings, model_name="tiny")
    report = generate_answers(model, tokenizer, prompts, grown, settings=settings, model_name="tiny")
    assert (report.generated, report.resumed) == (3, 2)
    assert grown.read_text() == full.read_text()


def test_resume_refuses_other_prompts_or_settings(tmp_path, loaded):
    model, tokenizer = loaded
    prompts = load_prompts(write_prompts(tmp_path / "p.jsonl"), limit=2)
    out = tmp_path / "out.jsonl"
    generate_answers(model, tokenizer, prompts, out, settings=GenerationSettings(max_new_tokens=3))
    with pytest.raises(DpolabError, match="sampled with other settings"):
        generate_answers(model, tokenizer, prompts, out, settings=GenerationSettings(max_new_tokens=4))
    other = load_prompts(write_prompts(tmp_path / "q.jsonl", [{"prompt": "something else"}] * 2))
    with pytest.raises(DpolabError, match="differs from prompt 0 of the prompt file"):
        generate_answers(model, tokenizer, other, out, settings=GenerationSettings(max_new_tokens=3))
    report = generate_answers(
        model, tokenizer, other, out, settings=GenerationSettings(max_new_tokens=3), overwrite=True
    )
    assert report.generated == 2


def test_resume_checks_the_chat_template(tmp_path, loaded):
    model, tokenizer = loaded
    prompts = load_prompts(write_prompts(tmp_path / "p.jsonl"), limit=2)
    out = tmp_path / "out.jsonl"
    generate_answers(model, tokenizer, prompts[:1], out, settings=GenerationSettings(max_new_tokens=3))
    assert json.loads(out.read_text())["generation"]["chat_template"] == "auto"
    with pytest.raises(DpolabError, match="sampled with other settings"):
        generate_answers(
            model,
            tokenizer,
            prompts,
            out,
            settings=GenerationSettings(max_new_tokens=3, chat_template="always"),
        )
    # a file written before the option existed was sampled as `auto` is: it resumes under auto
    row = json.loads(out.read_text())
    del row["generation"]["chat_template"]
    out.write_text(json.dumps(row) + "\n")
    report = generate_answers(model, tokenizer, prompts, out, settings=GenerationSettings(max_new_tokens=3))
    assert (report.generated, report.resumed) == (2, 0)  # one batch of both prompts now: sampled anew
    # no chat template: `always` stops before anything is generated
    plain = build_tokenizer(chat_template=False)
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(DpolabError, match="has no chat template"):
        generate_answers(model, plain, prompts, fresh, settings=GenerationSettings(chat_template="always"))
    assert not fresh.exists()


def test_cli(tmp_path, model_dir, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "answers.jsonl"
    args = [
        "generate",
        "--model",
        str(model_dir),
        "--prompts",
        str(prompts),
        "--output",
        str(out),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "3",
        "--seed",
        "1",
    ]
    assert main(args) == 0
    assert "5 answers written" in capsys.readouterr().out
    first = out.read_text()
    out.unlink()
    assert main(args) == 0
    assert out.read_text() == first  # seeded
    rows = [json.loads(x) for x in first.splitlines()]
    assert rows[0]["generation"]["temperature"] == 0.3 and rows[0]["generation"]["repetition_penalty"] == 1.1
    assert rows[0]["generation"]["chat_template"] == "auto"
    always = tmp_path / "always.jsonl"
    assert main([*args[:6], str(always), *args[7:], "--chat-template", "always"]) == 0
    rows = [json.loads(x) for x in always.read_text().splitlines()]
    assert all(r["generation"]["chat_template"] == "always" for r in rows)
    capsys.readouterr()
    bad = write_prompts(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"question": "no prompt here"}])
    assert main(["generate", "--model", str(model_dir), "--prompts", str(bad), "--output", str(out)]) == 2
    assert "bad.jsonl, row 2, field 'prompt': missing" in capsys.readouterr().err


def test_limit_must_be_positive(tmp_path, capsys):
    from dpolab.cli import main

    for value in ("0", "-3", "x"):
        with pytest.raises(SystemExit) as stop:
            main(
                ["generate", "--model", "m", "--prompts", "p.jsonl", "--output", "o.jsonl", "--limit", value]
            )
        assert stop.value.code == 2
        assert "--limit" in capsys.readouterr().err
