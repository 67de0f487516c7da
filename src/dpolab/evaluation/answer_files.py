"""Prompt files (what `dpolab generate` reads) and answer files (what it writes and the judges read).

Prompt file rows: a `prompt` (text or a list of {"role", "content"} messages; another field with
`prompt_field`), or a preference row whose prompt is taken as training takes it.

Answer file rows (JSONL): at least `prompt` and `completion` (text). `dpolab generate` adds `index`
(0-based position), `row` (row of the prompt file) and copies the prompt row's other fields (such
as `answer`, the reference answer of a GSM8K row). A preference file also serves as an answer file:
its `chosen` response is the answer (to judge a model against the dataset's chosen responses).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from dpolab.data.formats import BadRow, Text, normalise
from dpolab.data.io import read_rows
from dpolab.errors import DpolabError, where


@dataclass
class PromptRow:
    index: int  # 0-based position among the prompts
    row: int  # 1-based row of the source file
    prompt: Text
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    index: int  # 0-based position in the answer file
    row: int  # 1-based row of the answer file
    prompt: Text
    completion: str
    record: dict[str, Any] = field(default_factory=dict)


def _check_prompt(value: Any, source, row: int, name: str) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise DpolabError(f"{where(source, row, name)}: empty")
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return value
    if value is None:
        raise DpolabError(f"{where(source, row, name)}: missing")
    raise DpolabError(
        f"{where(source, row, name)}: expected text or a list of {{'role', 'content'}} messages, "
        f"found {type(value).__name__}"
    )


def messages_text(messages: list[dict[str, Any]]) -> str:
    """The text of a completion given as messages: its assistant turns (all turns if none is)."""
    turns = [m for m in messages if m.get("role") == "assistant"] or messages
    return "\n\n".join(str(m.get("content", "")) for m in turns)


def prompt_text(prompt: Text) -> str:
    """A prompt as plain text for a judge: a single user message is its content; a conversation
    is written as `role: content` turns."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def prompt_key(prompt: Text) -> str:
    """What two files must agree on for their rows to answer the same prompt: the text without
    surrounding whitespace (a single user message counts as its text)."""
    if isinstance(prompt, list) and not (len(prompt) == 1 and prompt[0].get("role") == "user"):
        return json.dumps(
            [{"role": m["role"], "content": m["content"].strip()} for m in prompt], ensure_ascii=False
        )
    return prompt_text(prompt).strip()


def _preference_prompt(record: dict[str, Any], source, row: int):
    try:
        return normalise(record, row=row)
    except BadRow as err:
        raise DpolabError(f"{where(source, row, err.field)}: {err.reason}") from None


def load_prompts(
    source: str | os.PathLike, *, prompt_field: str = "prompt", limit: int | None = None
) -> list[PromptRow]:
    """The prompts of a file, in order. Raises `DpolabError` naming file, row and field at the
    first row without a usable prompt."""
    prompts: list[PromptRow] = []
    for row in read_rows(source):
        if limit is not None and len(prompts) >= limit:
            break
        if row.record is None:
            raise DpolabError(f"{where(source, row.number)}: {row.error}")
        record = row.record
        if prompt_field in record:
            prompt = _check_prompt(record[prompt_field], source, row.number, prompt_field)
            extra = {k: v for k, v in record.items() if k != prompt_field}
        elif "chosen" in record and "rejected" in record:
            example = _preference_prompt(record, source, row.number)
            prompt = example.prompt
            extra = {k: v for k, v in record.items() if k not in ("prompt", "rejected")}
        else:
            raise DpolabError(
                f"{where(source, row.number, prompt_field)}: missing (a prompt file needs '{prompt_field}' in every "
                f"row, or preference rows with 'chosen' and 'rejected'; --prompt-field names another field)"
            )
        prompts.append(PromptRow(len(prompts), row.number, prompt, extra))
    if not prompts:
        raise DpolabError(f"{source}: no prompts")
    return prompts


def load_answers(source: str | os.PathLike, *, limit: int | None = None) -> list[Answer]:
    """The answers of an answer file or, for a preference file, its chosen responses, in order."""
    answers: list[Answer] = []
    for row in read_rows(source):
        if limit is not None and len(answers) >= limit:
            break
        if row.record is None:
            raise DpolabError(f"{where(source, row.number)}: {row.error}")
        record = row.record
        if "completion" in record:
            prompt = _check_prompt(record.get("prompt"), source, row.number, "prompt")
            completion = record["completion"]
            if isinstance(completion, list):
                completion = messages_text(_check_prompt(completion, source, row.number, "completion"))
            if not isinstance(completion, str):
                raise DpolabError(
                    f"{where(source, row.number, 'completion')}: expected text, found {type(completion).__name__}"
                )
        elif "chosen" in record:
            example = _preference_prompt(record, source, row.number)
            prompt = example.prompt
            chosen = example.chosen
            completion = messages_text(chosen) if isinstance(chosen, list) else chosen
        else:
            raise DpolabError(
                f"{where(source, row.number, 'completion')}: missing (an answer file has 'prompt' and 'completion' "
                f"in every row, as `dpolab generate` writes; a preference file 'chosen')"
            )
        answers.append(Answer(len(answers), row.number, prompt, completion, record))
    if not answers:
        raise DpolabError(f"{source}: no answers")
    return answers


def check_aligned(a: list[Answer], b: list[Answer], source_a, source_b) -> None:
    """Both files must answer the same prompts in the same order; the message names the first
    row that does not."""
    for x, y in zip(a, b):
        if prompt_key(x.prompt) != prompt_key(y.prompt):
            shown_a = prompt_text(x.prompt).strip()[:80]
            shown_b = prompt_text(y.prompt).strip()[:80]
            raise DpolabError(
                f"the answer files do not answer the same prompts: {where(source_a, x.row, 'prompt')} is "
                f"{shown_a!r} but {where(source_b, y.row, 'prompt')} is {shown_b!r} (both files must list the "
                f"same prompts in the same order)"
            )
    if len(a) != len(b):
        raise DpolabError(
            f"{source_a} has {len(a)} answers but {source_b} has {len(b)}; both must answer the same prompts "
            f"(use --limit N to compare the first N)"
        )
