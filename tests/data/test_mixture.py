"""One source or a weighted mixture of several, with builders run on the fly."""

from __future__ import annotations

from collections import Counter

import pytest

from dpolab.data.mixture import load_sources, mixture_counts, resample
from dpolab.errors import DpolabError

from .helpers import FIXTURES, write_jsonl

HH = str(FIXTURES / "hh_rlhf_train.jsonl")  # 20 pairs
ARC = str(FIXTURES / "arc_challenge_train.jsonl")  # 60 pairs with the arc builder
METAMATH = str(FIXTURES / "metamathqa.json")  # 18 pairs, 3 rows with nothing to corrupt


def test_counts_by_strategy():
    # sizes 100 and 50, weights 3:1 -> p = (0.75, 0.25)
    assert mixture_counts([100, 50], [3, 1]) == [113, 37]  # N = 150: 112.5 and 37.5, the tie to the first
    assert mixture_counts([100, 50], [3, 1], mix_strategy="interleave_under") == [
        100,
        33,
    ]  # N = min(133.3, 200)
    assert mixture_counts([100, 50], [3, 1], mix_strategy="interleave_over") == [
        150,
        50,
    ]  # N = max(133.3, 200)
    assert mixture_counts([10, 10, 10], [1, 1, 1]) == [10, 10, 10]
    assert sum(mixture_counts([7, 11, 13], [0.2, 0.5, 0.3])) == 31
    with pytest.raises(DpolabError, match="unknown mix_strategy 'concat'"):
        mixture_counts([1], [1], mix_strategy="concat")


def test_resample_repeats_whole_copies_then_samples():
    import random

    items = list("abcd")
    out = resample(items, 10, random.Random(0))
    assert out[:8] == items * 2 and len(set(out[8:])) == 2 and set(out[8:]) <= set(items)
    assert resample(list(range(20)), 5, random.Random(0)) != resample(list(range(20)), 5, random.Random(1))
    assert len(set(resample(items, 3, random.Random(0)))) == 3  # no repetition below the size


def test_single_source_forms():
    from_path, reports = load_sources(HH)
    from_dict, _ = load_sources({"path": HH})
    assert len(from_path) == 20 and [e.row for e in from_path] == [e.row for e in from_dict] == list(
        range(1, 21)
    )
    assert reports[0].source == HH and not reports[0].skipped


def test_without_weights_the_sources_are_concatenated_in_order():
    examples, reports = load_sources(
        [{"path": HH}, {"path": ARC, "builder": "arc"}, {"path": METAMATH, "builder": "metamath"}]
    )
    assert len(examples) == 20 + 60 + 15  # 6 of the 21 MetaMath rows have nothing to corrupt
    assert [e.source for e in examples] == [HH] * 20 + [ARC] * 60 + [METAMATH] * 15
    assert examples[20].prompt.startswith("Question: George wants") and examples[20].chosen == " dry palms"
    # MetaMath rows without an intermediate result are reported, not lost silently
    assert [s.row for s in reports[2].skipped] == [7, 11, 13, 17, 18, 19]


def test_weights_are_proportions_of_a_mixture_the_size_of_the_sources():
    specs = [{"path": HH, "weight": 1.0}, {"path": ARC, "builder": "arc", "weight": 1.0}]
    examples, _ = load_sources(specs, seed=3)
    # N = 20 + 60 = 80; p = 1/2 each -> 40 and 40: HH is repeated twice, ARC sampled down to 40 of 60
    by_source = Counter(e.source for e in examples)
    assert by_source == {HH: 40, ARC: 40}
    hh_rows = Counter(e.row for e in examples if e.source == HH)
    assert set(hh_rows.values()) == {2}
    arc_pairs = [(e.row, e.rejected) for e in examples if e.source == ARC]
    assert len(set(arc_pairs)) == 40  # no ARC pair twice
    assert examples != sorted(examples, key=lambda e: e.source)  # shuffled, not one block per source


def test_mixture_is_deterministic_with_the_seed():
    specs = [{"path": HH, "weight": 2}, {"path": ARC, "builder": "arc", "weight": 1}]

    def key(examples):
        return [(e.source, e.row, e.rejected if isinstance(e.rejected, str) else "") for e in examples]

    first, _ = load_sources(specs, seed=7)
    again, _ = load_sources(specs, seed=7)
    other, _ = load_sources(specs, seed=8)
    assert key(first) == key(again) and key(first) != key(other)
    under, _ = load_sources(specs, seed=7, mix_strategy="interleave_under")
    assert Counter(e.source for e in under) == {HH: 20, ARC: 10}  # N = min(20 / (2/3), 60 / (1/3)) = 30


def test_bad_rows_in_a_source_follow_the_policy(tmp_path):
    bad = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}],
    )
    with pytest.raises(DpolabError, match=r"pairs\.jsonl, row 2, field 'rejected': missing"):
        load_sources([{"path": HH}, {"path": str(bad)}])
    examples, reports = load_sources([{"path": HH}, {"path": str(bad)}], on_bad_rows="skip")
    assert len(examples) == 21 and reports[1].by_reason() == {"rejected: missing": 1}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (
            [{"path": HH, "weight": 1}, {"path": ARC, "builder": "arc"}],
            "give a weight to every data source or to none; no weight for: " + ARC,
        ),
        (
            [{"path": HH, "weights": 1}],
            "data source 1: unknown key(s) weights; the keys are path, split, weight, builder",
        ),
        (
            [{"path": HH}, {"path": HH, "weight": -1}],
            f"data source 2 ({HH}): 'weight' must be a positive number, not -1",
        ),
        ([{"path": ARC, "builder": "mmlu"}], f"data source 1 ({ARC}): unknown builder 'mmlu'"),
        ([{"split": "train"}], "data source 1: 'path' must name a file or hub dataset"),
        ([], "no data sources given"),
        ([3], "data source 1: expected a path or a mapping"),
    ],
)
def test_spec_mistakes_are_named(specs, message):
    with pytest.raises(DpolabError) as err:
        load_sources(specs)
    assert str(err.value).startswith(message)
