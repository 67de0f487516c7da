"""The Smaug paper's paired datasets: MetaMath (one intermediate result corrupted), ARC and HellaSwag
(one pair per wrong answer), on fixtures in the real datasets' schemas."""

from __future__ import annotations

import json
import random
import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpolab.data.builders import (
    arc_pairs,
    build_pairs,
    corrupt_intermediate_result,
    hellaswag_pairs,
    metamath_pairs,
    result_candidates,
    wrong_number,
)
from dpolab.data.formats import BadRow
from dpolab.data.stats import levenshtein, pair_edit_distance, word_tokens
from dpolab.errors import DpolabError

from .helpers import FIXTURES, read_jsonl, write_jsonl

METAMATH = FIXTURES / "metamathqa.json"
ARC = FIXTURES / "arc_challenge_train.jsonl"
HELLASWAG = FIXTURES / "hellaswag_train.jsonl"

# numbers as a reader sees them, independently of the builder's own pattern: 1,250  3.20  24
_SPLIT = re.compile(r"(\d+(?:[.,]\d+)*)")


def numbers_and_text(text: str) -> tuple[list[str], list[str]]:
    parts = _SPLIT.split(text)
    return parts[1::2], parts[0::2]


_ANNOTATION = re.compile(r"<<[^=<>]*=([^<>]*)>>(\d[\d.,]*)")


def assert_one_number_changed(chosen: str, rejected: str) -> tuple[str, str]:
    """Exactly one number differs, everything else (text between numbers) is identical. GSM8K's
    calculator annotations (`<<48/2=24>>24`) must agree with the number after them, and are then
    left out: the annotation and its visible copy are one result."""
    for text in (chosen, rejected):
        assert all(inner == shown for inner, shown in _ANNOTATION.findall(text))
    chosen, rejected = (re.sub(r"<<[^<>]*>>", "", text) for text in (chosen, rejected))
    chosen_numbers, chosen_text = numbers_and_text(chosen)
    rejected_numbers, rejected_text = numbers_and_text(rejected)
    assert chosen_text == rejected_text
    changed = [(a, b) for a, b in zip(chosen_numbers, rejected_numbers) if a != b]
    assert len(chosen_numbers) == len(rejected_numbers)
    assert len(changed) == 1, changed
    return changed[0]


def final_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("The answer is:", "####"))]


# ---------------------------------------------------------------- MetaMath: which numbers are results


def spans_text(response: str) -> list[str]:
    return [response[a:b] for a, b in result_candidates(response)]


def test_candidates_are_intermediate_results_only():
    # Tina's overtime (MetaMathQA GSM_AnsAug): every `= $x` after a calculation is a result, except
    # the last one, whose value is the final answer 990.
    response = json.loads(METAMATH.read_text())[9]["response"]
    assert spans_text(response) == ["144.00", "2", "9.00", "27.00", "54.00", "198.00"]


def test_statements_continued_expressions_and_the_final_equation_are_not_results():
    response = (
        "Let x = 5.\n"  # a statement, no calculation on the left
        "Then 2 + 3 = 5 * 2 = 10 apples.\n"  # `= 5 * 2` goes on; 10 is the result
        "Since 4 <= 6 = 6, and 7 == 7.\n"  # `<=`, `==` are no equations; `<= 6 = 6` has no operation
        "Half of 10 is 10/2 = 5.\n"
        "So 10 + 5 = 15.\n"  # equals the final answer: never corrupted
        "The answer is: 15"
    )
    assert spans_text(response) == ["10", "5"]


def test_without_an_answer_line_the_last_result_is_taken_for_the_final_answer():
    assert spans_text("He has 3 + 4 = 7 pens, then 7 * 2 = 14 pens.") == ["7"]


def test_given_equations_with_an_unknown_are_not_results():
    """`2 * 16 + 2 * x = 48` and `32 + 2x = 48` state the problem (48 is given, x unknown): only
    arithmetic on numbers yields a result; `5 x 3` is a multiplication, not an unknown."""
    response = (
        "We can set up the equation as follows:\n2 * 16 + 2 * x = 48\n32 + 2x = 48\n"
        "(x - 12 - 24) / 2 = 42\nSo 48 - 32 = 16 and 5 x 3 = 15 and 3 * 2 = 6.\n#### 8"
    )
    assert spans_text(response) == ["16", "15", "6"]


def test_latex_only_results_leave_nothing_to_corrupt():
    rows = json.loads(METAMATH.read_text())
    for index in (16, 17, 18):  # binomial, distance with \sqrt{5}, sum of the roots
        assert result_candidates(rows[index]["response"]) == []
        assert corrupt_intermediate_result(rows[index]["response"], random.Random(0)) is None


# ---------------------------------------------------------------- MetaMath: the corruption


def test_one_result_changes_and_its_later_uses_stay():
    response = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72\nThe answer is: 72"
    rejected, where = corrupt_intermediate_result(response, random.Random(0))
    # 24 is the only candidate (72 is the final answer); the later `48+24` and the answer lines stay
    assert (where.start, where.end, where.original) == (20, 22, "24")
    assert rejected == response.replace("= 24 clips", f"= {where.replacement} clips")
    assert "48+24 = 72" in rejected
    assert where.replacement != "24" and int(where.replacement) > 0


def test_calculator_annotation_and_its_visible_copy_change_together():
    response = "Half is 60/2 = <<60/2=30>>30 trees.\nSo 30 - 5 = <<30-5=25>>25 trees.\nThen 60 + 25 = <<60+25=85>>85.\n#### 85"
    rng = random.Random(0)
    while True:  # draw until the first result is the one corrupted
        rejected, where = corrupt_intermediate_result(response, rng)
        if where.original == "30":
            break
    new = where.replacement
    assert rejected.startswith(f"Half is 60/2 = <<60/2={new}>>{new} trees.\nSo 30 - 5 = <<30-5=25>>25")


def test_metamath_fixture_pairs(tmp_path):
    examples, report = build_pairs("metamath", METAMATH, seed=0)
    rows = json.loads(METAMATH.read_text())
    # 21 rows; 7, 11 and 13 only state given equations with an unknown (`32 + 2x = 48`), 17-19
    # only LaTeX results: nothing to corrupt, reported with their numbers, not lost silently
    assert len(examples) == 15
    assert [(s.row, s.field, s.reason) for s in report.skipped] == [
        (row, "response", "no intermediate result to corrupt") for row in (7, 11, 13, 17, 18, 19)
    ]
    first = examples[0]
    assert first.prompt == rows[0]["query"]  # prompt = query; completions start with "\n"
    assert first.chosen == "\n" + rows[0]["response"]
    for example in examples:
        assert example.chosen == "\n" + rows[example.row - 1]["response"]
        old, _ = assert_one_number_changed(example.chosen, example.rejected)
        assert final_lines(example.chosen) == final_lines(example.rejected)
        assert old in spans_text(example.chosen)


def test_metamath_seeded_rejected_text_of_one_fixture_row():
    # row 3 (Betty's wallet) has two intermediate results, $50 and $30; seed 0 corrupts the second
    examples, _ = build_pairs("metamath", METAMATH, seed=0)
    betty = next(e for e in examples if e.row == 3)
    assert betty.rejected == (
        "\nIn the beginning, Betty has only 100 / 2 = $50.\n"
        "Betty's grandparents gave her 15 * 2 = $32.\n"
        "This means, Betty needs 100 - 50 - 30 - 15 = $5 more.\n"
        "#### 5\n"
        "The answer is: 5"
    )


def test_metamath_is_seeded_per_row():
    a, _ = build_pairs("metamath", METAMATH, seed=0)
    b, _ = build_pairs("metamath", METAMATH, seed=0)
    c, _ = build_pairs("metamath", METAMATH, seed=1)
    assert [e.rejected for e in a] == [e.rejected for e in b]
    assert [e.rejected for e in a] != [e.rejected for e in c]
    # a row's pair does not depend on the rows before it
    row = json.loads(METAMATH.read_text())[4]
    alone = metamath_pairs(row, rng=random.Random("0:5"))
    assert alone[0][2] == a[4].rejected


@settings(max_examples=200, deadline=None)
@given(
    number=st.from_regex(r"\A(?:[1-9]\d{0,2}(?:,\d{3}){0,2}|0|[1-9]\d{0,5})(?:\.\d{1,3})?\Z"),
    seed=st.integers(0, 10**6),
)
def test_wrong_number_keeps_the_format(number, seed):
    new = wrong_number(number, random.Random(seed))
    value, new_value = float(number.replace(",", "")), float(new.replace(",", ""))
    assert new_value != value and new_value > 0
    assert len(new.partition(".")[2]) == len(number.partition(".")[2])  # as many decimals
    assert ("," in new) == ("," in number and new_value >= 1000)
    assert re.fullmatch(r"\d+(?:,\d{3})*(?:\.\d+)?", new)


def _line(data) -> tuple[str, int]:
    a, b, op = data
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"She has {a} {op} {b} = {result} apples.", result


_lines = st.tuples(st.integers(1, 500), st.integers(1, 500), st.sampled_from("+-*")).filter(
    lambda t: t[2] != "-" or t[0] > t[1]
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(_lines, min_size=1, max_size=6),
    filler=st.sampled_from(["", "So far so good.\n"]),
    answer_style=st.sampled_from(["metamath", "gsm8k", "both"]),
    seed=st.integers(0, 10**6),
)
def test_corruption_properties(steps, filler, answer_style, seed):
    lines = [_line(step) for step in steps]
    final = lines[-1][1] + 1000  # an answer that no intermediate result equals
    body = filler + "\n".join(text for text, _ in lines) + f"\nIn total {lines[-1][1]} + 1000 = {final}.\n"
    ending = {
        "metamath": f"The answer is: {final}",
        "gsm8k": f"#### {final}",
        "both": f"#### {final}\nThe answer is: {final}",
    }[answer_style]
    response = body + ending
    rejected, where = corrupt_intermediate_result(response, random.Random(seed))
    old, new = assert_one_number_changed(response, rejected)  # exactly one number, text otherwise identical
    assert (old, new) == (where.original, where.replacement)
    assert final_lines(rejected) == final_lines(response)  # the final answer untouched
    assert rejected.endswith(ending)
    assert f"= {final}." in rejected  # the final answer's own equation untouched
    assert old == str(lines[[str(r) for _, r in lines].index(old)][1])  # it was an intermediate result
    assert response[: where.start].endswith("= ")


# ---------------------------------------------------------------- ARC


def test_arc_pairs_of_a_question():
    row = read_jsonl(ARC)[0]  # George rubbing his hands; answer A "dry palms"
    assert arc_pairs(row) == [
        (
            "Question: George wants to warm his hands quickly by rubbing them. Which skin surface will produce the "
            "most heat?\nAnswer:",
            " dry palms",
            " wet palms",
        ),
        (
            "Question: George wants to warm his hands quickly by rubbing them. Which skin surface will produce the "
            "most heat?\nAnswer:",
            " dry palms",
            " palms covered with oil",
        ),
        (
            "Question: George wants to warm his hands quickly by rubbing them. Which skin surface will produce the "
            "most heat?\nAnswer:",
            " dry palms",
            " palms covered with lotion",
        ),
    ]


def test_arc_fixture_numeric_labels_and_other_choice_counts():
    examples, report = build_pairs("arc", ARC)
    # 18 questions with 4 choices -> 3 pairs each, one with 3 choices -> 2, one with 5 -> 4
    assert len(examples) == 18 * 3 + 2 + 4 and not report.skipped
    mammals = [e for e in examples if e.row == 5]  # NYSEDREGENTS, labels 1-4, answerKey "2"
    assert {e.chosen for e in mammals} == {" They have fur or hair."}
    assert [e.rejected for e in mammals] == [
        " They lay eggs.",
        " They breathe with gills.",
        " They are cold-blooded.",
    ]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"answerKey": "E"}, "answerKey", "'E' is not one of the choice labels A, B, C, D"),
        ({"answerKey": None}, "answerKey", "missing"),
        ({"answerKey": ["A"]}, "answerKey", "expected a string, found list"),
        ({"choices": None}, "choices", "missing"),
        ({"choices": ["dry palms", "wet palms"]}, "choices", "expected {'text': [...], 'label': [...]}"),
        ({"choices": {"text": ["a", "b"], "label": ["A"]}}, "choices", "2 texts but 1 labels"),
        (
            {"choices": {"text": ["a", ""], "label": ["A", "B"]}},
            "choices",
            "choice B is empty or not a string",
        ),
        ({"question": 3}, "question", "expected a string, found int"),
    ],
)
def test_arc_bad_rows_name_their_field(change, field, reason):
    row = {**read_jsonl(ARC)[0], **change}
    with pytest.raises(BadRow) as err:
        arc_pairs(row)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_arc_unknown_answer_key_stops_the_build_naming_file_row_and_field(tmp_path):
    rows = read_jsonl(ARC)
    rows[2]["answerKey"] = "E"
    path = write_jsonl(tmp_path / "arc.jsonl", rows)
    with pytest.raises(
        DpolabError, match=r"arc\.jsonl, row 3, field 'answerKey': 'E' is not one of the choice labels"
    ):
        build_pairs("arc", path)
    examples, report = build_pairs("arc", path, on_bad_rows="skip")
    assert len(examples) == 57 and report.by_reason() == {
        "answerKey: 'E' is not one of the choice labels A, B, C, D": 1
    }


# ---------------------------------------------------------------- HellaSwag


def test_hellaswag_pairs_of_a_context():
    row = read_jsonl(HELLASWAG)[0]  # label "3": the man continues removing the snow
    pairs = hellaswag_pairs(row)
    prompt = (
        "Then, the man writes over the snow covering the window of a car, and a woman wearing winter "
        "clothes smiles. then"
    )
    assert [p for p, _, _ in pairs] == [prompt] * 3
    assert {c for _, c, _ in pairs} == {" , the man continues removing the snow on his car."}
    assert [r for _, _, r in pairs] == [" " + e for e in row["endings"][:3]]


def test_hellaswag_parquet_gives_the_same_pairs_as_jsonl():
    from_jsonl, _ = build_pairs("hellaswag", HELLASWAG)
    from_parquet, _ = build_pairs("hellaswag", FIXTURES / "hellaswag_train.parquet")
    assert len(from_jsonl) == 60
    assert [(e.prompt, e.chosen, e.rejected, e.row) for e in from_jsonl] == [
        (e.prompt, e.chosen, e.rejected, e.row) for e in from_parquet
    ]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"endings": ["a", "", "c", "d"]}, "endings", "ending 1 is empty or not a string"),
        ({"label": ""}, "label", "empty (HellaSwag's test split has no labels; use train or validation)"),
        ({"label": "7"}, "label", "7 is no ending's index (there are 4)"),
        ({"label": "three"}, "label", "expected the index of the right ending, found 'three'"),
        ({"ctx": None}, "ctx", "missing"),
        ({"endings": "a"}, "endings", "expected a list of strings, found str"),
    ],
)
def test_hellaswag_bad_rows_name_their_field(change, field, reason):
    row = {**read_jsonl(HELLASWAG)[0], **change}
    with pytest.raises(BadRow) as err:
        hellaswag_pairs(row)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_hellaswag_integer_labels_work_too():
    row = {**read_jsonl(HELLASWAG)[0], "label": 3}
    assert hellaswag_pairs(row) == hellaswag_pairs(read_jsonl(HELLASWAG)[0])


def test_hellaswag_empty_ending_counted_when_skipping(tmp_path):
    rows = read_jsonl(HELLASWAG)
    rows[4]["endings"][2] = " "
    rows[9]["label"] = ""
    path = write_jsonl(tmp_path / "hs.jsonl", rows)
    with pytest.raises(DpolabError, match=r"hs\.jsonl, row 5, field 'endings': ending 2 is empty"):
        build_pairs("hellaswag", path)
    examples, report = build_pairs("hellaswag", path, on_bad_rows="skip")
    assert len(examples) == 54 and [s.row for s in report.skipped] == [5, 10]


# ---------------------------------------------------------------- templates and the paper's edit-distance regime


def test_template_and_delimiter():
    row = read_jsonl(ARC)[0]
    (prompt, chosen, rejected), *_ = arc_pairs(
        row, template="{id}: {question}\nThe answer is", delimiter=": "
    )
    assert prompt.startswith("Mercury_SC_415702: George wants") and prompt.endswith("\nThe answer is")
    assert (chosen, rejected) == (": dry palms", ": wet palms")
    with pytest.raises(BadRow) as err:
        arc_pairs(row, template="{topic}: {question}")
    assert (err.value.field, err.value.reason) == ("topic", "missing (the prompt template uses it)")


def test_edit_distance_regimes_on_the_fixtures():
    """Smaug: MetaMath pairs are close (the paper reports ≈ 6.5 %), ARC pairs far apart (≈ 90 %).

    On word tokens, one changed number in a MetaMath response is exactly one substitution, so a
    pair's normalised distance is 1 / (response length in tokens); the fixture responses are 35 to
    170 tokens long, hence 0.6-2.9 %: lower than the paper's 6.5 %, which one changed number can
    only reach in responses of about 15 tokens. ARC's choices share few words: most pairs are 100 % apart."""
    metamath, _ = build_pairs("metamath", METAMATH)
    for example in metamath:
        a, b = word_tokens(example.chosen), word_tokens(example.rejected)
        changed = 2 if "<<" in example.chosen else 1  # annotated `<<60/2=30>>30`: two copies of one result
        assert levenshtein(a, b) == changed
        assert pair_edit_distance(example) == pytest.approx(changed / max(len(a), len(b)))
    arc, _ = build_pairs("arc", ARC)
    hellaswag, _ = build_pairs("hellaswag", HELLASWAG)
    mean = {
        name: statistics.mean(pair_edit_distance(e) for e in examples)
        for name, examples in (("metamath", metamath), ("arc", arc), ("hellaswag", hellaswag))
    }
    assert 0.005 < mean["metamath"] < 0.05
    assert max(pair_edit_distance(e) for e in metamath) < 0.10
    assert mean["arc"] > 0.75 and statistics.median(pair_edit_distance(e) for e in arc) == 1.0
    assert mean["hellaswag"] > 0.6
