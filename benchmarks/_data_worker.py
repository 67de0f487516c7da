"""One run of benchmarks/data_prep.py in its own process: `python _data_worker.py SPEC.json RESULT.json`.

- `dpolab`: `dpolab train` as a user runs it (the run's `prepare`, then one training step);
- `trl`: TRL's way, `load_dataset("json", ...)` and `DPOTrainer` (whose `__init__` prepares the
  data), then one training step;
- `prepare`: dpolab's data preparation alone (`prepare_data`), for its memory at several sizes.

Records the wall-clock time (epoch seconds, for the parent to subtract its start time) at the end
of the first training step, the seconds the data preparation took, the tokens it produced
(prompt + chosen + rejected ids of every pair) and this process's peak resident memory (`VmHWM`);
the parent samples the memory of this process and its children (`datasets.map` workers).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def first_step_callback(record: dict):
    from transformers import TrainerCallback

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record.setdefault("first_step_end_epoch", time.time())

    return FirstStep()


def _tokens(dataset) -> int:
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    return sum(
        int(pc.sum(pc.list_value_length(table[k])).as_py() or 0)
        for k in ("prompt_ids", "chosen_ids", "rejected_ids")
    )


def _dpolab_values(spec: dict) -> dict:
    return {
        "model": {"name_or_path": spec["model"]},
        "data": {
            "train": spec["data"],
            "num_proc": spec["num_proc"],
            "cache_dir": spec["cache_dir"],
            "max_length": 1024,
            "max_prompt_length": None,  # TRL 1.16 has no prompt truncation
        },
        "training": {
            "output_dir": str(Path(spec["workdir"]) / "run"),
            "per_device_train_batch_size": spec["batch"],
            "max_steps": 1,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "use_cpu": True,
            "seed": 0,
        },
    }


def run_dpolab(spec: dict, record: dict) -> None:
    import importlib

    from dpolab.training import build_trainer, config_from_dict, prepare

    run_module = importlib.import_module("dpolab.training.run")  # the module, not the function `run`

    prepare_data = run_module.prepare_data

    def timed(*args, **kwargs):  # the data preparation alone, inside the run's `prepare`
        start = time.perf_counter()
        prepared = prepare_data(*args, **kwargs)
        record["prepare_s"] = time.perf_counter() - start
        record["from_cache"] = prepared.from_cache
        return prepared

    run_module.prepare_data = timed
    prepared = prepare(config_from_dict(_dpolab_values(spec)))
    record["pairs"] = len(prepared.data.train)
    record["tokens"] = _tokens(prepared.data.train)
    trainer = build_trainer(prepared, callbacks=(first_step_callback(record),))
    trainer.train()


def run_trl(spec: dict, record: dict) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    args = DPOConfig(
        output_dir=str(Path(spec["workdir"]) / "run"),
        per_device_train_batch_size=spec["batch"],
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        max_length=1024,
        gradient_checkpointing=False,
        dataset_num_proc=spec["num_proc"],
    )
    start = time.perf_counter()
    data = load_dataset("json", data_files=spec["data"], split="train")
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[first_step_callback(record)],
    )
    record["prepare_s"] = time.perf_counter() - start  # reading the file + TRL's `_prepare_dataset`
    record["pairs"] = len(trainer.train_dataset)
    record["tokens"] = _tokens(trainer.train_dataset)
    trainer.train()


def run_prepare(spec: dict, record: dict) -> None:
    from dpolab.data.prepare import prepare_data
    from dpolab.modeling.loading import load_tokenizer
    from dpolab.training import PREFERENCE, config_from_dict

    config = config_from_dict(_dpolab_values(spec))
    tokenizer = load_tokenizer(spec["model"])
    start = time.perf_counter()
    prepared = prepare_data(config.data, tokenizer, tokenize=PREFERENCE.tokenize)
    record["prepare_s"] = time.perf_counter() - start
    record["from_cache"] = prepared.from_cache
    record["pairs"] = len(prepared.train)
    record["tokens"] = _tokens(prepared.train)


def main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    record: dict = {"spec": spec}
    {"dpolab": run_dpolab, "trl": run_trl, "prepare": run_prepare}[spec["impl"]](spec, record)
    record["end_epoch"] = time.time()
    record["peak_rss_main_mib"] = peak_rss_mib()
    Path(result_path).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
