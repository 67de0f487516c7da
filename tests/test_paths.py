"""A mistyped local model folder is told from a hub id before the hub is asked (which retries for
half a minute before it fails)."""

from __future__ import annotations

import pytest

from dpolab.paths import missing_local_path


@pytest.fixture
def here(tmp_path, monkeypatch):
    (tmp_path / "demo-out" / "base-model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_existing_folders_and_hub_ids_pass(here):
    assert missing_local_path("demo-out/base-model") is None
    assert missing_local_path("EleutherAI/pythia-410m") is None  # org/name, no such folder here
    assert missing_local_path("gpt2") is None


def test_a_typo_under_a_local_folder_is_caught_with_a_suggestion(here):
    message = missing_local_path("demo-out/base-modl")
    assert message.startswith("no such folder; did you mean 'demo-out/base-model'?")
    assert str(here) in message  # where relative paths are read from


@pytest.mark.parametrize("name", ["./nothing", "/no/such/dir", "~/no-such-dpolab-dir", "a/b/c"])
def test_names_that_can_only_be_paths(here, name):
    assert missing_local_path(name).startswith("no such folder")
