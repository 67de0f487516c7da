"""Rows as LLaMA-Factory and hub sets have them: ShareGPT messages, other column names
(`data.columns`), a system column, an alpaca query; each read into the same example as its
dpolab-shaped twin, and each mistake a bad row naming its field."""

from __future__ import annotations

import json

import pytest

from dpolab.config import parse_config
from dpolab.config.validate import validate
from dpolab.data.formats import BadRow, PreferenceExample, as_dpolab_row, normalise
from dpolab.data.mixture import load_sources
from dpolab.errors import DpolabError

USER = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}
SYSTEM = {"role": "system", "content": "Answer briefly."}


def sharegpt(role: str, text: str) -> dict:
    return {"from": role, "value": text}


def test_llamafactory_sharegpt_rows_are_conversations():
    """LLaMA-Factory's preference format: a conversation, and each answer a single message."""
    row = {
        "conversations": [sharegpt("human", USER["content"])],
        "chosen": sharegpt("gpt", BLUE["content"]),
        "rejected": sharegpt("gpt", GREEN["content"]),
    }
    assert normalise(row, row=3) == PreferenceExample([USER], [BLUE], [GREEN], row=3)
    multi = {
        "messages": [
            sharegpt("system", SYSTEM["content"]),
            sharegpt("human", "hi"),
            sharegpt("gpt", "hello"),
        ],
        "chosen": [sharegpt("gpt", "a")],
        "rejected": [sharegpt("gpt", "b")],
    }
    example = normalise(multi)
    assert [m["role"] for m in example.prompt] == ["system", "user", "assistant"]
    assert example.chosen == [{"role": "assistant", "content": "a"}]
    # OpenAI-style single messages read the same way
    assert normalise({"messages": [USER], "chosen": BLUE, "rejected": GREEN}).chosen == [BLUE]


def test_renamed_columns():
    row = {"question": "2 + 2 =", "good": " 4", "bad": " 5", "id": 9}
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    assert normalise(row, columns=columns) == normalise(
        {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}
    )
    with pytest.raises(BadRow) as err:
        normalise({"question": "q", "good": "a"}, columns=columns)
    assert (err.value.field, err.value.reason) == ("bad", "missing (data.columns.rejected: bad)")


def test_a_system_column_leads_the_prompt():
    """A string prompt becomes a user message and the answers assistant messages; a conversation
    gets the system message first; an empty system prompt is none."""
    row = {
        "system": SYSTEM["content"],
        "prompt": USER["content"],
        "chosen": BLUE["content"],
        "rejected": "It is green.",
    }
    assert normalise(row) == PreferenceExample([SYSTEM, USER], [BLUE], [GREEN])
    chat = {"system": SYSTEM["content"], "prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}
    assert normalise(chat).prompt == [SYSTEM, USER]
    assert normalise({**row, "system": ""}) == PreferenceExample(
        USER["content"], BLUE["content"], "It is green."
    )
    assert normalise(row, columns={"system": None}).prompt == USER["content"]  # the column ignored
    with pytest.raises(BadRow, match="a system column and its prompt a system message"):
        normalise({**chat, "prompt": [SYSTEM, USER]})


def test_an_alpaca_query_is_added_to_the_prompt():
    row = {"instruction": "Translate to French.", "input": "cat", "chosen": " chat", "rejected": " chien"}
    columns = {"prompt": "instruction", "query": "input"}
    assert normalise(row, columns=columns).prompt == "Translate to French.\ncat"
    assert normalise({**row, "input": ""}, columns=columns).prompt == "Translate to French."


def test_a_row_keeps_working_columns_it_does_not_map():
    """UltraFeedback-binarized carries `messages` beside its prompt: not a conversation column then."""
    row = {"prompt": "p", "messages": [USER, BLUE], "chosen": [USER, BLUE], "rejected": [USER, GREEN]}
    assert as_dpolab_row(row)["prompt"] == "p"


def test_unsupported_roles_and_conflicts_are_bad_rows():
    with pytest.raises(BadRow, match="message 1 is from 'observation'") as err:
        normalise(
            {
                "conversations": [sharegpt("human", "q"), sharegpt("observation", "tool output")],
                "chosen": sharegpt("gpt", "a"),
                "rejected": sharegpt("gpt", "b"),
            }
        )
    assert err.value.field == "prompt"
    with pytest.raises(BadRow, match="either a prompt or a conversation"):
        normalise(
            {"prompt": "p", "chat": [USER], "chosen": "a", "rejected": "b"}, columns={"messages": "chat"}
        )


def config_with(columns):
    config = parse_config({"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl", "columns": columns}})
    validate(config, early_stopping_metric="rewards/accuracies")
    return config


def test_data_columns_are_checked_at_start():
    assert config_with({"prompt": "question", "system": None}).data.columns == {
        "prompt": "question",
        "system": None,
    }
    with pytest.raises(DpolabError, match=r"data.columns: unknown field 'answer'; map one of prompt, query"):
        config_with({"answer": "x"})
    with pytest.raises(DpolabError, match=r"data.columns: map prompt .* or messages .*, not both"):
        config_with({"prompt": "q", "messages": "conversations"})
    with pytest.raises(DpolabError, match=r"data.columns.chosen: expected a column name \(or null\), got 3"):
        config_with({"chosen": 3})


def test_each_source_of_a_mixture_may_name_its_own_columns(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"question": "q1", "good": "x", "bad": "y"}) + "\n")
    b = tmp_path / "b.json"
    b.write_text(json.dumps([{"q": "q2", "chosen": "x", "rejected": "y"}]))
    specs = [{"path": str(a)}, {"path": str(b), "columns": {"prompt": "q"}}]
    examples, _ = load_sources(specs, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert [e.prompt for e in examples] == ["q1", "q2"]
    with pytest.raises(DpolabError, match=r"data source 1 .*: 'columns': unknown field 'x'"):
        load_sources([{"path": str(a), "columns": {"x": "y"}}])
