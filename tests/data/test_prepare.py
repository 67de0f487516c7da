"""The data preparation on Arrow tables gives what the list-based pipeline gave (tests/data/
naive_pipeline.py, the code before it): the same rows, as the collator receives them, in the same
order, the same eval pairs, bad-row reports and truncation counts, for every format, truncation
on both sides, the SFT stage, mixtures and builders; and the same first bad row in one process as
in several."""

from __future__ import annotations

import json

import pytest

from dpolab.config.schema import DataSection
from dpolab.data import rows
from dpolab.data.prepare import prepare_data
from dpolab.data.tokenize import tokenize_pair, tokenize_sft
from dpolab.errors import DpolabError
from dpolab.modeling.collate import PairCollator

from .helpers import FIXTURES, read_jsonl, write_jsonl
from .naive_pipeline import naive_prepare

HH = str(FIXTURES / "hh_rlhf_train.jsonl")
UF = str(FIXTURES / "ultrafeedback_binarized_train_prefs.jsonl")
ARC = str(FIXTURES / "arc_challenge_train.jsonl")
METAMATH = str(FIXTURES / "metamathqa.json")
HELLASWAG = str(FIXTURES / "hellaswag_train.parquet")

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "every",
    "jolly",
    "knight",
]


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


SPECIAL = {
    3: {"prompt": "The capital of France is ", "chosen": "Paris.", "rejected": "Lyon."},  # tokens merge
    4: {"prompt": "Human: hi", "chosen": " Hello!</s>", "rejected": " Go away."},  # EOS there already
    7: {"prompt": "p", "rejected": "r"},  # chosen missing
    11: {"prompt": "p", "chosen": "same", "rejected": "same"},
    15: '{"prompt": ',  # not JSON
}


def standard_rows(n: int = 24) -> list:
    """Standard pairs of various lengths, with what tokenisation must get right (tokens that merge
    across the prompt's end, an EOS already in the completion) and bad rows of several kinds."""
    return [
        SPECIAL.get(i)
        or {
            "prompt": f"Question {i}: {_text(i, 3 + i % 9)}?",
            "chosen": f" {_text(i + 1, 1 + i % 5)}",
            "rejected": f" {_text(i + 2, 2 + i % 4)}",
        }
        for i in range(n)
    ]


def conversational_rows() -> list:
    user = {"role": "user", "content": "What is the capital of France?"}
    return [
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}],
        },
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        },
        # the prompt repeated inside chosen and rejected (full conversations)
        {
            "prompt": [user],
            "chosen": [user, {"role": "assistant", "content": "It is Paris."}],
            "rejected": [user, {"role": "assistant", "content": "Marseille."}],
        },
        {"prompt": [user], "chosen": [], "rejected": [{"role": "assistant", "content": "x"}]},  # bad row
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    mixed = standard_rows(10) + conversational_rows() + read_jsonl(FIXTURES / "hh_rlhf_train.jsonl")[:4]
    return {
        "standard": str(write_jsonl(folder / "standard.jsonl", standard_rows())),
        "conversational": str(write_jsonl(folder / "conversational.jsonl", conversational_rows())),
        "mixed": str(write_jsonl(folder / "mixed.jsonl", mixed)),  # one file, three formats: format auto
        "json_list": _json_list(folder / "standard.json", standard_rows(12)),
    }


def _json_list(path, records) -> str:
    path.write_text(
        json.dumps([r if isinstance(r, dict) else 5 for r in records], indent=1), encoding="utf-8"
    )
    return str(path)


# name: (data settings, SFT stage); `{name}` in a path stands for one of the files above
CASES = {
    "standard": (
        {"train": "{standard}", "on_bad_rows": "skip", "max_length": None, "max_prompt_length": None},
        False,
    ),
    "standard, a JSON list": ({"train": "{json_list}", "on_bad_rows": "skip"}, False),
    "conversational, eval UltraFeedback": (
        {"train": "{conversational}", "eval": UF, "on_bad_rows": "skip"},
        False,
    ),
    "three formats in one file": (
        {"train": "{mixed}", "on_bad_rows": "skip", "max_length": 64, "max_prompt_length": 40},
        False,
    ),
    "implicit prompts (HH)": ({"train": HH, "max_length": None, "max_prompt_length": None}, False),
    "truncation on both sides": (
        {"train": HH, "max_length": 48, "max_prompt_length": 24, "on_bad_rows": "skip"},
        False,
    ),
    "prompts too long, skipped": (
        {"train": "{standard}", "max_length": 12, "max_prompt_length": None, "on_bad_rows": "skip"},
        False,
    ),
    "SFT, truncated": ({"train": HH, "max_length": 48, "max_prompt_length": 24, "eval": UF}, True),
    "SFT, conversational": ({"train": "{mixed}", "on_bad_rows": "skip"}, True),
    "weighted mixture with builders, hold-out": (
        {
            "train": [
                {"path": HH, "weight": 2},
                {"path": ARC, "builder": "arc", "weight": 1},
                {"path": METAMATH, "builder": "metamath", "weight": 1.5},
            ],
            "eval_size": 0.2,
            "max_length": 96,
            "max_prompt_length": 48,
            "on_bad_rows": "skip",
        },
        False,
    ),
    "interleave_under, limit": (
        {
            "train": [
                {"path": "{standard}", "weight": 1},
                {"path": HELLASWAG, "builder": "hellaswag", "weight": 3},
            ],
            "mix_strategy": "interleave_under",
            "limit": 25,
            "on_bad_rows": "skip",
        },
        False,
    ),
    "interleave_over, eval mixture": (
        {
            "train": [{"path": HH, "weight": 1}, {"path": "{conversational}", "weight": 1}],
            "mix_strategy": "interleave_over",
            "eval": [{"path": ARC, "builder": "arc"}, {"path": HELLASWAG, "builder": "hellaswag"}],
            "on_bad_rows": "skip",
        },
        False,
    ),
    "builder as data.source": ({"builder": "metamath", "source": METAMATH, "eval_size": 4}, False),
    "limit of one file, bad rows after it": (
        {"train": "{standard}", "limit": 5, "on_bad_rows": "skip"},
        False,
    ),
}


def _settings(case: str, files: dict, tmp_path, **extra) -> DataSection:
    values, _ = CASES[case]
    values = json.loads(json.dumps(values).replace("{standard}", files["standard"]))
    for name, path in files.items():
        values = json.loads(json.dumps(values).replace("{" + name + "}", path))
    return DataSection(**values, cache_dir=str(tmp_path / "cache"), **extra)


def _rows(dataset) -> list[dict] | None:
    return None if dataset is None else [dict(row) for row in dataset]


def _compare(data: DataSection, tokenizer, *, sft: bool, seed: int = 3, data_seed: int | None = None):
    tokenize = tokenize_sft if sft else tokenize_pair
    new = prepare_data(data, tokenizer, tokenize=tokenize, seed=seed, data_seed=data_seed)
    old = naive_prepare(data, tokenizer, sft=sft, seed=seed, data_seed=data_seed)
    assert not new.from_cache
    assert _rows(new.train) == old["train"]
    assert _rows(new.eval) == old["eval"]
    assert [r.to_dict() for r in new.reports] == old["reports"]
    assert (new.truncated_prompts, new.truncated_completions) == (
        old["truncated_prompts"],
        old["truncated_completions"],
    )
    return new, old


@pytest.mark.parametrize("case", CASES)
def test_the_same_pairs_as_the_list_pipeline(case, files, tokenizer, tmp_path):
    new, old = _compare(_settings(case, files, tmp_path), tokenizer, sft=CASES[case][1])
    # and so the same batches: the collator's tensors, row for row
    collator = PairCollator(pad_token_id=tokenizer.pad_token_id)
    for start in range(0, len(old["train"]), 8):
        a, b = (
            collator([dict(new.train[i]) for i in range(start, min(start + 8, len(new.train)))]),
            collator(old["train"][start : start + 8]),
        )
        assert a.keys() == b.keys() and all(str(a[k]) == str(b[k]) for k in a)


def test_the_cases_cover_what_they_claim(files, tokenizer, tmp_path):
    """The fixtures above exercise what the cases are named for (else the equality proves little)."""
    by_case = {}
    for case in (
        "truncation on both sides",
        "prompts too long, skipped",
        "weighted mixture with builders, hold-out",
        "three formats in one file",
    ):
        by_case[case] = prepare_data(
            _settings(case, files, tmp_path / case), tokenizer, tokenize=tokenize_pair, seed=3
        )
    both = by_case["truncation on both sides"]
    assert both.truncated_prompts > 0 and both.truncated_completions > 0
    assert any(s.field == "prompt" for r in by_case["prompts too long, skipped"].reports for s in r.skipped)
    mixture = by_case["weighted mixture with builders, hold-out"]
    rows_of_train = [(r["row"], r["length"]) for r in mixture.train]
    assert len(rows_of_train) != len(set(rows_of_train))  # HH's rows repeated by its weight
    assert len(mixture.eval) > 0 and [r["index"] for r in mixture.eval] == list(range(len(mixture.eval)))
    # 9 standard pairs (row 8 has no chosen), 3 conversational (row 14 has an empty chosen), 4 implicit
    assert len(by_case["three formats in one file"].train) == 9 + 3 + 4


@pytest.mark.parametrize("case", ["standard", "weighted mixture with builders, hold-out"])
def test_two_processes_give_what_one_gives(case, files, tokenizer, tmp_path):
    _compare(_settings(case, files, tmp_path, num_proc=2), tokenizer, sft=False)


def test_map_batches_runs_in_the_processes_asked_and_keeps_the_row_order(tmp_path):
    import datasets

    table = datasets.Dataset.from_dict({"x": list(range(10))})
    doubled = rows.map_batches(
        table,
        _double,
        features=datasets.Features({"x": datasets.Value("int64"), "pid": datasets.Value("int64")}),
        path=tmp_path / "doubled.arrow",
        num_proc=2,
        desc="x",
    )
    assert doubled["x"] == [2 * i for i in range(10)]
    assert len(doubled.cache_files) == 2 and len(set(doubled["pid"])) == 2  # two shards, two processes


def _double(batch):
    import os

    return {"x": [2 * x for x in batch["x"]], "pid": [os.getpid()] * len(batch["x"])}


def _error(function, *args, **kwargs) -> str:
    with pytest.raises(DpolabError) as err:
        function(*args, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("num_proc", [1, 2])
@pytest.mark.parametrize(
    ("bad", "settings", "row"),
    [
        # bad rows in both halves of the file (each process gets one half): the first is named
        ({14: {"prompt": "p", "rejected": "r"}, 31: {"prompt": "p", "chosen": "s", "rejected": "s"}}, {}, 15),
        # prompts too long for max_length, in both halves
        (
            {
                9: {"prompt": _text(1, 30), "chosen": " a", "rejected": " b"},
                29: {"prompt": _text(2, 30), "chosen": " a", "rejected": " b"},
            },
            {"max_length": 20, "max_prompt_length": None},
            10,
        ),
        # a row too long comes before a malformed one: the malformed one stops loading first, as before
        (
            {4: {"prompt": _text(1, 30), "chosen": " a", "rejected": " b"}, 33: {"prompt": "p"}},
            {"max_length": 20, "max_prompt_length": None},
            34,
        ),
    ],
)
def test_the_first_bad_row_is_named_however_many_processes(bad, settings, row, num_proc, tokenizer, tmp_path):
    records = [{"prompt": f"good {i}", "chosen": " a", "rejected": " b"} for i in range(40)]
    for index, record in bad.items():
        records[index] = record
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    data = DataSection(train=str(path), cache_dir=str(tmp_path / "cache"), num_proc=num_proc, **settings)
    message = _error(prepare_data, data, tokenizer, tokenize=tokenize_pair)
    assert message == _error(naive_prepare, data, tokenizer)
    assert message.startswith(f"{path}, row {row}, field ")
    assert not list((tmp_path / "cache").iterdir())  # nothing cached: no entry, no temporary


def test_no_pair_left_says_so_as_before(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": _text(1, 30), "chosen": " a", "rejected": " b"}])
    data = DataSection(
        train=str(path),
        max_length=8,
        max_prompt_length=None,
        on_bad_rows="skip",
        cache_dir=str(tmp_path / "c"),
    )
    message = _error(prepare_data, data, tokenizer, tokenize=tokenize_pair)
    assert message == f"{path}: no pair survives tokenisation (see data.max_length / max_prompt_length)"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    data = DataSection(train=str(empty), cache_dir=str(tmp_path / "c"))
    assert _error(prepare_data, data, tokenizer, tokenize=tokenize_pair) == f"{empty}: has no rows"


def test_how_many_processes(monkeypatch):
    monkeypatch.setattr(rows, "available_cpus", lambda: 16)
    assert rows.processes(None, 1_000_000) == 8  # the CPUs available, at most 8
    assert rows.processes(None, 7_999) == 3  # one per 2,000 rows at least
    assert rows.processes(None, 10) == 1
    assert rows.processes(3, 10) == 3 and rows.processes(3, 2) == 2  # as set, up to one per row
    monkeypatch.setattr(rows, "available_cpus", lambda: 2)
    assert rows.processes(None, 1_000_000) == 2


@pytest.mark.parametrize(
    "positions",
    [[], [0], [5, 5, 0, 12, 11, 3], list(range(13)), [12, 0, 7, 7, 7, 1, 2, 9]],
    ids=["none", "one", "repeats", "all", "shuffled"],
)
def test_gather_gives_the_rows_asked_in_order_from_many_batches(positions):
    """Rows gathered batch by batch (a table of 4 batches: 3 + 4 + 1 + 5 rows) come back in the
    order asked, as one slice per row would give them."""
    import numpy as np
    import pyarrow as pa

    sizes, start, batches = (3, 4, 1, 5), 0, []
    for size in sizes:
        values = list(range(start, start + size))
        batches.append(pa.record_batch({"n": values, "ids": [[v] * (v % 3) for v in values]}))
        start += size
    table = pa.Table.from_batches(batches)
    gathered = rows.gather(table, np.asarray(positions, np.int64))
    assert gathered.to_pylist() == [table.slice(i, 1).to_pylist()[0] for i in positions]
    assert gathered.num_rows == 0 or len(gathered.to_batches()) == 1
