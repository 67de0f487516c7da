"""The preference formats people have, normalised; every bad row names its field."""

from __future__ import annotations

import pytest

from dpolab.data.formats import BadRow, PreferenceExample, detect_format, normalise, split_implicit_text

from .helpers import FIXTURES, read_jsonl

USER = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


def test_each_format_is_detected():
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "standard"
    assert detect_format({"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}) == "conversational"
    assert detect_format({"chosen": [USER, BLUE], "rejected": [USER, GREEN]}) == "conversational"
    assert (
        detect_format(
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}
        )
        == "implicit"
    )
    # UltraFeedback-binarized: a string prompt beside full conversations
    assert (
        detect_format(read_jsonl(FIXTURES / "ultrafeedback_binarized_train_prefs.jsonl")[0])
        == "conversational"
    )


def test_standard_row():
    example = normalise({"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5", "extra": 1}, row=7)
    assert example == PreferenceExample("2 + 2 =", " 4", " 5", row=7)
    assert not example.conversational


def test_ultrafeedback_shape_takes_the_shared_messages_as_prompt():
    record = read_jsonl(FIXTURES / "ultrafeedback_binarized_train_prefs.jsonl")[2]
    example = normalise(record)
    assert example.prompt == [
        {"content": "Translate 'Where is the train station?' into Spanish.", "role": "user"}
    ]
    assert example.chosen == [{"content": "¿Dónde está la estación de tren?", "role": "assistant"}]
    assert example.rejected == [{"content": "¿Dónde está el tren?", "role": "assistant"}]
    assert example.conversational


def test_explicit_conversational_prompt_repeated_in_the_completions_is_removed_once():
    example = normalise({"prompt": [USER], "chosen": [USER, BLUE], "rejected": [USER, GREEN]})
    assert (example.prompt, example.chosen, example.rejected) == ([USER], [BLUE], [GREEN])
    example = normalise({"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]})
    assert (example.prompt, example.chosen, example.rejected) == ([USER], [BLUE], [GREEN])


def test_conversational_without_shared_messages_uses_a_string_prompt():
    example = normalise({"prompt": "What color is the sky?", "chosen": [BLUE], "rejected": [GREEN]})
    assert example.prompt == [{"role": "user", "content": "What color is the sky?"}]


def test_hh_implicit_prompt_ends_on_the_assistant_cue_and_the_space_stays_with_the_completions():
    record = {
        "chosen": "\n\nHuman: What is 2 + 2?\n\nAssistant: It is 4.",
        "rejected": "\n\nHuman: What is 2 + 2?\n\nAssistant: It is 5.",
    }
    # the longest common prefix is "...Assistant: It is "; TRL's extract_prompt steps back over
    # the space before the first difference only, and dpolab does the same
    example = normalise(record)
    assert example.prompt == "\n\nHuman: What is 2 + 2?\n\nAssistant: It is"
    assert (example.chosen, example.rejected) == (" 4.", " 5.")
    from trl.data_utils import extract_prompt

    assert extract_prompt(record) == {
        "prompt": example.prompt,
        "chosen": example.chosen,
        "rejected": example.rejected,
    }


def test_split_implicit_text_matches_trl_on_the_hh_fixture():
    from trl.data_utils import extract_prompt

    for record in read_jsonl(FIXTURES / "hh_rlhf_train.jsonl"):
        expected = extract_prompt(record)
        assert split_implicit_text(record["chosen"], record["rejected"]) == (
            expected["prompt"],
            expected["chosen"],
            expected["rejected"],
        )


M = {"role": "assistant", "content": "ok"}


@pytest.mark.parametrize(
    ("record", "fmt", "field", "reason"),
    [
        ({"prompt": "p", "rejected": "b"}, "auto", "chosen", "missing"),
        ({"prompt": "p", "chosen": "a"}, "auto", "rejected", "missing"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "auto", "chosen", "expected a string, found int"),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "auto", "prompt", "missing"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "auto", "prompt", "empty"),
        ({"prompt": "p", "chosen": "a", "rejected": ""}, "auto", "rejected", "empty"),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "auto", "rejected", "identical to chosen"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            "conversational",
            None,
            "looks standard, but data.format is conversational",
        ),
        (
            {"prompt": [USER], "chosen": "a", "rejected": [GREEN]},
            "auto",
            "chosen",
            "expected a list of messages, found str",
        ),
        ({"prompt": [USER], "chosen": [], "rejected": [GREEN]}, "auto", "chosen", "empty list of messages"),
        (
            {"prompt": [USER], "chosen": [{"content": "x"}], "rejected": [GREEN]},
            "auto",
            "chosen",
            "message 0 is not an object with 'role' and 'content'",
        ),
        (
            {"prompt": [USER], "chosen": [BLUE], "rejected": [{"role": "assistant", "content": 5}]},
            "auto",
            "rejected",
            "message 0 has content of type int",
        ),
        (
            {"chosen": [BLUE], "rejected": [GREEN]},
            "auto",
            "prompt",
            "missing, and chosen and rejected share no leading messages to take it from",
        ),
        (
            {"prompt": [USER], "chosen": [USER], "rejected": [USER, GREEN]},
            "auto",
            "chosen",
            "no messages after the prompt",
        ),
        (
            {"prompt": [USER], "chosen": [{"role": "assistant", "content": " "}], "rejected": [M]},
            "auto",
            "chosen",
            "empty",
        ),
        (
            {"chosen": "Yes.", "rejected": "No."},
            "auto",
            "chosen",
            "chosen and rejected share no prefix to take the prompt from",
        ),
        (
            {"chosen": "Human: hi Assistant: hello", "rejected": "Human: hi Assistant: hello!"},
            "auto",
            "chosen",
            "nothing left after the shared prompt",
        ),
        ({"chosen": "same", "rejected": "same"}, "auto", "rejected", "identical to chosen"),
        ({"chosen": "Human: hi", "rejected": ["x"]}, "auto", "rejected", "expected a string, found list"),
    ],
)
def test_every_bad_row_kind_names_its_field(record, fmt, field, reason):
    with pytest.raises(BadRow) as err:
        normalise(record, fmt)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_unknown_format_name_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown format 'chat'"):
        normalise({"prompt": "p", "chosen": "a", "rejected": "b"}, "chat")
