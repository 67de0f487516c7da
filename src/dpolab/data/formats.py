"""The preference formats people already have, normalised to one shape.

- standard:       {"prompt": str, "chosen": str, "rejected": str}
- conversational: prompt, chosen, rejected as lists of {"role", "content"} messages; the prompt
                  may also be left implicit inside chosen/rejected as full conversations
                  (UltraFeedback-binarized carries a string `prompt` beside them)
- implicit:       only "chosen" and "rejected" strings; the prompt is their longest common
                  prefix (Anthropic HH: "\\n\\nHuman: ... \\n\\nAssistant: ...")

`normalise` turns one record into a `PreferenceExample` or raises `BadRow` naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

FORMATS = ("auto", "standard", "conversational", "implicit")

Text = str | list[dict[str, Any]]


class BadRow(Exception):
    """A row that cannot be used; `field` names the offending field, `reason` says why."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass
class PreferenceExample:
    """One preference pair, prompt split off; each part a string or a list of messages. `row` and
    `source` say where it came from (for messages that name file and row later on)."""

    prompt: Text
    chosen: Text
    rejected: Text
    row: int = 0
    source: str | None = dataclasses.field(default=None, compare=False)

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def _check_messages(field: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRow(field, f"expected a list of messages, found {type(value).__name__}")
    if not value:
        raise BadRow(field, "empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise BadRow(field, f"message {i} is not an object with 'role' and 'content'")
        if not isinstance(message["content"], str):
            raise BadRow(field, f"message {i} has content of type {type(message['content']).__name__}")
    return value


def _check_text(field: str, value: Any) -> str:
    if value is None:
        raise BadRow(field, "missing")
    if not isinstance(value, str):
        raise BadRow(field, f"expected a string, found {type(value).__name__}")
    if not value.strip():
        raise BadRow(field, "empty")
    return value


def detect_format(record: dict[str, Any]) -> str:
    """`standard`, `conversational` or `implicit`, from the record's keys and value types."""
    for field in ("chosen", "rejected"):
        if field not in record:
            raise BadRow(field, "missing")
    if _is_messages(record.get("chosen")) or _is_messages(record.get("prompt")):
        return "conversational"
    if "prompt" not in record:
        return "implicit"
    return "standard"


def common_prefix_length(a: list | str, b: list | str) -> int:
    """How many leading items (or characters) `a` and `b` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # one comparison in C: the usual case, a prompt's ids before its completion's
        return n
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return n  # unreachable: the slices differ somewhere


def split_implicit_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) with the prompt the longest common prefix, ending on a space
    boundary as TRL's `extract_prompt` does (the space stays with the completions)."""
    n = common_prefix_length(chosen, rejected)
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _normalise_conversational(record: dict[str, Any]) -> tuple[Text, Text, Text]:
    chosen = _check_messages("chosen", record.get("chosen"))
    rejected = _check_messages("rejected", record.get("rejected"))
    prompt = record.get("prompt")
    if _is_messages(prompt):
        prompt = _check_messages("prompt", prompt)
        # explicit prompt; chosen/rejected may repeat it as full conversations
        if chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
            chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]
    else:
        # implicit: the shared leading messages are the prompt (UltraFeedback-binarized, HH as chat)
        n = common_prefix_length(chosen, rejected)
        if n == 0:
            if isinstance(prompt, str) and prompt.strip():
                prompt_messages = [{"role": "user", "content": prompt}]
                return prompt_messages, chosen, rejected
            raise BadRow(
                "prompt", "missing, and chosen and rejected share no leading messages to take it from"
            )
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if not chosen:
        raise BadRow("chosen", "no messages after the prompt")
    if not rejected:
        raise BadRow("rejected", "no messages after the prompt")
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        if not any(m["content"].strip() for m in messages):
            raise BadRow(field, "empty")
    return prompt, chosen, rejected


def normalise(record: dict[str, Any], fmt: str = "auto", row: int = 0) -> PreferenceExample:
    """One record as a `PreferenceExample`; raises `BadRow` for anything unusable.

    Args:
        record: the parsed row.
        fmt: one of FORMATS; `auto` detects it from the record.
        row: the row number, kept on the example for messages later on.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    detected = detect_format(record)
    if fmt != "auto" and fmt != detected:
        raise BadRow(None, f"looks {detected}, but data.format is {fmt}")
    if detected == "conversational":
        prompt, chosen, rejected = _normalise_conversational(record)
    elif detected == "implicit":
        chosen = _check_text("chosen", record.get("chosen"))
        rejected = _check_text("rejected", record.get("rejected"))
        if chosen == rejected:
            raise BadRow("rejected", "identical to chosen")
        prompt, chosen, rejected = split_implicit_text(chosen, rejected)
        if not prompt:
            raise BadRow("chosen", "chosen and rejected share no prefix to take the prompt from")
        if not chosen.strip():
            raise BadRow("chosen", "nothing left after the shared prompt")
        if not rejected.strip():
            raise BadRow("rejected", "nothing left after the shared prompt")
    else:
        prompt = _check_text("prompt", record.get("prompt"))
        chosen = _check_text("chosen", record.get("chosen"))
        rejected = _check_text("rejected", record.get("rejected"))
    if chosen == rejected:
        raise BadRow("rejected", "identical to chosen")
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, row=row)
