"""Edit distances, percentiles and histograms of a preference dataset."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpolab.data.formats import PreferenceExample
from dpolab.data.stats import (
    dataset_stats,
    format_stats,
    histogram,
    levenshtein,
    naive_levenshtein,
    normalised_edit_distance,
    pair_edit_distance,
    percentiles,
    word_tokens,
)
from dpolab.data.tokenize import tokenize_pair


def test_levenshtein_by_hand():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein(["48", "/", "2", "=", "24"], ["48", "/", "2", "=", "26"]) == 1
    assert levenshtein([1, 2, 3, 4], [2, 3, 4, 5]) == 2  # delete 1, insert 5
    assert levenshtein("flaw", "lawn") == 2


@settings(max_examples=300, deadline=None)
@given(a=st.lists(st.integers(0, 4), max_size=70), b=st.lists(st.integers(0, 4), max_size=70))
def test_levenshtein_equals_the_textbook_one(a, b):
    # sizes over 64 exercise bit vectors wider than a machine word
    assert levenshtein(a, b) == naive_levenshtein(a, b) == levenshtein(b, a)


@settings(max_examples=100, deadline=None)
@given(a=st.text("abc ", max_size=30), b=st.text("abcd ", max_size=30))
def test_character_level_is_the_same_function_on_strings(a, b):
    assert levenshtein(a, b) == naive_levenshtein(list(a), list(b))


def test_normalised_edit_distance_divides_by_the_longer():
    assert normalised_edit_distance(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(1 / 3)
    assert normalised_edit_distance(["a"], ["a", "b", "c", "d"]) == pytest.approx(3 / 4)
    assert normalised_edit_distance([], []) == 0.0
    assert normalised_edit_distance(["x"], ["y"]) == 1.0


def test_word_tokens_keep_numbers_whole():
    assert word_tokens("Natalia sold 48/2 = 24 clips.") == [
        "Natalia",
        "sold",
        "48",
        "/",
        "2",
        "=",
        "24",
        "clips",
        ".",
    ]
    assert word_tokens("$1,250.50 each") == ["$", "1,250.50", "each"]


def test_pair_edit_distance_words_and_tokenizer(tokenizer):
    example = PreferenceExample("Q:", " 48/2 = 24 clips.", " 48/2 = 26 clips.")
    assert pair_edit_distance(example) == pytest.approx(1 / 7)
    pair = tokenize_pair(example, tokenizer, max_length=None, max_prompt_length=None)
    expected = levenshtein(pair.chosen_ids, pair.rejected_ids) / max(
        len(pair.chosen_ids), len(pair.rejected_ids)
    )
    assert pair_edit_distance(example, tokenizer) == pytest.approx(expected)
    assert 0 < expected < 1
    conversational = PreferenceExample(
        [{"role": "user", "content": "Q"}],
        [{"role": "assistant", "content": "a b"}],
        [{"role": "assistant", "content": "a c"}],
    )
    assert pair_edit_distance(conversational) == pytest.approx(1 / 2)
    # characters: " 48/2 = 24 clips." vs " 48/2 = 26 clips." differ in 1 of 17
    assert pair_edit_distance(example, level="char") == pytest.approx(1 / 17)
    assert pair_edit_distance(example, tokenizer, level="char") == pytest.approx(1 / 17)


def test_percentiles_interpolate_linearly():
    # sorted 1, 2, 3, 4: p50 lies halfway between 2 and 3; p25 at index 0.75 -> 1.75
    assert percentiles([4, 1, 3, 2], (25, 50, 100)) == {"p25": 1.75, "p50": 2.5, "p100": 4.0}
    assert percentiles([]) == {}


def test_histogram_bins_and_the_closed_last_bin():
    bins = histogram([0.0, 0.05, 0.1, 0.95, 1.0], bins=10)
    assert [b["count"] for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert (bins[0]["lo"], bins[0]["hi"], bins[-1]["hi"]) == (0.0, 0.1, 1.0)


def test_dataset_stats_in_characters_and_tokens(tokenizer):
    examples = [PreferenceExample("abcd", " xy", " xz"), PreferenceExample("ab", " hello there", " goodbye")]
    stats = dataset_stats(examples, bins=4)
    assert stats["rows"] == 2 and stats["unit"] == "characters"
    assert stats["prompt_length"]["p50"] == 3.0 and stats["prompt_length"]["p100"] == 4.0
    assert stats["completion_length"]["p100"] == 12.0  # " hello there"
    # edit distances: [xy] vs [xz] = 1/1; [hello, there] vs [goodbye] = 2/2
    assert stats["edit_distance"]["mean"] == 1.0
    assert [b["count"] for b in stats["edit_distance"]["histogram"]] == [0, 0, 0, 2]
    in_tokens = dataset_stats(examples, tokenizer=tokenizer)
    lengths = [
        len(tokenize_pair(e, tokenizer, max_length=None, max_prompt_length=None).prompt_ids) for e in examples
    ]
    assert in_tokens["unit"] == "tokens"
    assert in_tokens["prompt_length"]["p100"] == max(lengths)
    # characters: " xy"/" xz" 1 of 3; " hello there"/" goodbye" 9 of 12 (keep the space, hell'o' -> go'o'
    # and ther'e' -> dby'e': "hell" -> "go" 2 substitutions + 2 deletions, " ther" -> "dby" 3 + 2)
    by_char = dataset_stats(examples, level="char")
    assert by_char["edit_distance"]["mean"] == pytest.approx((1 / 3 + 9 / 12) / 2)
    assert by_char["edit_distance_unit"] == "characters"
    text = format_stats(stats, source="x.jsonl")
    assert text.splitlines()[0] == "x.jsonl: 2 pairs"
    assert "mean 100.0%, median 100.0%" in text


@pytest.mark.parametrize(
    ("source", "with_tokenizer", "level", "num_proc"),
    [
        ("hh_rlhf_train.jsonl", False, "token", 1),
        ("hh_rlhf_train.jsonl", True, "token", 2),
        ("ultrafeedback_binarized_train_prefs.jsonl", True, "char", 1),
        ("ultrafeedback_binarized_train_prefs.jsonl", False, "char", 1),
    ],
)
def test_stats_of_a_file_on_arrow_tables_equal_those_of_its_pairs(
    source, with_tokenizer, level, num_proc, tokenizer, tmp_path
):
    from dpolab.data.pairs import load_pairs
    from dpolab.data.stats import source_stats

    from .helpers import FIXTURES

    tok = tokenizer if with_tokenizer else None
    examples, _ = load_pairs(FIXTURES / source)
    stats, report = source_stats(
        str(FIXTURES / source), tokenizer=tok, level=level, num_proc=num_proc, work=tmp_path
    )
    assert stats == dataset_stats(examples, tokenizer=tok, level=level)
    assert not report.skipped and list(tmp_path.iterdir()) == []  # its tables removed
