"""`data.eval_size` holds out evaluation pairs that training never sees, also when a weighted
mixture repeats a source's rows."""

from __future__ import annotations

import json

import pytest

from dpolab.data.prepare import hold_out, prepare_data
from dpolab.data.tokenize import tokenize_pair
from dpolab.errors import DpolabError
from dpolab.training import config_from_dict


def _write(path, n, tag):
    rows = [
        {"prompt": f"{tag} question {i}:", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _content(pair):
    return tuple(pair["prompt_ids"]), tuple(pair["chosen_ids"]), tuple(pair["rejected_ids"])


@pytest.mark.parametrize("seed", range(6))
def test_no_pair_of_a_repeated_source_is_both_in_train_and_in_eval(tmp_path, tokenizer, seed):
    """12 + 4 rows at weights 1:1: the mixture (16 pairs) repeats each row of the small source
    twice; a hold-out by position could put one copy in eval and the other in train."""
    big, small = _write(tmp_path / "big.jsonl", 12, "big"), _write(tmp_path / "small.jsonl", 4, "small")
    values = {
        "model": {"name_or_path": "unused"},
        "data": {
            "train": [{"path": str(big), "weight": 1}, {"path": str(small), "weight": 1}],
            "eval_size": 0.25,
        },
        "training": {"seed": seed},
    }
    config = config_from_dict(values)
    prepared = prepare_data(config.data, tokenizer, tokenize=tokenize_pair, seed=seed)
    train, held = {_content(p) for p in prepared.train}, [_content(p) for p in prepared.eval]
    assert not train & set(held)
    assert len(held) == len(set(held)) == 3  # a quarter of the 12 distinct pairs, each once
    assert len(train) + len(held) == 12


def test_without_repeats_eval_size_holds_out_that_many_pairs():
    pairs = [{"prompt_ids": [i], "chosen_ids": [1], "rejected_ids": [2]} for i in range(10)]
    origins = [("a.jsonl", i + 1) for i in range(10)]
    train, held = hold_out(pairs, origins, 0.3, seed=0)
    assert len(held) == 3 and len(train) == 7
    assert sorted(p["prompt_ids"][0] for p in train + held) == list(range(10))
    assert hold_out(pairs, origins, 3, seed=0) == (train, held)  # a number of pairs, same seed
    with pytest.raises(DpolabError, match="leaves 10 of 10 distinct pairs"):
        hold_out(pairs, origins, 10, seed=0)


def test_the_pairs_a_builder_made_of_one_row_stay_on_one_side():
    # three pairs of each raw row, as the ARC builder makes of a four-choice question
    pairs = [
        {"prompt_ids": [row], "chosen_ids": [1], "rejected_ids": [k]} for row in range(6) for k in range(3)
    ]
    origins = [("arc.jsonl", row) for row in range(6) for _ in range(3)]
    train, held = hold_out(pairs, origins, 0.25, seed=1)
    assert not {p["prompt_ids"][0] for p in train} & {p["prompt_ids"][0] for p in held}
    assert len(held) % 3 == 0 and len(held) >= round(0.25 * 18) and len(train) + len(held) == 18
