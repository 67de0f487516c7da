"""Where a dpolab training step's memory goes: every tensor alive at the step's peak, by what made it.

    python benchmarks/memory_profile.py --shape smollm2-135m                # 2 steps, dialogue-like pairs
    python benchmarks/memory_profile.py --shape smollm2-135m --layers 6     # the same widths, 6 layers (faster)
    python benchmarks/memory_profile.py --shape toy --steps 2 --json out.json

Trains dpolab (full fine-tuning, live reference, batch 4 by default) on the benchmark's model and
data (`_workload.py`) in this process, with `LabelledTensorBytes` (a `TorchDispatchMode`, the
counter of `logprob_memory.py` with a label per allocation) watching every ATen operator from the
start of training to its end, forward, backward and optimiser alike. Each new storage is labelled
with the phase of the step that allocated it (policy forward, reference forward, loss, backward,
optimiser) and, in a forward, with the kind of module that was running (attention, MLP, norm,
embedding, output head); parameter gradients are recognised by a post-accumulate-grad hook and
the optimiser's state after its step. At the peak of the live total the table gives each label's
bytes, beside what existed before training (the policy's and the reference's weights) and the
process's peak resident set (`VmHWM`), whose excess over the tensors is the allocator's.

Tensor counts are exact and repeat from run to run (no timing, threads or allocator in them),
so the profile can be taken on a busy machine; only the resident set depends on the allocator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

import _workload as workload
from _worker import peak_rss_mib, reset_peak_rss, rss_mib
from logprob_memory import LiveTensorBytes

MiB = 2**20

# module class name fragments -> the label of the tensors made while such a module runs
MODULE_KINDS = (
    ("Attention", "attention"),
    ("MLP", "MLP"),
    ("Norm", "norms"),
    ("Rotary", "rotary"),  # before "Embedding": LlamaRotaryEmbedding
    ("Embedding", "embedding"),
)


class LabelledTensorBytes(LiveTensorBytes):
    """`LiveTensorBytes` that also logs each allocation and free with a label, so that the live
    bytes of every label at the peak can be read back (`at_peak`)."""

    def __init__(self, *, by_operator: bool = False) -> None:
        super().__init__()
        self.by_operator = by_operator  # add the operator's name to each label
        self._func = None
        self.label = "other"
        self.events: list[tuple[int, int, str]] = []  # (+bytes | -bytes, key, label)
        self._event_of: dict[int, int] = {}  # a live storage's key -> the index of its allocation event
        self.relabelled: dict[int, str] = {}  # allocation event -> the label it was given later
        self._peak_event = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._func = func
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _allocated(self, key: int, nbytes: int) -> None:
        super()._allocated(key, nbytes)
        self._event_of[key] = len(self.events)
        label = f"{self.label} [{self._func.__name__}]" if self.by_operator else self.label
        self.events.append((nbytes, key, label))
        if self.live == self.peak:
            self._peak_event = len(self.events)

    def _freed(self, key: int, nbytes: int) -> None:
        super()._freed(key, nbytes)
        self._event_of.pop(key, None)
        self.events.append((-nbytes, key, ""))

    def relabel(self, tensor: torch.Tensor, label: str) -> None:
        """Give the allocation of `tensor`'s storage another label (a gradient, the optimiser's
        state: known only after the operator that made it)."""
        event = self._event_of.get(tensor.untyped_storage()._cdata)
        if event is not None:
            self.relabelled[event] = label

    def at_peak(self) -> dict[str, int]:
        """Bytes alive at the peak, by label (a storage's key may be reused after it is freed)."""
        live: dict[int, int] = {}  # key -> allocation event
        for index, (nbytes, key, _label) in enumerate(self.events[: self._peak_event]):
            if nbytes > 0:
                live[key] = index
            else:
                live.pop(key, None)
        out: dict[str, int] = defaultdict(int)
        for index in live.values():
            nbytes, _key, label = self.events[index]
            out[self.relabelled.get(index, label)] += nbytes
        return dict(out)


def _module_kind(module: torch.nn.Module) -> str | None:
    name = type(module).__name__
    for fragment, kind in MODULE_KINDS:
        if fragment in name:
            return kind
    return None


@contextmanager
def module_labels(tracker: LabelledTensorBytes, model: torch.nn.Module, phase: str):
    """While `model` runs, label allocations `phase: <kind of the innermost known module>`."""
    stack: list[str] = []
    handles = []

    def pre(module, _args, kind):
        stack.append(kind)
        tracker.label = f"{phase}: {kind}"

    def post(module, _args, _out):
        stack.pop()
        tracker.label = f"{phase}: {stack[-1]}" if stack else f"{phase}: other"

    for module in model.modules():
        kind = _module_kind(module)
        if kind is not None:
            handles.append(module.register_forward_pre_hook(lambda m, a, kind=kind: pre(m, a, kind)))
            handles.append(module.register_forward_hook(post))
    try:
        tracker.label = f"{phase}: other"
        yield
    finally:
        for h in handles:
            h.remove()


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            total += storage.nbytes()
    return total


def instrument(trainer, tracker: LabelledTensorBytes, record: dict) -> None:
    """Label the phases of each step: the policy's forward (with its output head), the reference's,
    the loss, the backward and the optimiser; gradients and the optimiser's state by what they are."""
    from dpolab.modeling import logprobs

    original_layer_logprobs = logprobs.layer_logprobs
    policy = trainer.model

    def labelled_layer_logprobs(model, *args, **kwargs):
        phase = "reference forward" if torch.is_grad_enabled() is False else "policy forward"
        with module_labels(tracker, model, phase):
            out = original_layer_logprobs(model, *args, **kwargs)
        tracker.label = "loss"
        return out

    # both the trainer and the reference call the function they imported
    import dpolab.training.reference as reference_module
    import dpolab.training.trainer as trainer_module

    trainer_module.layer_logprobs = labelled_layer_logprobs
    reference_module.layer_logprobs = labelled_layer_logprobs

    original_compute_loss = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        out = original_compute_loss(*args, **kwargs)
        tracker.label = "backward"
        return out

    trainer.compute_loss = compute_loss

    for p in policy.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p: tracker.relabel(p.grad, "gradients"))

    from transformers import TrainerCallback

    class Phases(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            record["rss_train_begin_mib"] = rss_mib()
            record["peak_rss_setup_mib"] = peak_rss_mib()
            record["peak_reset"] = reset_peak_rss()
            tracker.__enter__()

        def on_step_begin(self, args, state, control, **kwargs):
            tracker.label = "policy forward: other"

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            tracker.label = "optimiser (transient)"

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            for group in trainer.optimizer.state.values():
                for value in group.values():
                    if isinstance(value, torch.Tensor) and value.numel() > 1:
                        tracker.relabel(value, "optimiser state")
            tracker.label = "after the step"

        def on_train_end(self, args, state, control, **kwargs):
            tracker.__exit__(None, None, None)
            record["peak_rss_train_mib"] = peak_rss_mib()

    trainer.add_callback(Phases())


def profile(args) -> dict:
    from dpolab.training import config_from_dict
    from dpolab.training.run import build_trainer, prepare, train_and_save

    shape = workload.SHAPES[args.shape]
    if args.layers:
        shape = workload.ModelShape(**{**asdict(shape), "layers": args.layers})
    paths = workload.prepare(args.workdir / "workload", shape, pairs=args.steps * args.batch)
    out = args.workdir / "run"
    loss = {"method": "dpo", "beta": 0.1}
    if args.intermediate:
        loss["intermediate"] = {"layers": [max(1, shape.layers // 2), max(1, 3 * shape.layers // 4)]}
    config = config_from_dict(
        {
            "model": {
                "name_or_path": paths["model"],
                "tokenizer_name_or_path": paths["tokenizer"],
                "dtype": args.dtype,
                "attn_implementation": "sdpa",
            },
            "data": {"train": paths[args.regime], "max_length": None, "max_prompt_length": None},
            "loss": loss,
            "reference": {"precompute": False},
            "training": {
                "output_dir": str(out),
                "per_device_train_batch_size": args.batch,
                "max_steps": args.steps,
                "logging_steps": 1,
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
                "seed": 0,
                "use_cpu": True,
                "gradient_checkpointing": args.gradient_checkpointing,
                **json.loads(args.training),
            },
        }
    )
    record: dict = {
        "rss_start_mib": rss_mib(),
        "shape": asdict(shape),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    prepared = prepare(config)
    trainer = build_trainer(prepared)
    tracker = LabelledTensorBytes(by_operator=args.by_operator)
    instrument(trainer, tracker, record)
    weights = {"policy weights": _storage_bytes(prepared.policy.parameters())}
    reference_model = getattr(prepared.reference, "model", None)
    if reference_model is not None and reference_model is not prepared.policy:
        weights["reference weights"] = _storage_bytes(reference_model.parameters())
    train_and_save(prepared, trainer)
    record["weights"] = weights
    record["at_peak"] = tracker.at_peak()
    record["tracked_peak"] = tracker.peak
    return record


def table(record: dict) -> str:
    rows = [(name, nbytes) for name, nbytes in record["weights"].items()]
    rows += sorted(record["at_peak"].items(), key=lambda kv: -kv[1])
    tensors = sum(n for _, n in rows)
    peak_rss = max(record["peak_rss_setup_mib"], record["peak_rss_train_mib"])
    lines = ["| what | MiB at the peak | share |", "|---|---:|---:|"]
    for name, nbytes in rows:
        if nbytes >= MiB / 2:
            lines.append(f"| {name} | {nbytes / MiB:.0f} | {nbytes / tensors:.0%} |")
    lines.append(f"| **tensors, all** | **{tensors / MiB:.0f}** | |")
    lines.append(f"| resident set after the imports (code, libraries) | {record['rss_start_mib']:.0f} | |")
    lines.append(
        f"| resident set not in tensors (allocator, Python objects) | "
        f"{peak_rss - record['rss_start_mib'] - tensors / MiB:.0f} | |"
    )
    lines.append(f"| **peak resident set (VmHWM)** | **{peak_rss:.0f}** | |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(workload.SHAPES), default="smollm2-135m")
    p.add_argument("--layers", type=int, default=None, help="fewer layers than the shape's (same widths)")
    p.add_argument("--regime", choices=sorted(workload.REGIMES), default="dialogue")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--steps", type=int, default=2, help="the peak is in a step after the first (Adam's state)"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--intermediate", action="store_true", help="intermediate DPO on two layers")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--by-operator", action="store_true", help="split each label by the operator that allocated"
    )
    p.add_argument("--training", default="{}", help="extra JSON training settings")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "dpolab-memory-profile"
    )
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = profile(args)
    shape = workload.ModelShape(**record["shape"])
    print(
        f"# {shape.describe()}; {args.regime}-like pairs, batch {args.batch}, full fine-tuning, live "
        f"reference, {args.dtype}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"{'intermediate DPO' if args.intermediate else 'plain DPO'}; {args.steps} steps"
    )
    print(table(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
