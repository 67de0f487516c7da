"""Writes on a disk that really fills up (a small tmpfs): an append is cut back off, an atomic write
leaves the old file, and each ends in one line naming the path and the space needed."""

from __future__ import annotations

import json

import pytest
import torch

from dpolab.data.io import write_json_atomic, write_jsonl_atomic
from dpolab.errors import DpolabError
from dpolab.storage import append_text, format_size, is_disk_full

PAGE = 4096  # tmpfs gives space by the page


def test_format_size():
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30, 2**50)] == [
        "0 bytes",
        "1023 bytes",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
        "1048576.0 GiB",
    ]


def test_append_on_a_full_disk_is_cut_back_off(small_disk):
    disk = small_disk("64k")
    path = disk.path / "log.jsonl"
    first = "".join(json.dumps({"i": i, "pad": "x" * 90}) + "\n" for i in range(36))
    append_text(path, first)
    assert PAGE - 200 < len(first) < PAGE  # the file's one page has room for the start of a line
    disk.fill()
    line = json.dumps({"i": 36, "pad": "y" * 300}) + "\n"  # its end needs a page there is none of
    with pytest.raises(DpolabError) as err:
        append_text(path, line, what="the next line", then="the lines before it are kept")
    assert path.read_text() == first  # the part that fit in the page was cut back off
    assert str(err.value) == (
        f"{path}: no space left on device: the next line needs {len(line)} bytes, 0 bytes free there; "
        f"the lines before it are kept"
    )


@pytest.mark.parametrize("write", ["json", "jsonl"])
def test_atomic_write_on_a_full_disk_keeps_the_old_file(small_disk, write):
    disk = small_disk("64k")
    path = disk.path / f"out.{write}"
    write_json_atomic(path, {"old": 1}) if write == "json" else write_jsonl_atomic(path, [{"old": 1}])
    old = path.read_bytes()
    disk.fill()
    new = [{"new": "x" * 3000}] * 4
    with pytest.raises(DpolabError) as err:
        write_json_atomic(path, new) if write == "json" else write_jsonl_atomic(path, iter(new))
    assert path.read_bytes() == old
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler", path.name]  # no temporary left
    message = str(err.value)
    assert message.startswith(f"{path}: no space left on device: writing it needs ")
    assert message.endswith(", 0 bytes free there; the file was left as it was")
    if write == "json":  # one write of a known size: exactly what the file needs
        size = len(json.dumps(new, indent=2) + "\n")
        assert f"writing it needs {format_size(size)}, " in message
    else:  # rows written as they come: at least what was handed over before the disk filled
        assert "writing it needs at least " in message


def test_torch_save_to_a_path_on_a_full_disk_counts_as_a_full_disk(small_disk, tmp_path):
    disk = small_disk("256k")
    disk.fill()
    with pytest.raises(RuntimeError) as err:  # torch says only "unexpected pos N vs M"
        torch.save(torch.zeros(10_000), disk.path / "x.pt")
    assert "No space left" not in str(err.value)
    assert is_disk_full(err.value, disk.path)
    assert not is_disk_full(err.value)  # without the folder it wrote in, it cannot be told
    assert not is_disk_full(RuntimeError(str(err.value)), tmp_path)  # a disk with room
    assert is_disk_full(OSError(28, "No space left on device"))
