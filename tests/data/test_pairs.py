"""Loading pairs under the bad-row policy: stop naming file, row and field, or skip and count."""

from __future__ import annotations

import pytest

from dpolab.data.pairs import FLAG_SKIP_HINT, BadRowPolicy, load_pairs
from dpolab.errors import DpolabError

from .helpers import FIXTURES, write_jsonl

GOOD = {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}


@pytest.fixture
def mixed(tmp_path):
    """Rows 1, 3, 7 good; 2 missing chosen; 4 invalid JSON; 5 blank; 6 identical; 8 missing chosen."""
    return write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            GOOD,
            {"prompt": "p", "rejected": "r"},
            GOOD,
            '{"prompt": ',
            "",
            {"prompt": "p", "chosen": "same", "rejected": "same"},
            GOOD,
            {"prompt": "p", "chosen": None, "rejected": "r"},
        ],
    )


def test_error_names_file_row_and_field(mixed):
    with pytest.raises(DpolabError) as err:
        load_pairs(mixed)
    assert str(err.value) == (
        f"{mixed}, row 2, field 'chosen': missing (fix the row, or set data.on_bad_rows=skip to skip such rows "
        f"and count them)"
    )


def test_unreadable_row_is_reported_with_its_line_number(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, "", '{"prompt": '])
    with pytest.raises(DpolabError, match=r"p\.jsonl, row 3: not valid JSON \(Expecting value\)"):
        load_pairs(path)


def test_skip_counts_by_reason(mixed):
    examples, report = load_pairs(mixed, on_bad_rows="skip")
    assert [e.row for e in examples] == [1, 3, 7]
    assert all(e.source == str(mixed) for e in examples)
    assert len(report) == 4
    assert report.by_reason() == {
        "chosen: missing": 2,
        "not valid JSON (Expecting value)": 1,
        "rejected: identical to chosen": 1,
    }
    assert report.summary() == (
        f"{mixed}: skipped 4 bad rows (2 × chosen: missing; 1 × not valid JSON (Expecting value); "
        f"1 × rejected: identical to chosen)"
    )
    assert report.to_dict()["rows"][0] == {"row": 2, "field": "chosen", "reason": "missing"}


def test_no_usable_row_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "rejected": "r"}])
    with pytest.raises(
        DpolabError, match=r"bad\.jsonl: no usable preference pairs \(.*skipped 1 bad row \(1 × chosen"
    ):
        load_pairs(path, on_bad_rows="skip")


def test_limit_and_format(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD] * 5)
    examples, _ = load_pairs(path, limit=2)
    assert [e.row for e in examples] == [1, 2]
    with pytest.raises(DpolabError, match=r"row 1: looks standard, but data.format is implicit"):
        load_pairs(path, fmt="implicit")


def test_the_fixture_formats_load():
    hh, _ = load_pairs(FIXTURES / "hh_rlhf_train.jsonl")
    uf, _ = load_pairs(FIXTURES / "ultrafeedback_binarized_train_prefs.jsonl")
    assert len(hh) == len(uf) == 20
    assert not hh[0].conversational and uf[0].conversational


def test_policy_rejects_unknown_setting():
    with pytest.raises(ValueError, match="on_bad_rows must be one of"):
        BadRowPolicy("x.jsonl", "ignore")


def test_skip_hint_is_worded_for_where_the_message_is_shown(mixed):
    # the default speaks to the training config; `dpolab data` passes its command-line flag
    config_hint = "(fix the row, or set data.on_bad_rows=skip to skip such rows and count them)"
    flag_hint = "(fix the row, or pass --on-bad-rows skip to skip such rows and count them)"
    with pytest.raises(DpolabError) as err:
        BadRowPolicy(mixed).bad(2, "chosen", "missing")
    assert str(err.value) == f"{mixed}, row 2, field 'chosen': missing {config_hint}"
    with pytest.raises(DpolabError) as err:
        BadRowPolicy(mixed, skip_hint=FLAG_SKIP_HINT).bad(2, "chosen", "missing")
    assert str(err.value) == f"{mixed}, row 2, field 'chosen': missing {flag_hint}"
    with pytest.raises(DpolabError) as err:
        load_pairs(mixed, skip_hint=FLAG_SKIP_HINT)
    assert str(err.value) == f"{mixed}, row 2, field 'chosen': missing {flag_hint}"


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DpolabError, match=r"empty\.jsonl: has no rows$"):
        load_pairs(path, on_bad_rows="skip")
