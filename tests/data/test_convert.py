"""Anthropic HH, UltraFeedback-binarized and SHP rows converted to the standard and conversational formats."""

from __future__ import annotations

import pytest

from dpolab.data.convert import convert_hh, convert_rows, convert_shp, convert_ultrafeedback
from dpolab.data.formats import BadRow
from dpolab.errors import DpolabError

from .helpers import FIXTURES, read_jsonl, write_jsonl

HH = FIXTURES / "hh_rlhf_train.jsonl"
UF = FIXTURES / "ultrafeedback_binarized_train_prefs.jsonl"
SHP = FIXTURES / "shp_train.json"


def test_hh_prompt_ends_on_the_assistant_cue():
    example = convert_hh(read_jsonl(HH)[3], row=4)  # three turns, then the replies
    assert example.prompt == (
        "\n\nHuman: What's the capital of Australia?\n\nAssistant: Canberra."
        "\n\nHuman: Why isn't it Sydney?\n\nAssistant:"
    )
    assert example.chosen.startswith(" When Australia federated in 1901")
    assert example.rejected == " Because Sydney is too big."
    assert example.row == 4


def test_hh_shared_first_words_stay_in_the_completions():
    # both replies start "I would": the character-level common prefix (TRL's extract_prompt) would
    # put "I would" in the prompt; cut back to the cue, the model is trained on the whole reply
    from trl.data_utils import extract_prompt

    record = read_jsonl(HH)[14]
    example = convert_hh(record)
    assert example.prompt == "\n\nHuman: How do I remove a splinter?\n\nAssistant:"
    assert example.chosen.startswith(" I would wash") and example.rejected.startswith(" I would just leave")
    assert extract_prompt(record)["prompt"].endswith("Assistant: I would")


def test_hh_conversations_that_differ_earlier_keep_the_later_turns_in_the_completions():
    example = convert_hh(read_jsonl(HH)[19])
    assert example.prompt == "\n\nHuman: How do I convert Celsius to Fahrenheit?\n\nAssistant:"
    assert example.chosen == (
        " Multiply by 9/5 and add 32.\n\nHuman: What is 20 degrees then?\n\nAssistant: "
        "20 times 9/5 is 36, plus 32 is 68 degrees Fahrenheit."
    )


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a"}, "rejected", "missing"),
        ({"chosen": 1, "rejected": "x"}, "chosen", "expected a string, found int"),
        (
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: a"},
            "rejected",
            "identical to chosen",
        ),
        (
            {"chosen": "Hello there", "rejected": "Hello you"},
            "chosen",
            "chosen and rejected share no '\\n\\nAssistant:' turn to end the prompt on",
        ),
        (
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant:  "},
            "rejected",
            "empty reply after the shared prompt",
        ),
    ],
)
def test_hh_bad_rows(record, field, reason):
    with pytest.raises(BadRow) as err:
        convert_hh(record)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_ultrafeedback_gives_conversational_pairs():
    example = convert_ultrafeedback(read_jsonl(UF)[7])
    assert example.prompt == [{"content": "How many minutes are there in a week?", "role": "user"}]
    assert example.chosen == [
        {"content": "There are 60 × 24 × 7 = 10,080 minutes in a week.", "role": "assistant"}
    ]
    assert example.rejected == [{"content": "There are 1,440 minutes in a week.", "role": "assistant"}]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"chosen": None}, "chosen", "expected a list of messages, found missing"),
        ({"rejected": "text"}, "rejected", "expected a list of messages, found str"),
        ({"score_chosen": 2.0, "score_rejected": 8.0}, "score_chosen", "2.0 is below score_rejected 8.0"),
        ({"score_chosen": "8"}, "score_chosen", "expected a number, found str '8'"),
        (
            {"score_rejected": None, "score_chosen": True},
            "score_chosen",
            "expected a number, found bool True",
        ),
        ({"score_rejected": [2.0]}, "score_rejected", "expected a number, found list [2.0]"),
        (
            {"rejected": [{"content": "Write a haiku about the first snow of winter.", "role": "user"}]},
            "rejected",
            "no messages after the prompt",
        ),
    ],
)
def test_ultrafeedback_bad_rows(change, field, reason):
    record = {**read_jsonl(UF)[0], **change}
    with pytest.raises(BadRow) as err:
        convert_ultrafeedback(record)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_shp_takes_the_preferred_reference_by_its_label():
    rows = read_jsonl(SHP)
    a_preferred, b_preferred = convert_shp(rows[0]), convert_shp(rows[1])
    assert rows[0]["labels"] == 1 and rows[1]["labels"] == 0
    assert a_preferred.prompt == rows[0]["history"]
    assert (a_preferred.chosen, a_preferred.rejected) == (
        "\n\n" + rows[0]["human_ref_A"],
        "\n\n" + rows[0]["human_ref_B"],
    )
    assert (b_preferred.chosen, b_preferred.rejected) == (
        "\n\n" + rows[1]["human_ref_B"],
        "\n\n" + rows[1]["human_ref_A"],
    )
    assert b_preferred.chosen.startswith("\n\nYou only feel acceleration")
    assert convert_shp(rows[0], delimiter=" ").chosen == " " + rows[0]["human_ref_A"]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"labels": 2}, "labels", "expected 1 (A preferred) or 0 (B preferred), found 2"),
        ({"labels": None}, "labels", "missing"),
        ({"human_ref_B": ""}, "human_ref_B", "empty"),
        ({"history": ["post"]}, "history", "expected a string, found list"),
    ],
)
def test_shp_bad_rows(change, field, reason):
    with pytest.raises(BadRow) as err:
        convert_shp({**read_jsonl(SHP)[0], **change})
    assert (err.value.field, err.value.reason) == (field, reason)


def test_convert_rows_whole_fixtures_and_the_bad_row_policy(tmp_path):
    for kind, path in (("hh", HH), ("ultrafeedback", UF), ("shp", SHP)):
        examples, report = convert_rows(kind, path)
        assert len(examples) == 20 and not report.skipped
        assert [e.row for e in examples] == list(range(1, 21))
    rows = read_jsonl(SHP)
    rows[3]["labels"] = "A"
    bad = write_jsonl(tmp_path / "shp.jsonl", rows)
    with pytest.raises(DpolabError, match=r"shp\.jsonl, row 4, field 'labels': expected 1 \(A preferred\)"):
        convert_rows("shp", bad)
    examples, report = convert_rows("shp", bad, on_bad_rows="skip")
    assert len(examples) == 19 and report.by_reason() == {
        "labels: expected 1 (A preferred) or 0 (B preferred), found 'A'": 1
    }
    with pytest.raises(DpolabError, match="unknown dataset kind 'orca'"):
        convert_rows("orca", HH)


def test_ultrafeedback_score_as_a_string_names_file_row_and_field(tmp_path):
    rows = read_jsonl(UF)
    rows[2]["score_chosen"] = "8"
    bad = write_jsonl(tmp_path / "uf.jsonl", rows)
    with pytest.raises(DpolabError) as err:
        convert_rows("ultrafeedback", bad)
    assert str(err.value).startswith(
        f"{bad}, row 3, field 'score_chosen': expected a number, found str '8' ("
    )
    rows[2]["score_chosen"] = rows[2]["score_rejected"] = None  # scores left out: nothing to check
    examples, _ = convert_rows("ultrafeedback", write_jsonl(tmp_path / "no_scores.jsonl", rows))
    assert len(examples) == 20
