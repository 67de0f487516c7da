"""One benchmark run in its own process: `python _worker.py SPEC.json RESULT.json`.

Trains dpolab or TRL's DPOTrainer for `steps` steps on the prepared model and data and writes
what it measured: the wall time between the ends of consecutive steps, the logged metrics of
every step, the matrix-multiply peak of this machine (measured here, before the model loads),
and resident memory (`/proc/self/status`): after the imports (the baseline), the peak before
training (loading, reference precomputation), and the peak during training (the high-water mark
is reset when training begins, `/proc/self/clear_refs`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def matmul_peak_gflops(device, dtype, *, sizes=None, seconds: float = 0.4) -> float:
    """The best GFLOP/s of square matrix products over a few sizes (best of several repeats); a GPU
    needs larger products than a CPU to reach its peak."""
    import torch

    sizes = sizes or ((4096, 8192) if device.type == "cuda" else (1024, 2048, 3072))
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        del a, b, out
    return best


def timer_callback(record: dict):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Times each step end to end (data, forward, backward, optimiser, logging) and keeps the logs."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            record["rss_train_begin_mib"] = rss_mib()
            record["peak_rss_setup_mib"] = peak_rss_mib()
            record["peak_reset"] = reset_peak_rss()
            if torch.cuda.is_available():  # on a GPU, its memory is the one that counts
                record["peak_cuda_setup_mib"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            record["start_checksum"] = _checksum(model)
            record["batch_tokens"] = []  # batches collated so far were the reference's precomputation
            record["step_ends"] = [time.perf_counter()]

        def on_step_begin(self, args, state, control, **kwargs):
            if record.get("profile_step") == state.global_step + 1:
                from torch.profiler import ProfilerActivity, profile

                self.profiler = profile(
                    activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True
                )
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            record["step_ends"].append(time.perf_counter())
            if getattr(self, "profiler", None) is not None:
                self.profiler.__exit__(None, None, None)
                record["profile"] = profile_categories(self.profiler, vocab=record["vocab"])
                self.profiler = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                record.setdefault("logs", []).append({"step": state.global_step, **logs})

        def on_train_end(self, args, state, control, **kwargs):
            record["peak_rss_train_mib"] = peak_rss_mib()
            if torch.cuda.is_available():
                record["peak_cuda_train_mib"] = torch.cuda.max_memory_allocated() / 2**20

    return StepTimer()


def record_batches(record: dict, impl: str) -> None:
    """Wrap the trainer's collator so that the useful tokens of each batch (prompt once + chosen +
    rejected, BOS and EOS included) are recorded in order; step k trains on batch k."""
    if impl == "trl":
        from trl.trainer.dpo_trainer import DataCollatorForPreference as cls

        name = "torch_call"
    else:
        from dpolab.modeling.collate import PairCollator as cls

        name = "__call__"
    original = getattr(cls, name)

    def wrapped(self, examples, *args, **kwargs):
        tokens = sum(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
        record.setdefault("batch_tokens", []).append(tokens)
        return original(self, examples, *args, **kwargs)

    setattr(cls, name, wrapped)


def profile_categories(profiler, *, vocab: int) -> dict[str, float]:
    """Seconds of CPU time (self time of each operator) by what the operator works on: the output
    head (an input with a vocabulary-sized dimension), attention, the other matrix products (the
    transformer blocks), and everything else (norms, activations, copies, the loss, the optimiser);
    and, as `<category> GFLOP`, the matrix-product FLOPs the profiler counted in each (it does not
    count in-place `addmm_`)."""
    matmuls = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul", "aten::linear"}
    out: dict[str, float] = {}
    for event in profiler.key_averages(group_by_input_shape=True):
        name = event.key
        shapes = [tuple(s) for s in (event.input_shapes or []) if isinstance(s, (list, tuple))]
        if any(vocab in s for s in shapes):
            category = "output head"
        elif "attention" in name or "softmax" in name:
            category = "attention"
        elif name in matmuls:
            category = "block matmuls"
        else:
            category = "other"
        out[category] = out.get(category, 0.0) + event.self_cpu_time_total / 1e6
        if event.flops:
            out[f"{category} GFLOP"] = out.get(f"{category} GFLOP", 0.0) + event.flops / 1e9
    return out


def _checksum(model) -> dict[str, float]:
    """Sums of the trainable parameters (and their count), to check both trainers start alike."""

    total, count = 0.0, 0
    for p in model.parameters():
        if p.requires_grad:
            total += float(p.detach().double().abs().sum())
            count += p.numel()
    return {"abs_sum": total, "trainable": count, "total": sum(p.numel() for p in model.parameters())}


def seed_lora_init(seed: int, impl: str) -> None:
    """Seed torch right before `get_peft_model` (in dpolab's loader and in TRL's trainer), so that
    both trainers start from the same random LoRA matrices."""
    import peft
    import torch

    original = peft.get_peft_model

    def seeded(*args, **kwargs):
        torch.manual_seed(seed)
        return original(*args, **kwargs)

    peft.get_peft_model = seeded
    if impl == "trl":
        import trl.trainer.dpo_trainer as trl_dpo

        trl_dpo.get_peft_model = seeded


def _lora_settings() -> dict:
    # dropout 0 so that the two trainers' numbers can be compared step by step
    return {"r": 16, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def run_dpolab(spec: dict, callback, device_type: str) -> None:
    from dpolab.training import config_from_dict, run

    out = Path(spec["workdir"])
    model = {
        "name_or_path": spec["model"],
        "tokenizer_name_or_path": spec["tokenizer"],
        "dtype": spec["dtype"],
        "attn_implementation": spec.get("attn_implementation", "sdpa"),
    }
    if spec["tuning"] == "lora":
        model["lora"] = _lora_settings()
    method = spec.get("method", "dpo")
    reference_free = method in ("simpo", "orpo")  # no reference section: it would be refused
    loss = {"method": method if reference_free else "dpo", "beta": spec["beta"]}
    if spec["layers"]:
        loss["intermediate"] = {"layers": spec["layers"]}
    values = {
        "model": model,
        "data": {"train": spec["data"], "max_length": None, "max_prompt_length": None},
        "loss": loss,
        "training": {**_training_args(spec, device_type), "output_dir": str(out / "run")},
    }
    if not reference_free:
        values["reference"] = {
            "precompute": spec["reference"] == "precomputed",
            "cache_dir": str(out / "cache"),
            "batch_size": spec["batch"],
        }
    values["training"].update(spec.get("dpolab_training", {}))
    run(config_from_dict(values), callbacks=(callback,))


def _training_args(spec: dict, device_type: str) -> dict:
    args = {
        "per_device_train_batch_size": spec["batch"],
        "max_steps": spec["steps"],
        "logging_steps": 1,
        "learning_rate": spec["lr"],
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": spec["seed"],
        "data_seed": spec["seed"],
        "bf16": False,
        "gradient_checkpointing": spec["gradient_checkpointing"],
        "dataloader_num_workers": 0,
    }
    if device_type == "cpu":
        args["use_cpu"] = True
    return args


def run_trl(spec: dict, callback, device_type: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(
        spec["model"], dtype=getattr(torch, spec["dtype"]), attn_implementation="sdpa"
    )
    peft_config = None
    if (
        spec["tuning"] == "lora"
    ):  # given as a config, TRL's reference is the adapters-disabled model, as dpolab's
        from peft import LoraConfig

        lora = _lora_settings()
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            task_type="CAUSAL_LM",
        )
    args = DPOConfig(
        output_dir=str(Path(spec["workdir"]) / "run"),
        beta=spec["beta"],
        max_length=None,
        precompute_ref_log_probs=spec["reference"] == "precomputed",
        precompute_ref_batch_size=spec["batch"],
        **_training_args(spec, device_type),
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[callback],
        peft_config=peft_config,
    )
    trainer.train()


def main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    record: dict = {
        "spec": spec,
        "loadavg_start": os.getloadavg(),
        "pid": os.getpid(),
        "profile_step": spec.get("profile_step"),
        "vocab": spec["shape"]["vocab"],
    }
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    import datasets  # noqa: F401
    import transformers  # noqa: F401

    if spec["impl"] == "trl":
        import trl  # noqa: F401
    else:
        import dpolab.training.run  # noqa: F401
    record["rss_imports_mib"] = rss_mib()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    record["threads"] = torch.get_num_threads()
    record["matmul_peak_gflops"] = matmul_peak_gflops(device, getattr(torch, spec["dtype"]))
    callback = timer_callback(record)
    record_batches(record, spec["impl"])
    if spec["tuning"] == "lora":
        seed_lora_init(spec["seed"], spec["impl"])
    started = time.perf_counter()
    (run_trl if spec["impl"] == "trl" else run_dpolab)(spec, callback, device.type)
    record["wall_s"] = time.perf_counter() - started
    # again after training: with the start's figure, the machine's speed over this run
    record["matmul_peak_end_gflops"] = matmul_peak_gflops(device, getattr(torch, spec["dtype"]))
    record["peak_rss_mib"] = peak_rss_mib()
    record["loadavg_end"] = os.getloadavg()
    Path(result_path).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
