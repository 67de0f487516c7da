"""The GPU check: one command that measures what a CPU cannot, in under 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py --out DIR         # on the GPU machine: DIR/gpu_check.json and .md
    python benchmarks/gpu_check.py --report DIR/gpu_check.json --update-results
                                                     # here: the table into RESULTS.md's gpu block
    python benchmarks/gpu_check.py --device cpu --tiny --out DIR
                                                     # every section on a CPU with tiny models (the tests)

Sections, in order (each a table in the Markdown, a key in the JSON):

1. bf16 vs fp32: dpolab trains the SmolLM2-135M shape for a few steps in fp32, with bf16 weights,
   and with fp32 weights under bf16 autocast (`training.bf16`); the largest differences of the
   logged loss and log-probs from the fp32 run, and whether the autocast run's first step has
   margins of exactly 0 (its reference rounded as its policy).
2. dpolab vs TRL 1.16 at the Qwen2.5-0.5B shape in bf16 (weights bf16 on both sides, full
   fine-tuning, live reference, dialogue-like pairs, batch 4): pairs/s, peak GPU memory (allocated
   by torch), MFU against the bf16 matmul peak measured on this GPU, and the loss check; each run
   in its own process (`_worker.py`), as in `train_vs_trl.py`.
3. sdpa vs FlexAttention: the same dpolab run with `model.attn_implementation=flex_attention`,
   where this build accepts it; otherwise the section says it is not available in this build.
4. intermediate DPO (two layers) against plain DPO at the same shape: time, FLOP-count prediction,
   memory.

The script checks its prerequisites first and stops with one line naming what is missing (a
package, a CUDA GPU, bf16 support). It needs no network: the models are built from configs with
random weights, the tokenizer and the data locally (`_workload.py`). Sections that would start
after `--budget` seconds are skipped (and say so), so that the command ends in time.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REPO = HERE.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

# what the check imports, and the distribution each comes from
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "trl": "trl",
    "peft": "peft",
    "accelerate": "accelerate",
    "datasets": "datasets",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "yaml": "pyyaml",
    "dpolab": "dpolab (this repository's src/)",
}
MIN_TRL = (1, 16)


def missing_prerequisites(device: str, required: dict[str, str] = REQUIRED) -> list[str]:
    """What this machine lacks for the check on `device`, in words (empty: nothing)."""
    missing = [dist for module, dist in required.items() if importlib.util.find_spec(module) is None]
    if missing:
        return missing
    import trl

    if tuple(int(x) for x in trl.__version__.split(".")[:2]) < MIN_TRL:
        missing.append(f"trl>={'.'.join(map(str, MIN_TRL))} (found {trl.__version__})")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            missing.append(f"a CUDA GPU (torch {torch.__version__} sees none)")
        elif not torch.cuda.is_bf16_supported():
            missing.append(f"bf16 support on {torch.cuda.get_device_name()}")
    return missing


def flex_attention_available() -> bool:
    """Whether this build of dpolab accepts `model.attn_implementation: flex_attention`."""
    from dpolab.config.schema import CHOICES

    return "flex_attention" in CHOICES["model.attn_implementation"]


SECTIONS = ("bf16", "trl", "flex", "idpo")


# ----------------------------------------------------------------------------------------------
# 1. bf16 vs fp32
# ----------------------------------------------------------------------------------------------

BF16_KEYS = ("logps/chosen", "logps/rejected")


def bf16_agreement(args, shape, workdir: Path) -> dict:
    """Train `args.bf16_steps` steps three ways in this process; the largest differences from fp32."""
    import torch

    import _workload as workload
    from dpolab.training import config_from_dict, run

    paths = workload.prepare(workdir / "workload", shape, pairs=args.bf16_steps * 4)
    variants = {
        "fp32": ({}, {}),
        "bf16 weights": ({"dtype": "bfloat16"}, {}),
        "fp32 weights, bf16 autocast": ({}, {"bf16": True}),
    }
    logs = {}
    for name, (model, training) in variants.items():
        out = workdir / name.replace(" ", "-").replace(",", "")
        values = {
            "model": {
                "name_or_path": paths["model"],
                "tokenizer_name_or_path": paths["tokenizer"],
                "attn_implementation": "sdpa",
                **model,
            },
            "data": {"train": paths["dialogue"], "max_length": None, "max_prompt_length": None},
            "loss": {"method": "dpo", "beta": 0.1},
            "reference": {"precompute": False},
            "training": {
                "output_dir": str(out),
                "per_device_train_batch_size": 4,
                "max_steps": args.bf16_steps,
                "logging_steps": 1,
                "learning_rate": 1e-5,
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
                "seed": 0,
                "use_cpu": args.device == "cpu",
                **training,
            },
        }
        run(config_from_dict(values))
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        logs[name] = [x for x in lines if x["split"] == "train"]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    fp32 = logs["fp32"]
    rows = {}
    for name in list(variants)[1:]:
        log = logs[name]
        rows[name] = {
            "max_abs_loss_difference": max(abs(a["loss"] - b["loss"]) for a, b in zip(log, fp32)),
            "max_rel_logps_difference": max(
                abs(a[k] - b[k]) / abs(b[k]) for a, b in zip(log, fp32) for k in BF16_KEYS
            ),
            "step1_margin": log[0]["rewards/margins"],
            "final_loss": log[-1]["loss"],
        }
    return {
        "shape": asdict(shape),
        "steps": args.bf16_steps,
        "fp32_final_loss": fp32[-1]["loss"],
        "rows": rows,
    }


def bf16_markdown(section: dict) -> str:
    lines = [
        f"{section['steps']} steps, lr 1e-5, batch 4 dialogue-like pairs; fp32's final loss "
        f"{section['fp32_final_loss']:.4f}",
        "",
        "| run | max \\|Δloss\\| vs fp32 | max relative Δ log-probs | step-1 margin | final loss |",
        "|---|---|---|---|---|",
    ]
    for name, row in section["rows"].items():
        lines.append(
            f"| {name} | {row['max_abs_loss_difference']:.1e} | {row['max_rel_logps_difference']:.1e} "
            f"| {row['step1_margin']:.1e} | {row['final_loss']:.4f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# 2–4. dpolab vs TRL, FlexAttention, intermediate DPO: runs in their own processes
# ----------------------------------------------------------------------------------------------


def trainer_runs(args, shape_name: str, shape, workdir: Path, *, flex: bool) -> dict:
    """dpolab (sdpa), TRL, dpolab's intermediate DPO and, with `flex`, dpolab with FlexAttention,
    one run each, dialogue-like pairs, full fine-tuning, live reference, in bf16 (on a GPU)."""
    import train_vs_trl as bench

    case = bench.Case("dialogue", "full", "live")
    impls = [bench.DPOLAB, bench.TRL, bench.DPOLAB_IDPO] + ([bench.DPOLAB_FLEX] if flex else [])
    ns = argparse.Namespace(
        workdir=workdir,
        batch=4,
        lr=1e-5,
        threads=None,
        dpolab_training="{}",
        gradient_checkpointing="off",
        hidden=shape.hidden if shape_name == "toy" else None,
        layers=shape.layers if shape_name == "toy" else None,
    )
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    info, results = bench.run_cases(
        ns, shape_name, [(case, impls)], steps=args.steps, repeats=1, profile=False, dtype=dtype
    )
    return {"info": info, "runs": results}


def trainer_rows(section: dict) -> dict:
    from _report import matmul_peak, summarise

    info, results = section["info"], section["runs"]
    rows = summarise(results, matmul_peak(results), info["tokens_per_pair"])
    return rows.get("dialogue/full/live", {})


def trl_markdown(section: dict) -> str:
    from _report import matmul_peak, shape_text

    row = trainer_rows(section)
    info = section["info"]
    memory = "peak GPU memory allocated by torch" if info.get("gpu") else "peak resident set"
    lines = [
        f"{shape_text(info)}; {info['dtype']}; batch {info['batch']} dialogue-like pairs, full fine-tuning, "
        f"live reference; {info['steps'] - 1} timed steps; matmul peak {matmul_peak(section['runs']):.0f} "
        f"GFLOP/s ({info['dtype']}, measured here); memory: {memory}",
        *[f"- **failed**: {failure}" for failure in info.get("failures", [])],
        "",
        "| run | pairs/s | peak memory MiB | MFU |",
        "|---|---|---|---|",
    ]
    for key, figures in row.get("impl", {}).items():
        lines.append(
            f"| {key} | {figures['pairs_per_s']:.2f} | {figures['peak_rss_mib']:.0f} | {figures['mfu']:.1%} |"
        )
    lines.append("")
    if "speed_ratio" in row:
        lines.append(
            f"dpolab ÷ TRL: **{row['speed_ratio']:.2f}×** pairs/s, **{row['memory_ratio']:.2f}×** peak memory; "
            f"losses agree to {row['loss_difference_first_steps']:.1e} at steps 1–2, step-1 log-probs to "
            f"{row['logps_difference']:.0e} (relative)"
        )
    return "\n".join(lines)


def flex_markdown(section: dict) -> str:
    if not section.get("available"):
        return "FlexAttention: not available in this build (`model.attn_implementation` accepts no `flex_attention`)."
    row = trainer_rows(section)
    figures = row.get("impl", {})
    sdpa, flex = figures.get("dpolab/dpo"), figures.get("dpolab/flex")
    if not (sdpa and flex):
        return "FlexAttention: the run failed (see the failures above)."
    from _report import loss_difference

    runs = section["runs"]["dialogue/full/live"]
    delta = loss_difference(runs["dpolab/dpo"][0], runs["dpolab/flex"][0], steps=(1, 2))
    return (
        "| attention | pairs/s | peak memory MiB |\n|---|---|---|\n"
        f"| sdpa (4-D mask) | {sdpa['pairs_per_s']:.2f} | {sdpa['peak_rss_mib']:.0f} |\n"
        f"| FlexAttention | {flex['pairs_per_s']:.2f} | {flex['peak_rss_mib']:.0f} |\n\n"
        f"FlexAttention ÷ sdpa: **{flex['pairs_per_s'] / sdpa['pairs_per_s']:.2f}×** pairs/s, "
        f"**{flex['peak_rss_mib'] / sdpa['peak_rss_mib']:.2f}×** memory; |Δloss| steps 1–2 {delta:.1e}"
    )


def idpo_markdown(section: dict) -> str:
    row = trainer_rows(section)
    if "idpo_time_ratio" not in row:
        return "Intermediate DPO: no result (see the failures above)."
    return (
        f"Intermediate DPO (layers {section['layers']}) ÷ plain DPO: **{row['idpo_time_ratio']:.2f}×** the "
        f"time, the FLOP count predicts {row['idpo_flops_ratio']:.2f}× (time ÷ prediction "
        f"{row['idpo_time_ratio'] / row['idpo_flops_ratio']:.2f}); **{row['idpo_memory_ratio']:.2f}×** the "
        "peak memory"
    )


# ----------------------------------------------------------------------------------------------
# The record and its Markdown
# ----------------------------------------------------------------------------------------------


def markdown(record: dict) -> str:
    info = record["info"]
    out = [
        f"- command: `{info['command']}`",
        f"- date: {info['date']}; device: {info['device']}; torch {info['torch']}, transformers "
        f"{info['transformers']}, TRL {info['trl']}; {info['elapsed_s']:.0f} s in all",
    ]
    titles = {
        "bf16": "bf16 vs fp32",
        "trl": "dpolab vs TRL",
        "flex": "sdpa vs FlexAttention",
        "idpo": "intermediate DPO",
    }
    writers = {"bf16": bf16_markdown, "trl": trl_markdown, "flex": flex_markdown, "idpo": idpo_markdown}
    for key, title in titles.items():
        section = record["sections"].get(key)
        out += ["", f"#### {title}", ""]
        if section is None:
            out.append("not run")
        elif "skipped" in section:
            out.append(f"skipped: {section['skipped']}")
        elif "error" in section:
            out.append(f"**failed**: {section['error']}")
        else:
            out.append(writers[key](section))
    return "\n".join(out)


def write_record(record: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    json_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    md_path.write_text(markdown(record) + "\n", encoding="utf-8")
    return json_path, md_path


def check(args) -> dict:
    import torch
    import transformers
    import trl

    import _workload as workload

    started = time.perf_counter()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    record = {
        "info": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": device,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "sections": {},
    }
    if args.tiny:  # the CPU rehearsal: a small Llama, a few steps
        bf16_shape = trainer_shape = workload.ModelShape(hidden=64, layers=2)
        trainer_shape_name = "toy"
    else:
        bf16_shape, trainer_shape_name = workload.SHAPES["smollm2-135m"], "qwen2.5-0.5b"
        trainer_shape = workload.SHAPES[trainer_shape_name]
    sections = record["sections"]

    def over_budget() -> str | None:
        spent = time.perf_counter() - started
        return f"{spent:.0f} s spent, over the budget of {args.budget} s" if spent > args.budget else None

    def attempt(key, fn):
        reason = over_budget()
        if reason:
            sections[key] = {"skipped": reason}
            return
        begun = time.perf_counter()
        try:
            sections[key] = fn()
        except Exception as err:  # a section that fails does not stop the others
            sections[key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        sections[key]["seconds"] = time.perf_counter() - begun
        print(f"gpu_check: {key} done in {sections[key]['seconds']:.0f} s", flush=True)

    workdir = args.workdir
    if "bf16" in args.sections:
        attempt("bf16", lambda: bf16_agreement(args, bf16_shape, workdir / "bf16"))
    flex = flex_attention_available()
    if not {"trl", "flex", "idpo"} & set(args.sections):
        record["info"]["elapsed_s"] = time.perf_counter() - started
        return record
    attempt(
        "trl", lambda: trainer_runs(args, trainer_shape_name, trainer_shape, workdir / "trainers", flex=flex)
    )
    trainers = sections.get("trl", {})
    if "runs" in trainers:  # 3 and 4 read the same runs
        import train_vs_trl as bench

        sections["flex"] = {"available": flex, **trainers}
        sections["idpo"] = {"layers": bench.intermediate_layers(trainer_shape.layers), **trainers}
    else:
        sections["flex"] = {"available": flex, "skipped": "no trainer runs"} if flex else {"available": False}
        sections["idpo"] = {"skipped": "no trainer runs"}
    record["info"]["elapsed_s"] = time.perf_counter() - started
    return record


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu_check.json and .md")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="small models and few steps (a rehearsal on a CPU)")
    p.add_argument(
        "--steps", type=int, default=None, help="steps per trainer run, the first untimed (default 8, tiny 3)"
    )
    p.add_argument(
        "--bf16-steps", type=int, default=None, help="steps of the bf16 section (default 5, tiny 3)"
    )
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to run (trl, flex and idpo share the same trainer runs)",
    )
    p.add_argument("--budget", type=float, default=360.0, help="seconds after which no new section starts")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "dpolab-gpu-check",
        help="models, data and runs",
    )
    p.add_argument(
        "--report", type=Path, default=None, help="print the Markdown of a gpu_check.json, and exit"
    )
    p.add_argument(
        "--update-results",
        type=Path,
        nargs="?",
        const=HERE / "RESULTS.md",
        default=None,
        help="with --report: write the Markdown into RESULTS.md's gpu block",
    )
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 8)
    args.bf16_steps = args.bf16_steps or (3 if args.tiny else 5)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        text = markdown(json.loads(args.report.read_text(encoding="utf-8")))
        print(text)
        if args.update_results:
            from _report import update_results

            update_results(args.update_results, "gpu", text)
        return 0
    missing = missing_prerequisites(args.device)
    if missing:
        print(f"gpu_check: missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    record = check(args)
    json_path, md_path = write_record(record, args.out)
    print(markdown(record))
    print(f"\ngpu_check: wrote {json_path} and {md_path}")
    failed = [k for k, s in record["sections"].items() if "error" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
