"""Two CPU processes (torchrun, gloo) train as one process does with the same global batch, and
precompute the same reference log-probs; under FSDP2 the layer-wise log-probs are the unsharded ones.

The global batch of 4 pairs is split 2 + 2 across the processes: DDP averages the two halves'
gradients, which is the gradient of the mean over all 4, and the logged metrics are reduced over
both processes; so every logged figure must equal the single process's, up to float rounding.
The eval set of 7 pairs does not split evenly: accelerate repeats a pair to even out the last
batch, and the eval metrics must not count it (so they, and the step early stopping keeps, equal
the single process's).
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
from dpolab.training.reference_cache import read_cache_entry

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
        "data": {"train": str(data), "eval": str(tmp_path / "eval.jsonl")},
        "loss": {"method": "dpo", "beta": 0.5, "intermediate": {"layers": [2]}},
        "reference": {"precompute": True, "cache_dir": str(cache), "batch_size": 4},
        "training": {
            "output_dir": str(out),
            "per_device_train_batch_size": batch,
            "max_steps": 3,
            "logging_steps": 1,
            "eval_steps": 1,
            "per_device_eval_batch_size": 2,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
            "seed": 0,
            "use_cpu": True,
        },
        "early_stopping": {"patience": 2},
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
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:7]), encoding="utf-8")

    # two processes, 2 pairs each
    values = _values(tmp_path, model_dir, data, out=tmp_path / "two", cache=tmp_path / "cache-two", batch=2)
    config = tmp_path / "two.yaml"
    config.write_text(json.dumps(values), encoding="utf-8")  # JSON is YAML
    done = _torchrun(["-m", "dpolab", "train", str(config)], HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # one process, 4 pairs
    one_summary = run(
        config_from_dict(
            _values(tmp_path, model_dir, data, out=tmp_path / "one", cache=tmp_path / "cache-one", batch=4)
        )
    )
    two_summary = json.loads((tmp_path / "two" / "summary.json").read_text())

    two_caches = sorted((tmp_path / "cache-two").glob("*.pt"))
    one_caches = sorted((tmp_path / "cache-one").glob("*.pt"))
    # the same keys (same model, pairs, layers), one entry for the train pairs and one for eval
    assert [p.name for p in two_caches] == [p.name for p in one_caches] and len(one_caches) == 2
    for two_cache, one_cache in zip(two_caches, one_caches):
        two_values, one_values = read_cache_entry(two_cache), read_cache_entry(one_cache)
        assert two_values.shape in ((len(ROWS), 2, 2), (7, 2, 2))  # pairs, layers [2, 4], [chosen, rejected]
        torch.testing.assert_close(two_values, one_values, rtol=0, atol=1e-6)

    two, one = _lines(tmp_path / "two"), _lines(tmp_path / "one")
    assert [(x["step"], x["split"]) for x in two] == [(x["step"], x["split"]) for x in one]
    assert [x["step"] for x in one if x["split"] == "train"] == [1, 2, 3]
    assert [x["step"] for x in one if x["split"] == "eval"] == [1, 2, 3]
    timings = ("runtime", "per_second")
    for a, b in zip(two, one):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float) and not key.endswith(timings):
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (a["step"], a["split"], key)
    # the eval pairs are counted once: 7 of them, 2 per batch and process, give fractions of 1/7
    accuracies = [x["rewards/accuracies"] for x in one if x["split"] == "eval"]
    assert all(abs(a * 7 - round(a * 7)) < 1e-6 for a in accuracies)
    assert two_summary["best_metric"] == pytest.approx(one_summary["best_metric"], rel=1e-6)
    assert Path(two_summary["best_checkpoint"]).name == Path(one_summary["best_checkpoint"]).name
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


@pytest.mark.slow
def test_only_the_main_process_prepares_the_data_the_other_reads_it(tmp_path, tokenizer):
    """Under torchrun the main process prepares (here: from nothing cached) while the other waits,
    then reads the entry it cached: the same pairs, and no second preparation."""
    model_dir = tmp_path / "model"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "cache_dir": str(tmp_path / "cache"), "num_proc": 2},
        "training": {"output_dir": str(tmp_path / "out"), "use_cpu": True, "disable_tqdm": True},
    }
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(values), encoding="utf-8")
    done = _torchrun([str(Path(__file__).with_name("data_worker.py")), str(config)], HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = sorted(
        (
            json.loads(line.removeprefix("data "))
            for line in done.stdout.splitlines()
            if line.startswith("data ")
        ),
        key=lambda r: r["rank"],
    )
    assert [(r["rank"], r["from_cache"]) for r in records] == [(0, False), (1, True)]
    assert records[0]["cache"] == records[1]["cache"] and records[0]["train"] == records[1]["train"]
    assert len(records[0]["train"]) == len(ROWS)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(records[0]["cache"]).name]
