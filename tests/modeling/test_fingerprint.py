"""`model_fingerprint`, the key of the precomputed reference cache and of the judges' verdict
caches: it follows every change of the weights it stands for, in a local folder (a file saved
again, a change between the hashed ends, an adapter's base) and on the hub (the commit the local
hub cache resolves the id to), and stays the same while nothing changed."""

from __future__ import annotations

import json
import os
import time

import pytest

from dpolab.modeling.fingerprint import hub_revision, model_fingerprint
from dpolab.testing import tiny_config

MIB = 1 << 20


def _resave(path, data: bytes) -> None:
    """Write `data` to `path` as a new save would, and make sure the clock has moved on (a file
    system keeps times to a few milliseconds at worst)."""
    before = path.stat().st_mtime_ns
    while True:
        time.sleep(0.01)
        path.write_bytes(data)
        if path.stat().st_mtime_ns != before:
            return


def test_a_weight_file_saved_again_gets_a_new_key_and_other_files_do_not(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"weights v1")
    first = model_fingerprint(str(tmp_path))
    assert first["path"] == str(tmp_path.resolve())
    (tmp_path / "README.md").write_text("notes")  # not a file the log-probs depend on
    assert model_fingerprint(str(tmp_path)) == first
    # the same bytes saved again (a retrained model that happens to match, or a re-export): the
    # key errs on the safe side and changes with the file's time
    _resave(tmp_path / "model.safetensors", b"weights v1")
    second = model_fingerprint(str(tmp_path))
    assert second != first
    _resave(tmp_path / "model.safetensors", b"weights v2")  # same size, other bytes
    assert model_fingerprint(str(tmp_path)) not in (first, second)


def test_a_weight_file_saved_again_with_a_change_in_its_middle_gets_a_new_key(tmp_path):
    """The key hashes only the first and last MiB of each weight file (hashing multi-GB files
    whole on every run is too slow); a change between them is caught by the file's new time."""
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    weights = bytearray(os.urandom(3 * MIB))
    (tmp_path / "model.safetensors").write_bytes(bytes(weights))
    first = model_fingerprint(str(tmp_path))
    assert model_fingerprint(str(tmp_path)) == first  # nothing changed: the cache serves

    weights[len(weights) // 2] ^= 0xFF  # same size, same first and last MiB
    _resave(tmp_path / "model.safetensors", bytes(weights))
    assert model_fingerprint(str(tmp_path)) != first


def test_an_adapter_folder_key_covers_its_base_model(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"base weights")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 4}))
    (adapter / "adapter_model.safetensors").write_bytes(b"adapter weights")
    first = model_fingerprint(str(adapter))
    assert model_fingerprint(str(adapter)) == first

    _resave(base / "model.safetensors", b"BASE weights")  # the adapter folder is untouched
    second = model_fingerprint(str(adapter))
    assert second != first

    _resave(
        adapter / "adapter_config.json", json.dumps({"base_model_name_or_path": str(base), "r": 8}).encode()
    )
    assert model_fingerprint(str(adapter)) != second


# -- hub ids, through a local hub cache built in the test ------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache under tmp_path, where huggingface_hub and transformers look, offline.

    huggingface_hub reads HF_HUB_CACHE / HF_HOME once, when it is first imported, into
    `constants.HF_HUB_CACHE` (and HF_HUB_OFFLINE into `constants.HF_HUB_OFFLINE`); the variables
    alone, set now, would move nothing. `try_to_load_from_cache` (so `hub_revision`) and
    transformers' `cached_file` read the constants at call time: patching them moves both."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # so that "org/name" is no local folder
    return cache


def put_in_hub_cache(cache, repo_id: str, commit: str, hidden_size: int) -> None:
    """The layout `from_pretrained` leaves: models--org--name/refs/main holding the commit, and
    snapshots/<commit>/ with the files (real files here; links to blobs/ in a real cache)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    config = tiny_config("llama", vocab_size=64, hidden_size=hidden_size, num_layers=1)
    (snapshot / "config.json").write_text(config.to_json_string())
    (snapshot / "model.safetensors").write_bytes(f"weights of {commit}".encode())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_model_updated_in_the_cache_gets_a_new_key(hub_cache):
    from transformers import AutoConfig

    old, new = "a" * 40, "b" * 40
    put_in_hub_cache(hub_cache, "org/name", old, hidden_size=16)
    first = model_fingerprint("org/name")
    assert first["hub_id"] == "org/name" and first["revision"] == old and "files" in first
    assert model_fingerprint("org/name") == first  # nothing changed: the cache serves
    assert AutoConfig.from_pretrained("org/name").hidden_size == 16  # the loader sees the same cache

    put_in_hub_cache(hub_cache, "org/name", new, hidden_size=24)  # refs/main moves to a new commit
    second = model_fingerprint("org/name")
    assert second["revision"] == new and second != first
    assert AutoConfig.from_pretrained("org/name").hidden_size == 24  # what would be loaded now

    (hub_cache / "models--org--name" / "refs" / "main").write_text(old)  # back to the old commit
    assert model_fingerprint("org/name") == first


def test_a_hub_id_the_cache_does_not_hold(hub_cache):
    assert hub_revision("org/absent") == (None, None)
    assert model_fingerprint("org/absent") == {"hub_id": "org/absent", "revision": None}
    assert hub_revision("not a valid/repo id!") == (None, None)
