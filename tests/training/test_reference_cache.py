"""The reference cache's entries: written atomically with a checksum, checked when read; a torn or
damaged entry is computed again with a warning, never used; a full disk (a small tmpfs) ends in
one line naming the entry and its size, and leaves the other entries usable."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from dpolab.errors import DpolabError
from dpolab.storage import format_size
from dpolab.training.reference_cache import cached_reference_logps, read_cache_entry, write_cache_entry

SHAPE = (5, 2, 2)  # (pairs, layers, [chosen, rejected])


class Compute:
    """Stands in for the reference model; counts its calls."""

    def __init__(self, values):
        self.values, self.calls = values, 0

    def __call__(self):
        self.calls += 1
        return self.values.clone()


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def checksum_kept_values_changed(path):
    entry = torch.load(path, weights_only=True)
    entry["logps"][0, 0, 0] += 1.0  # as a flipped bit in the data would
    torch.save(entry, path)


def written_before_checksums(path):
    torch.save(torch.load(path, weights_only=True)["logps"], path)  # a bare tensor, as dpolab wrote it


def of_another_shape(path):
    write_cache_entry(path, torch.zeros(4, 2, 2))


DAMAGE = [
    (cut_short, "is unreadable, cut short or damaged ("),
    (checksum_kept_values_changed, "is damaged (its checksum does not match its values)"),
    (written_before_checksums, "is not an entry of this dpolab version (no checksum)"),
    (of_another_shape, "is of another shape ((4, 2, 2), expected (5, 2, 2))"),
]


@pytest.mark.parametrize("damage,reason", DAMAGE, ids=["torn", "checksum", "old", "shape"])
def test_a_damaged_entry_is_computed_again_never_used(tmp_path, caplog, damage, reason):
    values = torch.randn(SHAPE)
    compute = Compute(values)
    assert torch.equal(cached_reference_logps("k", tmp_path, compute, shape=SHAPE), values)
    assert torch.equal(cached_reference_logps("k", tmp_path, compute, shape=SHAPE), values)
    assert compute.calls == 1  # the second call read the cache

    path = tmp_path / "k.pt"
    damage(path)
    with caplog.at_level("WARNING", logger="dpolab"):
        assert torch.equal(cached_reference_logps("k", tmp_path, compute, shape=SHAPE), values)
    assert compute.calls == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(f"reference log-probs: the cache entry {path} {reason}")
    assert warning.endswith("; computing them again")
    assert torch.equal(read_cache_entry(path, SHAPE), values)  # written again, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pt"]  # no temporary left


def test_full_disk_while_caching_names_the_entry_and_keeps_the_others(small_disk):
    disk = small_disk("256k")
    cache = disk.path / "cache"
    earlier = torch.randn(SHAPE)
    cached_reference_logps("earlier", cache, Compute(earlier), shape=SHAPE)
    disk.fill()
    values = torch.randn(SHAPE)
    with pytest.raises(DpolabError) as err:
        cached_reference_logps("new", cache, Compute(values), shape=SHAPE)
    buffer = io.BytesIO()
    torch.save({"logps": values, "sha256": "0" * 64}, buffer)  # the entry's size: its checksum is as long
    assert str(err.value) == (
        f"{cache / 'new.pt'}: no space left on device: writing it needs {format_size(len(buffer.getvalue()))}, "
        f"0 bytes free there; the cache's other entries are kept (reference.cache_dir moves the cache)"
    )
    assert sorted(p.name for p in cache.iterdir()) == ["earlier.pt"]
    assert torch.equal(read_cache_entry(cache / "earlier.pt", SHAPE), earlier)
