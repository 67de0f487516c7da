"""DeepSpeed ZeRO-2 and ZeRO-3 for real, on CPU: two processes (`accelerate launch` with the
shipped configs of examples/accelerate/, 2 processes, `use_cpu`, DeepSpeed's CPU accelerator with
gloo) train as one process with the same global batch.

ZeRO-2 (full fine-tuning, a frozen reference copy, intermediate layer 2) and ZeRO-3 (LoRA, the
policy with its adapters off as the reference, intermediate layer 2; the head gathered by ZeRO-3
inside its own forward): every logged figure of 3 steps of 2 + 2 pairs equals that of one process
with 4 pairs, up to float rounding, and the checkpoint holds one optimiser shard per process
(what ZeRO partitions). fp32 here: the shipped configs' `mixed_precision: bf16` is set to `no`,
so that the two runs can be compared to 1e-5 (bf16 under DeepSpeed: see docs/performance.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpolab.testing import tiny_model
from dpolab.training import config_from_dict, run

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'dpolab[deepspeed]')")

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    {
        "prompt": f"Question {i}: {i} + {i + 1} = ?",
        "chosen": f" Answer: {2 * i + 1}",
        "rejected": f" Answer: {i}",
    }
    for i in range(12)
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_config(tmp_path, name: str) -> Path:
    """The shipped config with 2 CPU processes and fp32."""
    config = yaml.safe_load((ROOT / "examples" / "accelerate" / name).read_text())
    config.update(num_processes=2, use_cpu=True, mixed_precision="no")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _values(tmp_path, model_dir, data, *, out, batch, lora):
    model = {"name_or_path": str(model_dir)}
    if lora:
        model["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    return {
        "model": model,
        "data": {"train": str(data)},
        "loss": {"method": "dpo", "beta": 0.5, "intermediate": {"layers": [2]}},
        "training": {
            "output_dir": str(out),
            "per_device_train_batch_size": batch,
            "max_steps": 3,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 3,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
            "seed": 0,
            "use_cpu": True,
        },
    }


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "accelerate_config, lora",
    [("deepspeed_zero2.yaml", False), ("deepspeed_zero3.yaml", True)],
    ids=["zero2-full", "zero3-lora"],
)
def test_two_processes_under_deepspeed_train_like_one(tmp_path, tokenizer, accelerate_config, lora):
    model_dir = tmp_path / "model"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")

    config = tmp_path / "two.yaml"
    values = _values(tmp_path, model_dir, data, out=tmp_path / "two", batch=2, lora=lora)
    config.write_text(json.dumps(values), encoding="utf-8")  # JSON is YAML
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
    }
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(_launch_config(tmp_path, accelerate_config)), "--main_process_port", str(_free_port())]
    command += ["-m", "dpolab", "train", str(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run(config_from_dict(_values(tmp_path, model_dir, data, out=tmp_path / "one", batch=4, lora=lora)))

    two, one = _lines(tmp_path / "two"), _lines(tmp_path / "one")
    assert [x["step"] for x in two] == [x["step"] for x in one] == [1, 2, 3]
    for a, b in zip(two, one):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float) and not key.endswith(("runtime", "per_second")):
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (a["step"], key)
    assert abs(one[-1]["loss"] - 0.693147) > 1e-3  # it trained
    # DeepSpeed's checkpoint: the optimiser state partitioned in one file per process
    shards = sorted(
        p.name for p in (tmp_path / "two" / "checkpoint-3" / "global_step3").glob("*optim_states.pt")
    )
    assert len(shards) == 2 and all("zero_pp_rank_" in name for name in shards), shards
