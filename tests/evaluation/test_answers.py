"""Final answers as the `exact:` judge and the demo read them, by hand-written cases."""

from __future__ import annotations

import pytest

from dpolab.evaluation.answers import answers_match, extract_final_answer


@pytest.mark.parametrize(
    "text, answer",
    [
        ("3 + 5 = 8\n#### 8", "8"),
        ("#### 1,000 apples", "1000"),
        ("#### 8.0", "8"),
        ("#### 2.50", "2.5"),
        ("#### -4", "-4"),
        ("#### $7", "7"),
        ("####7", "7"),
        ("#### 5\n#### 7", "7"),  # the last '####'
        ("#### yes", "yes"),  # not a number: the text itself
        ("#### The answer is 7", "The answer is 7"),  # a number later on the line is not read
        ("#### = = 3 = = 6 = 21", "= = 3 = = 6 = 21"),
        ("no final line", None),
        ("####   \n", None),
    ],
)
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


def test_a_degenerate_answer_line_matches_no_number():
    assert not answers_match(extract_final_answer("#### = = 3 = = 6 = 21"), "3")
    assert not answers_match(extract_final_answer("#### The answer is 7"), "7")
    assert answers_match(extract_final_answer("so 7\n#### 7"), "7")
    assert not answers_match(None, None)
