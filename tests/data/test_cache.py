"""The data cache: a second run reads what the first prepared; a changed file, tokenizer, chat
template, setting or stage never reuses an entry; a damaged entry is prepared again, never used;
a full disk is one line and leaves no partial entry."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpolab.config.schema import DataSection
from dpolab.data import cache
from dpolab.data.prepare import NOT_IN_KEY, cache_settings, prepare_data
from dpolab.data.tokenize import tokenize_pair, tokenize_sft
from dpolab.errors import DpolabError
from dpolab.testing import build_tokenizer

from .helpers import FIXTURES, write_jsonl

UF = str(FIXTURES / "ultrafeedback_binarized_train_prefs.jsonl")


def _pairs(n: int, tag: str = "") -> list[dict]:
    return [
        {
            "prompt": f"Question {i}{tag}: what is {i} + {i}?",
            "chosen": f" {2 * i}",
            "rejected": f" {2 * i + 1}",
        }
        for i in range(n)
    ]


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", [*_pairs(12), {"prompt": "p", "rejected": "r"}])


def _data(path, tmp_path, **values) -> DataSection:
    return DataSection(train=str(path), cache_dir=str(tmp_path / "cache"), on_bad_rows="skip", **values)


def _prepare(data, tokenizer, **kwargs):
    return prepare_data(data, tokenizer, tokenize=kwargs.pop("tokenize", tokenize_pair), **kwargs)


def _rows(dataset) -> list[dict]:
    return [dict(row) for row in dataset]


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_second_run_reads_the_pairs_the_first_cached(pairs_file, tmp_path, tokenizer):
    data = _data(pairs_file, tmp_path, eval_size=3)
    first = _prepare(data, tokenizer)
    entry = first.cache
    written = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    second = _prepare(data, tokenizer)
    assert (first.from_cache, second.from_cache) == (False, True) and second.cache == entry
    assert _rows(second.train) == _rows(first.train) and _rows(second.eval) == _rows(first.eval)
    assert [r.to_dict() for r in second.reports] == [r.to_dict() for r in first.reports]
    assert second.reports[0].skipped[0].row == 13  # the bad row is still reported from the cache
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == written  # read, not written again
    assert _entries(entry.parent) == [entry.name]  # one entry, no temporary folder left
    # the pairs are read from the entry's files, memory-mapped, not copied into memory
    assert {Path(f["filename"]).parent for f in second.train.cache_files} == {entry}


def test_a_changed_file_is_prepared_again_even_with_its_size_and_time(pairs_file, tmp_path, tokenizer):
    data = _data(pairs_file, tmp_path)
    first = _prepare(data, tokenizer)
    stat = pairs_file.stat()
    pairs_file.write_text(pairs_file.read_text().replace("Question 3:", "Question 8:"))  # same size
    os.utime(pairs_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = _prepare(data, tokenizer)
    assert not second.from_cache and second.cache != first.cache
    assert _rows(second.train)[3] != _rows(first.train)[3] and _rows(second.train)[4] == _rows(first.train)[4]


# a value other than the default for every data setting (paths that exist, so no hub lookup)
OTHER = {
    "train": str(FIXTURES / "hh_rlhf_train.jsonl"),
    "split": "validation",
    "eval": UF,
    "eval_split": "validation",
    "eval_size": 0.25,
    "mix_strategy": "interleave_over",
    "builder": "arc",
    "source": str(FIXTURES / "arc_challenge_train.jsonl"),
    "format": "standard",
    "max_length": 77,
    "max_prompt_length": 33,
    "on_bad_rows": "skip",
    "limit": 5,
    "columns": {"prompt": "question"},
}


def test_every_data_setting_is_in_the_key_and_only_those(pairs_file, tokenizer):
    fields = {f.name for f in dataclasses.fields(DataSection)}
    assert set(OTHER) == fields - set(NOT_IN_KEY)  # a new setting must be added here
    base = DataSection(train=str(pairs_file))

    def key(data, **kwargs):
        kwargs = {"tokenize": tokenize_pair, "seed": 1, "mix_seed": 1, **kwargs}
        return cache.key_of(cache_settings(data, tokenizer, **kwargs))

    keys = {name: key(dataclasses.replace(base, **{name: value})) for name, value in OTHER.items()}
    assert len(set(keys.values()) | {key(base)}) == len(OTHER) + 1
    # how the pairs are prepared is not what they are
    assert key(dataclasses.replace(base, num_proc=3, cache_dir="/elsewhere")) == key(base)
    # the stage: SFT tokenises the chosen completion only
    assert key(base, tokenize=tokenize_sft) != key(base)
    # a seed counts only where it draws: the hold-out, a weighted mixture, MetaMath's corruption
    assert key(base, seed=2, mix_seed=2) == key(base)
    held = dataclasses.replace(base, eval_size=0.25)
    assert key(held, seed=2) != key(held) and key(held, mix_seed=2) == key(held)
    mixture = dataclasses.replace(
        base, train=[{"path": str(pairs_file), "weight": 1}, {"path": UF, "weight": 2}]
    )
    assert key(mixture, mix_seed=2) != key(mixture) and key(mixture, seed=2) == key(mixture)


def test_the_tokenizer_counts_by_its_content_not_its_name(pairs_file, tmp_path):
    from transformers import AutoTokenizer

    data = _data(pairs_file, tmp_path)
    folder, copy = tmp_path / "tokenizer", tmp_path / "same-tokenizer-elsewhere"
    build_tokenizer().save_pretrained(folder)
    build_tokenizer().save_pretrained(copy)
    first = _prepare(data, AutoTokenizer.from_pretrained(folder))
    assert _prepare(data, AutoTokenizer.from_pretrained(copy)).from_cache  # the same tokenizer
    other = build_tokenizer(
        ["a different corpus gives different merges " * 3, "and so other ids"], vocab_size=280
    )
    other.save_pretrained(folder)  # another tokenizer under the same name
    second = _prepare(data, AutoTokenizer.from_pretrained(folder))
    assert not second.from_cache and _rows(second.train) != _rows(first.train)


def test_a_changed_chat_template_is_prepared_again(tmp_path):
    data = DataSection(train=UF, cache_dir=str(tmp_path / "cache"))
    tokenizer = build_tokenizer()
    first = _prepare(data, tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace("<|", "<<|")
    second = _prepare(data, tokenizer)
    assert not second.from_cache and _rows(second.train) != _rows(first.train)


@pytest.mark.parametrize(
    "damage",
    ["cut short", "one byte changed", "meta.json removed", "meta.json not JSON", "eval.arrow removed"],
)
def test_a_damaged_entry_is_prepared_again_with_a_warning(damage, pairs_file, tmp_path, tokenizer, caplog):
    data = _data(pairs_file, tmp_path, eval_size=3)
    entry = _prepare(data, tokenizer).cache
    train = entry / "train.arrow"
    if damage == "cut short":
        train.write_bytes(train.read_bytes()[:-100])
    elif damage == "one byte changed":
        raw = bytearray(train.read_bytes())
        raw[len(raw) // 2] ^= 1
        train.write_bytes(bytes(raw))
    elif damage == "meta.json removed":
        (entry / "meta.json").unlink()
    elif damage == "meta.json not JSON":
        (entry / "meta.json").write_text("{")
    else:
        (entry / "eval.arrow").unlink()
    with caplog.at_level(logging.WARNING, logger="dpolab"):
        again = _prepare(data, tokenizer)
    assert not again.from_cache and again.cache == entry
    assert f"data cache: {entry} is damaged" in caplog.text and "preparing the data again" in caplog.text
    naive = _prepare(_data(pairs_file, tmp_path / "fresh", eval_size=3), tokenizer)
    assert _rows(again.train) == _rows(naive.train) and _rows(again.eval) == _rows(naive.eval)
    assert _prepare(data, tokenizer).from_cache and _entries(entry.parent) == [entry.name]


def test_a_failed_preparation_leaves_nothing(pairs_file, tmp_path, tokenizer):
    """A bad row of the eval file stops the run after the training pairs were prepared."""
    bad = write_jsonl(tmp_path / "eval.jsonl", [*_pairs(2), {"prompt": "p", "chosen": "c"}])
    data = DataSection(
        train=str(pairs_file), eval=str(bad), cache_dir=str(tmp_path / "cache"), on_bad_rows="error"
    )
    with pytest.raises(DpolabError, match=r"eval\.jsonl, row 3, field 'rejected': missing"):
        _prepare(
            dataclasses.replace(data, train=str(write_jsonl(tmp_path / "t.jsonl", _pairs(5)))), tokenizer
        )
    assert _entries(tmp_path / "cache") == []


def test_other_processes_read_the_cache_and_never_prepare(pairs_file, tmp_path, tokenizer):
    data = _data(pairs_file, tmp_path)
    with pytest.raises(DpolabError, match="the main process did not prepare the data"):
        _prepare(data, tokenizer, build=False)
    assert _entries(tmp_path / "cache") == []
    _prepare(data, tokenizer)
    assert _prepare(data, tokenizer, build=False).from_cache


def test_an_entry_another_process_finished_first_is_used(tmp_path):
    import pyarrow as pa

    folder = tmp_path / "cache" / "k"

    def build(into: Path, label: str, meanwhile=None) -> dict:
        table = pa.table({"by": [label]})
        with (
            pa.OSFile(str(into / "train.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
        if meanwhile:
            meanwhile()  # another process writes the same entry and renames it into place first
        return {"pairs": {"train.arrow": 1}}

    def first():
        cache.write_entry(folder, lambda into: build(into, "first"), {})

    entry = cache.write_entry(folder, lambda into: build(into, "late", first), {})
    assert entry.train["by"] == ["first"] and _entries(folder.parent) == ["k"]


def test_where_the_cache_lives(tmp_path, monkeypatch, pairs_file, tokenizer):
    monkeypatch.setenv("DPOLAB_CACHE", str(tmp_path / "all-caches"))
    assert cache.default_cache_dir() == tmp_path / "all-caches" / "data"
    prepared = _prepare(DataSection(train=str(pairs_file), on_bad_rows="skip"), tokenizer)
    assert prepared.cache.parent == tmp_path / "all-caches" / "data"
    moved = _prepare(
        DataSection(train=str(pairs_file), on_bad_rows="skip", cache_dir=str(tmp_path / "moved")), tokenizer
    )
    assert moved.cache.parent == tmp_path / "moved" and not moved.from_cache


@pytest.fixture
def small_disk(tmp_path):
    """A real 300 KiB file system (tmpfs), for a cache that fills it; skipped where mounting is not allowed."""
    if sys.platform != "linux":
        pytest.skip("tmpfs is Linux's")
    folder = tmp_path / "small-disk"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_naming_the_entry_and_leaves_nothing(small_disk, tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "many.jsonl", _pairs(3000, tag=" with a few more words to tokenise"))
    data = DataSection(train=str(path), cache_dir=str(small_disk))
    with pytest.raises(DpolabError) as err:
        _prepare(data, tokenizer)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{small_disk}/")
    assert (
        ": cannot write the data cache: No space left on device (free space there, or set data.cache_dir"
        in message
    )
    assert _entries(small_disk) == []  # no entry, no temporary folder


def test_a_cache_folder_that_cannot_be_made_is_one_line(pairs_file, tmp_path, tokenizer):
    (tmp_path / "a-file").write_text("")
    data = DataSection(
        train=str(pairs_file), on_bad_rows="skip", cache_dir=str(tmp_path / "a-file" / "cache")
    )
    with pytest.raises(DpolabError) as err:
        _prepare(data, tokenizer)
    assert str(err.value).startswith(f"{tmp_path / 'a-file' / 'cache'}/")
    assert str(err.value).endswith(
        ": cannot write the data cache: Not a directory (set data.cache_dir or DPOLAB_CACHE to a folder you can write)"
    )
