"""The preference formats people already have, normalised to one shape.

- standard:       {"prompt": str, "chosen": str, "rejected": str}
- conversational: prompt, chosen, rejected as lists of {"role", "content"} messages; the prompt
                  may also be left implicit inside chosen/rejected as full conversations
                  (UltraFeedback-binarized carries a string `prompt` beside them)
- implicit:       only "chosen" and "rejected" strings; the prompt is their longest common
                  prefix (Anthropic HH: "\\n\\nHuman: ... \\n\\nAssistant: ...")

Before the format is detected, a row is read as LLaMA-Factory and hub sets have it (`as_dpolab_row`):
- columns under other names: `data.columns` maps dpolab's fields (prompt, query, chosen, rejected,
  messages, system) to the row's columns, e.g. {prompt: question, chosen: good, rejected: bad};
- ShareGPT messages `{"from", "value"}` with roles human / gpt / system (also as a single message,
  LLaMA-Factory's `chosen: {"from": "gpt", "value": ...}`), read as `{"role", "content"}`;
- a `conversations` or `messages` column (the conversation so far) is the prompt;
- a `query` column is appended to a string prompt on a new line (LLaMA-Factory's alpaca `input`);
- a `system` column becomes the prompt's leading system message (a string prompt becomes a user
  message and the completions assistant messages: a system prompt needs the chat template).

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


# What data.columns may map, and the columns a row's conversation is found under by default.
COLUMN_FIELDS = ("prompt", "query", "chosen", "rejected", "messages", "system")
CONVERSATION_COLUMNS = ("conversations", "messages")
# ShareGPT roles (LLaMA-Factory's default tags) and the chat roles they are.
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
}


def check_columns(columns: Any, key: str = "data.columns") -> None:
    """`columns` maps dpolab's fields to column names (or null); raises `DpolabError` naming `key`."""
    from dpolab.errors import DpolabError

    if not isinstance(columns, dict):
        raise DpolabError(f"{key}: expected a mapping of {', '.join(COLUMN_FIELDS)} to column names")
    for field, column in columns.items():
        if field not in COLUMN_FIELDS:
            raise DpolabError(
                f"{key}: unknown field {field!r}; map one of {', '.join(COLUMN_FIELDS)} to a column"
            )
        if column is not None and not (isinstance(column, str) and column):
            raise DpolabError(f"{key}.{field}: expected a column name (or null), got {column!r}")
    if columns.get("prompt") and columns.get("messages"):
        raise DpolabError(f"{key}: map prompt (a string) or messages (a conversation), not both")


def _renamed(record: dict[str, Any], columns: dict[str, str | None]) -> dict[str, Any]:
    """The record with `columns` (dpolab field -> the row's column) read under dpolab's names; a
    field mapped to None is not read. A mapped column missing from the row is a bad row."""
    taken = {column for column in columns.values() if column is not None}
    out = {key: value for key, value in record.items() if key not in taken and key not in columns}
    for field, column in columns.items():
        if column is None:
            continue
        if column not in record:
            if field in ("chosen", "rejected") or (field == "prompt" and "messages" not in columns):
                raise BadRow(column, f"missing (data.columns.{field}: {column})")
            continue
        out[field] = record[column]
    return out


def _chat_messages(field: str, value: Any) -> Any:
    """ShareGPT `{"from", "value"}` messages (or one message) as `{"role", "content"}` ones; a
    single `{"role", "content"}` message as a list of one. Anything else as it is."""
    if isinstance(value, dict) and ({"from", "value"} <= value.keys() or {"role", "content"} <= value.keys()):
        value = [value]
    if not (isinstance(value, list) and value and all(isinstance(m, dict) for m in value)):
        return value
    out = []
    for i, message in enumerate(value):
        if "from" not in message or "value" not in message:
            out.append(message)
            continue
        role = SHAREGPT_ROLES.get(message["from"])
        if role is None:
            raise BadRow(
                field,
                f"message {i} is from {message['from']!r}; ShareGPT roles are {', '.join(SHAREGPT_ROLES)} "
                "(tool calls and observations are not supported)",
            )
        out.append({"role": role, "content": message["value"]})
    return out


def as_dpolab_row(record: dict[str, Any], columns: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The record with dpolab's field names and chat messages (see the module docstring)."""
    columns = dict(columns or {})
    if "messages" not in columns and "prompt" not in columns and "prompt" not in record:
        found = [c for c in CONVERSATION_COLUMNS if c in record]
        if found:
            columns["messages"] = found[0]
    columns.setdefault("system", "system")
    if columns["system"] is not None and columns["system"] not in record:
        columns["system"] = None
    record = _renamed(record, columns)
    messages = record.pop("messages", None) if columns.get("messages") else None
    if messages is not None:
        if "prompt" in record:
            raise BadRow("messages", "a row has either a prompt or a conversation (messages), not both")
        record["prompt"] = messages
    for field in ("prompt", "chosen", "rejected"):
        if field in record:
            record[field] = _chat_messages(field, record[field])
    query = record.pop("query", None) if columns.get("query") else None
    if query and isinstance(record.get("prompt"), str):
        record["prompt"] = f"{record['prompt']}\n{query}"
    system = record.pop("system", None) if columns["system"] else None
    if system is not None and system != "":
        _with_system(record, _check_text("system", system))
    return record


def _with_system(record: dict[str, Any], system: str) -> None:
    """The system prompt as the prompt's leading system message."""
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        record["prompt"] = [{"role": "user", "content": prompt}]
        for field in ("chosen", "rejected"):
            if isinstance(record.get(field), str):
                record[field] = [{"role": "assistant", "content": record[field]}]
    elif not _is_messages(prompt):
        raise BadRow("system", "a system prompt needs a prompt (a string or messages)")
    if record["prompt"] and record["prompt"][0].get("role") == "system":
        raise BadRow("system", "the row has a system column and its prompt a system message; keep one")
    record["prompt"] = [{"role": "system", "content": system}, *record["prompt"]]


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


def normalise(
    record: dict[str, Any], fmt: str = "auto", row: int = 0, columns: dict[str, str | None] | None = None
) -> PreferenceExample:
    """One record as a `PreferenceExample`; raises `BadRow` for anything unusable.

    Args:
        record: the parsed row.
        fmt: one of FORMATS; `auto` detects it from the record.
        row: the row number, kept on the example for messages later on.
        columns: `data.columns`, dpolab's field -> the row's column (see `as_dpolab_row`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    record = as_dpolab_row(record, columns)
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
