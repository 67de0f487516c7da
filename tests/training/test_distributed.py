"""Two CPU processes (torchrun, gloo) train as one process does with the same global batch, and
precompute the same reference log-probs; under FSDP2 the layer-wise log-probs are the unsharded ones.

The global batch of 4 pairs is split 2 + 2 across the processes: DDP averages the two halves'
gradients, which is the gradient of the mean over all 4, and the logged metrics are reduced over
both processes; so every logged figure must equal the single process's, up to float rounding.
Under two processes each computes every other batch of the reference log-probs (the batches a
single process forms) and both receive all of them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpolab.testing import tiny_model
from dpolab.training import config_from_dict, run

SRC = Path(__file__).resolve().parents[2] / "src"

ROWS = [
    {
        "prompt": f"Question {i}: {i} + {i + 1} = ?",
        "chosen": f" Answer: {2 * i + 1}",
        "rejected": f" Answer: {i}{' maybe' * (i % 3)}",
    }
    for i in range(12)
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], **env) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 ARGS` on 127.0.0.1, one thread per process, this checkout's code."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _values(tmp_path, model_dir, data, *, out, cache, batch):
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data)},
        "loss": {"method": "dpo", "beta": 0.5, "intermediate": {"layers": [2]}},
        "reference": {"precompute": True, "cache_dir": str(cache), "batch_size": 4},
        "training": {
            "output_dir": str(out),
            "per_device_train_batch_size": batch,
            "max_steps": 3,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
            "seed": 0,
            "use_cpu": True,
        },
    }


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, tokenizer):
    model_dir = tmp_path / "model"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")

    # two processes, 2 pairs each
    values = _values(tmp_path, model_dir, data, out=tmp_path / "two", cache=tmp_path / "cache-two", batch=2)
    config = tmp_path / "two.yaml"
    config.write_text(json.dumps(values), encoding="utf-8")  # JSON is YAML
    done = _torchrun(["-m", "dpolab", "train", str(config)], HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # one process, 4 pairs
    run(
        config_from_dict(
            _values(tmp_path, model_dir, data, out=tmp_path / "one", cache=tmp_path / "cache-one", batch=4)
        )
    )

    (two_cache,), (one_cache,) = (tmp_path / "cache-two").glob("*.pt"), (tmp_path / "cache-one").glob("*.pt")
    assert two_cache.name == one_cache.name  # the same key: same model, pairs, layers
    two_values, one_values = torch.load(two_cache), torch.load(one_cache)
    assert two_values.shape == (len(ROWS), 2, 2)  # pairs, layers [2, 4], [chosen, rejected]
    torch.testing.assert_close(two_values, one_values, rtol=0, atol=1e-6)

    two, one = _lines(tmp_path / "two"), _lines(tmp_path / "one")
    assert [x["step"] for x in two] == [x["step"] for x in one] == [1, 2, 3]
    for a, b in zip(two, one):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (a["step"], key)
    # the run trained: the loss moved away from log 2 after the first step
    assert abs(one[-1]["loss"] - 0.693147) > 1e-3


@pytest.mark.slow
def test_fsdp2_sharded_head_gives_the_unsharded_log_probs():
    """FSDP2 on CPU (gloo), 2 processes: final and intermediate layers' log-probs and every
    parameter's gradient equal the unsharded model's, with the head in the root unit or sharded
    on its own; see tests/fsdp2_worker.py for the checks."""
    done = _torchrun([str(Path(__file__).with_name("fsdp2_worker.py"))])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fsdp2 ok" in done.stdout
