"""Reading rows with the numbers a user would look for, and writing JSONL atomically."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpolab.data.io import Row, looks_like_path, read_rows, write_json_atomic, write_jsonl_atomic
from dpolab.errors import DpolabError

from .helpers import FIXTURES, read_jsonl, write_jsonl


def test_jsonl_row_numbers_are_line_numbers_after_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, "", "   ", {"a": 2}, "", {"a": 3}])
    assert [(r.number, r.record) for r in read_rows(path)] == [(1, {"a": 1}), (4, {"a": 2}), (6, {"a": 3})]


def test_invalid_json_row_comes_back_with_its_number(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, "", '{"a": 2,', "[1, 2]", {"a": 5}])
    rows = list(read_rows(path))
    assert [r.number for r in rows] == [1, 3, 4, 5]
    assert rows[1] == Row(3, None, "not valid JSON (Expecting property name enclosed in double quotes)")
    assert rows[2] == Row(4, None, "not a JSON object but list")
    assert rows[3] == Row(5, {"a": 5})


def test_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n{"a": 2}\n')
    assert [r.record for r in read_rows(path)] == [{"a": 1}, {"a": 2}]
    json_path = tmp_path / "bom.json"
    json_path.write_bytes(b"\xef\xbb\xbf" + b'[{"a": 1}]')
    assert [r.record for r in read_rows(json_path)] == [{"a": 1}]


def test_json_list_dict_of_columns_and_data_key(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"a": 1}, 7, {"a": 3}]))
    rows = list(read_rows(tmp_path / "list.json"))
    assert rows == [Row(1, {"a": 1}), Row(2, None, "not a JSON object but int"), Row(3, {"a": 3})]
    (tmp_path / "columns.json").write_text(json.dumps({"a": [1, 2], "b": ["x", "y"]}))
    assert [r.record for r in read_rows(tmp_path / "columns.json")] == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
    ]
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 2, "data": [{"a": 1}]}))
    assert [r.record for r in read_rows(tmp_path / "wrapped.json")] == [{"a": 1}]
    (tmp_path / "broken.json").write_text('[{"a": 1},\n{"a": ]')
    with pytest.raises(
        DpolabError, match=r"broken\.json: not valid JSON \(Expecting value at line 2, column 7\)"
    ):
        list(read_rows(tmp_path / "broken.json"))


USER = {"role": "user", "content": "Question: 3 + 5?"}
SINGLE_ROWS = {
    "standard": {"prompt": "Question: 3 + 5?", "chosen": " 8", "rejected": " 9"},
    # prompt, chosen and rejected: lists of one message each, of equal length like columns' lists
    "conversational": {
        "prompt": [USER],
        "chosen": [{"role": "assistant", "content": "8"}],
        "rejected": [{"role": "assistant", "content": "9"}],
    },
    # UltraFeedback-binarized: chosen and rejected are whole conversations of equal length
    "ultrafeedback": {
        "prompt": "Question: 3 + 5?",
        "chosen": [USER, {"role": "assistant", "content": "8"}],
        "rejected": [USER, {"role": "assistant", "content": "9"}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    },
    "implicit conversational": {
        "chosen": [USER, {"role": "assistant", "content": "8"}],
        "rejected": [USER, {"role": "assistant", "content": "9"}],
    },
    "hellaswag (raw, for a builder)": {"ctx": "He opens", "endings": ["the door", "a b", "c d"], "label": 0},
}


@pytest.mark.parametrize("kind", SINGLE_ROWS)
def test_json_file_holding_a_single_object_is_one_row(tmp_path, kind):
    from dpolab.data.formats import normalise

    row = SINGLE_ROWS[kind]
    (tmp_path / "one.json").write_text(json.dumps(row))
    assert list(read_rows(tmp_path / "one.json")) == [Row(1, row)]
    if "hellaswag" not in kind:
        normalise(row)  # a valid preference row as read


def test_json_dict_of_columns_of_standard_and_of_conversational_rows(tmp_path):
    rows = [SINGLE_ROWS["conversational"], {**SINGLE_ROWS["conversational"], "prompt": [USER, USER]}]
    columns = {key: [row[key] for row in rows] for key in ("prompt", "chosen", "rejected")}
    (tmp_path / "conv.json").write_text(json.dumps(columns))
    assert [r.record for r in read_rows(tmp_path / "conv.json")] == rows
    standard = [SINGLE_ROWS["standard"], {**SINGLE_ROWS["standard"], "chosen": " eight"}]
    columns = {key: [row[key] for row in standard] for key in ("prompt", "chosen", "rejected")}
    (tmp_path / "std.json").write_text(json.dumps(columns))
    assert [r.record for r in read_rows(tmp_path / "std.json")] == standard
    (tmp_path / "one_column_row.json").write_text(json.dumps({key: [v] for key, v in standard[0].items()}))
    assert [r.record for r in read_rows(tmp_path / "one_column_row.json")] == [standard[0]]
    (tmp_path / "ragged.json").write_text(json.dumps({"prompt": ["a", "b"], "chosen": ["c"]}))
    with pytest.raises(
        DpolabError, match=r"ragged\.json: a dict of columns must give every column the same length"
    ):
        list(read_rows(tmp_path / "ragged.json"))


def test_json_lines_under_a_json_name_as_shp_has_them():
    rows = list(read_rows(FIXTURES / "shp_train.json"))
    assert [r.number for r in rows] == list(range(1, 21))
    assert rows[0].record["domain"] == "askculinary_train" and rows[0].record["labels"] == 1


def test_parquet_rows_equal_the_jsonl_rows():
    from_parquet = list(read_rows(FIXTURES / "hellaswag_train.parquet"))
    assert [r.number for r in from_parquet] == list(range(1, 21))
    assert [r.record for r in from_parquet] == read_jsonl(FIXTURES / "hellaswag_train.jsonl")


def test_damaged_parquet_is_a_clear_error(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DpolabError, match=r"bad\.parquet: cannot read as Parquet"):
        list(read_rows(tmp_path / "bad.parquet"))


def test_folder_saved_with_save_to_disk(tmp_path):
    import datasets

    records = read_jsonl(FIXTURES / "arc_challenge_train.jsonl")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "one"))
    rows = list(read_rows(tmp_path / "one"))
    assert [r.number for r in rows] == list(range(1, 21)) and [r.record for r in rows] == records

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(records[:3]), "test": datasets.Dataset.from_list(records[3:5])}
    ).save_to_disk(str(tmp_path / "dict"))
    assert [r.record["id"] for r in read_rows(tmp_path / "dict")] == [r["id"] for r in records[:3]]  # train
    assert [r.record["id"] for r in read_rows(tmp_path / "dict", split="test")] == [
        r["id"] for r in records[3:5]
    ]
    with pytest.raises(DpolabError, match=r"no split 'validation'; it has train, test"):
        list(read_rows(tmp_path / "dict", split="validation"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DpolabError, match=r"empty: not a dataset saved with `save_to_disk`"):
        list(read_rows(tmp_path / "empty"))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DpolabError, match=r"^.*missing\.jsonl: no such file$"):
        list(read_rows(tmp_path / "missing.jsonl"))
    with pytest.raises(DpolabError, match=r"DATA\.JSONL: no such file"):  # not taken for a hub id
        list(read_rows("DATA.JSONL"))
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(
        DpolabError, match=r"d\.csv: unknown file type '\.csv'; use one of \.jsonl, \.json, \.parquet"
    ):
        list(read_rows(tmp_path / "d.csv"))


def test_hub_id_that_cannot_be_loaded_offline_names_it():
    assert not looks_like_path("no-such-org/no-such-dataset")
    with pytest.raises(DpolabError) as err:
        list(read_rows("no-such-org/no-such-dataset", split="validation"))
    assert str(err.value).startswith(
        "no-such-org/no-such-dataset: not a local file, and loading it as a hub dataset (split 'validation') failed: "
    )
    with pytest.raises(
        DpolabError, match=r"^no-such-org/arc:ARC-Challenge: .*\(split 'train', config 'ARC-Challenge'\)"
    ):
        list(read_rows("no-such-org/arc:ARC-Challenge"))


def test_write_jsonl_atomic_round_trip(tmp_path):
    records = [{"prompt": "p", "chosen": "ü", "rejected": "r"}, {"n": [1, 2]}]
    assert write_jsonl_atomic(tmp_path / "sub" / "out.jsonl", records) == 2
    assert (tmp_path / "sub" / "out.jsonl").read_text(encoding="utf-8").splitlines() == [
        '{"prompt": "p", "chosen": "ü", "rejected": "r"}',
        '{"n": [1, 2]}',
    ]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_no_half_file(tmp_path, interruption):
    def records():
        for i in range(5):
            if i == 3:
                raise interruption()
            yield {"i": i}

    out = tmp_path / "out.jsonl"
    with pytest.raises(interruption):
        write_jsonl_atomic(out, records())
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    out.write_text('{"old": true}\n')
    with pytest.raises(interruption):
        write_jsonl_atomic(out, records())
    assert (
        list(tmp_path.iterdir()) == [out] and out.read_text() == '{"old": true}\n'
    )  # the old file is intact


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_permissions_open_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_jsonl_atomic(tmp_path / "a.jsonl", [{"a": 1}])
        write_json_atomic(tmp_path / "b.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("x")  # what open(path, "w") gives
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.jsonl": mode, "b.json": mode, "plain.txt": mode}


def test_output_that_cannot_be_written_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(DpolabError) as err:
        write_jsonl_atomic(tmp_path / "file" / "out.jsonl", [{"a": 1}])  # its folder is a file
    assert str(err.value).startswith(f"{tmp_path / 'file' / 'out.jsonl'}: cannot write this file: ")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DpolabError, match=r"folder: is a folder; give the name of the file to write$"):
        write_json_atomic(tmp_path / "folder", {})

    def no_rename(src, dst):
        raise PermissionError(13, "Permission denied", str(src), str(dst))

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(DpolabError) as err:
        write_jsonl_atomic(tmp_path / "out.jsonl", [{"a": 1}])
    assert str(err.value) == f"{tmp_path / 'out.jsonl'}: cannot write this file: Permission denied"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # no temporary left


def test_an_error_reading_the_input_is_not_blamed_on_the_output(tmp_path):
    def records():
        yield {"a": 1}
        raise PermissionError(13, "Permission denied", "input.jsonl")

    with pytest.raises(PermissionError):
        write_jsonl_atomic(tmp_path / "out.jsonl", records())
    assert list(tmp_path.iterdir()) == []


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    elements=st.lists(
        st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=4) | JSON_VALUES, max_size=6
    ),
    indent=st.sampled_from([None, 1, 4]),
    chunk=st.integers(1, 40),
)
def test_a_json_list_read_in_chunks_gives_what_json_loads_gives(tmp_path_factory, elements, indent, chunk):
    """Element by element, whatever the chunk boundaries cut (a number, a string, an escape)."""
    import dpolab.data.json_list as json_list

    path = tmp_path_factory.mktemp("chunks") / "list.json"
    path.write_text(json.dumps(elements, indent=indent), encoding="utf-8")
    old, json_list._CHUNK = json_list._CHUNK, chunk
    try:
        rows = list(read_rows(path))
        texts = list(read_rows(path, parse=False))
    finally:
        json_list._CHUNK = old
    expected = [
        Row(i, e) if isinstance(e, dict) else Row(i, None, f"not a JSON object but {type(e).__name__}")
        for i, e in enumerate(elements, start=1)
    ]
    assert rows == expected
    assert [json.loads(r.text) for r in texts] == elements and [r.number for r in texts] == [
        r.number for r in rows
    ]


def test_a_broken_json_list_names_line_and_column_across_chunks(tmp_path, monkeypatch):
    import dpolab.data.json_list as json_list

    monkeypatch.setattr(json_list, "_CHUNK", 3)
    (tmp_path / "broken.json").write_text('[{"a": 1},\n {"a": 2}\n {"a": 3}]')
    with pytest.raises(
        DpolabError, match=r"broken\.json: not valid JSON \(Expecting ',' delimiter at line 3, column 2\)"
    ):
        list(read_rows(tmp_path / "broken.json"))
    (tmp_path / "extra.json").write_text('[\n {"a": 1}\n]\n\n  x')
    with pytest.raises(DpolabError, match=r"extra\.json: not valid JSON \(Extra data at line 5, column 3\)"):
        list(read_rows(tmp_path / "extra.json"))


def test_a_large_json_list_is_read_without_holding_it(tmp_path, monkeypatch):
    """A MetaMathQA-shaped list (pretty-printed, as the real file is): the rows come one at a time,
    and what the reader holds at once is a chunk of the text (64 KiB here), not the file."""
    import tracemalloc

    import dpolab.data.json_list as json_list

    monkeypatch.setattr(json_list, "_CHUNK", 1 << 16)

    row = {
        "query": "Natalia sold clips to 48 of her friends. " * 3,
        "response": "48/2 = 24\nThe answer is: 72",
        "type": "GSM",
    }
    path = tmp_path / "MetaMathQA.json"
    path.write_text(json.dumps([row] * 20_000, indent=1), encoding="utf-8")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for r in read_rows(path) if r.record == row)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000 and size > 4_000_000
    assert peak < size / 4, peak  # the whole list as Python objects would be several times the file
