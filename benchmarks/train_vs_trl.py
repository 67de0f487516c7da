"""dpolab vs TRL's DPOTrainer on the same model and data: pairs/s, peak memory, MFU.

    python benchmarks/train_vs_trl.py            # every shape and case, 3 repeats (several hours on 2 CPU cores)
    python benchmarks/train_vs_trl.py --quick    # the toy shape, a few cases, 1 repeat (a few minutes)
    python benchmarks/train_vs_trl.py --shapes smollm2-135m --repeats 1 --steps 3
                                                 # one real shape (see _workload.SHAPES)
    python benchmarks/train_vs_trl.py --quick --impls dpolab/dpo dpolab/simpo dpolab/orpo
                                                 # the reference-free methods against plain DPO

Each run is its own process (`_worker.py`), and the runs of a case alternate A B A B between the
implementations, so that a change in the machine's load hits both; the table gives medians over
the repeats, and each run records the load average at its start and end. See RESULTS.md for what
is measured and how (peak resident memory, the FLOP convention of the MFU, the loss check).
The toy shape runs every case (both regimes, full and LoRA, live and precomputed reference); the
real shapes run plain DPO, TRL and intermediate DPO with full fine-tuning and a live reference,
the case the targets are set on, with fewer steps (each takes tens of seconds on a CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import _workload as workload
from _report import attention_pairs, figures, profile_table, ratios, report, update_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Case:
    regime: str  # dialogue | answer
    tuning: str  # full | lora
    reference: str  # live | precomputed

    @property
    def name(self) -> str:
        return f"{self.regime}/{self.tuning}/{self.reference}"


# (implementation, method): dpolab's intermediate DPO has no TRL counterpart; the reference-free
# SimPO and ORPO are measured against dpolab's plain DPO with a live reference (one forward a step
# instead of two, no reference model), in the live cases only
DPOLAB, TRL, DPOLAB_IDPO = ("dpolab", "dpo"), ("trl", "dpo"), ("dpolab", "idpo")
DPOLAB_SIMPO, DPOLAB_ORPO = ("dpolab", "simpo"), ("dpolab", "orpo")
# plain DPO with FlexAttention instead of sdpa (model.attn_implementation=flex_attention), where
# this build has it (gpu_check.py)
DPOLAB_FLEX = ("dpolab", "flex")
REFERENCE_FREE = (DPOLAB_SIMPO, DPOLAB_ORPO)


def all_cases(regimes) -> list[tuple[Case, list[tuple[str, str]]]]:
    cases = []
    for regime in regimes:
        for tuning in ("full", "lora"):
            cases.append((Case(regime, tuning, "live"), [DPOLAB, TRL, DPOLAB_IDPO, *REFERENCE_FREE]))
            cases.append((Case(regime, tuning, "precomputed"), [DPOLAB, TRL]))
    return cases


def quick_cases() -> list[tuple[Case, list[tuple[str, str]]]]:
    return [
        (Case("dialogue", "full", "live"), [DPOLAB, TRL, DPOLAB_IDPO, *REFERENCE_FREE]),
        (Case("answer", "full", "live"), [DPOLAB, TRL]),
        (Case("dialogue", "full", "precomputed"), [DPOLAB, TRL]),
        (Case("dialogue", "lora", "live"), [DPOLAB, TRL]),
    ]


def real_shape_cases(regimes) -> list[tuple[Case, list[tuple[str, str]]]]:
    """The real shapes: full fine-tuning, live reference; plain DPO, TRL, intermediate DPO."""
    return [(Case(regime, "full", "live"), [DPOLAB, TRL, DPOLAB_IDPO]) for regime in regimes]


def shape_cases(shape_name: str, args) -> list[tuple[Case, list[tuple[str, str]]]]:
    if shape_name == "toy":
        cases = quick_cases() if args.quick else all_cases(args.regimes)
    else:
        cases = real_shape_cases(args.regimes)
    if args.only:
        cases = [(c, impls) for c, impls in cases if c.name in args.only]
    if args.impls:
        cases = [(c, [i for i in impls if "/".join(i) in args.impls]) for c, impls in cases]
    return [(c, impls) for c, impls in cases if impls]


def intermediate_layers(num_layers: int) -> list[int]:
    """Two intermediate layers, at one half and three quarters of the depth."""
    return sorted({max(1, num_layers // 2), max(1, (3 * num_layers) // 4)} - {num_layers}) or [1]


class RunFailed(RuntimeError):
    pass


def run_one(spec: dict, workdir: Path, *, env: dict) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = workdir / "spec.json", workdir / "result.json"
    spec_file.write_text(json.dumps(spec))
    log = workdir / "log.txt"
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, str(HERE / "_worker.py"), str(spec_file), str(result_file)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
        raise RunFailed(
            f"run failed with exit code {done.returncode}{killed} ({spec['impl']} {spec['case']}): see {log}\n{tail}"
        )
    return json.loads(result_file.read_text())


def machine() -> dict:
    import torch
    import transformers
    import trl

    cpu = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="the toy shape only, four cases, one repeat, fewer steps"
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        choices=list(workload.SHAPES),
        help="model shapes to run (default: all; with --quick: toy)",
    )
    p.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="the toy shape's hidden size (head dimension 64; default 256)",
    )
    p.add_argument("--layers", type=int, default=None, help="the toy shape's number of layers (default 4)")
    p.add_argument("--batch", type=int, default=4, help="pairs per step (per_device_train_batch_size)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per run; the first is not timed (default 8 for the toy shape, 4 for the real ones, quick 4)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs per implementation and case (default 3, quick 1)",
    )
    p.add_argument("--regimes", nargs="+", default=list(workload.REGIMES), choices=list(workload.REGIMES))
    p.add_argument("--only", nargs="*", default=None, help="case names to run, e.g. dialogue/full/live")
    p.add_argument(
        "--impls",
        nargs="*",
        default=None,
        help="runs to make, among dpolab/dpo trl/dpo dpolab/idpo dpolab/simpo dpolab/orpo",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    p.add_argument(
        "--lr", type=float, default=1e-4, help="learning rate (AdamW, the Trainer's default optimiser)"
    )
    p.add_argument(
        "--gradient-checkpointing",
        choices=["on", "off", "auto"],
        default="auto",
        help="on both sides; auto: off for the toy and SmolLM2 shapes, on for the Qwen2.5-0.5B shape "
        "(whose TRL run without it needs more than 24 GiB on a CPU) (TRL's own default is on)",
    )
    p.add_argument("--dpolab-training", default="{}", help="extra JSON training args for dpolab only")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "dpolab-bench",
        help="model, data and one folder per run (spec, result, log)",
    )
    p.add_argument("--json", type=Path, default=None, help="write every run's record here")
    p.add_argument(
        "--profile",
        action="store_true",
        help="only profile the second step of one run per implementation of a few cases (torch.profiler) "
        "and print where its time goes (--update-results does this too, after the table)",
    )
    p.add_argument(
        "--update-results",
        type=Path,
        nargs="?",
        const=HERE / "RESULTS.md",
        default=None,
        help="write the table and the profile into RESULTS.md's marked blocks, and the ratios into "
        "docs/benchmarks.md's",
    )
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="print the tables of one or more --json files again (one per shape, say), and exit; with "
        "--update-results, write them all",
    )
    return p.parse_args(argv)


# profiled (with --profile, and after the table with --update-results): one step of each run
PROFILE_CASES = ("dialogue/full/live", "answer/full/live", "dialogue/lora/live")


def model_shape(shape_name: str, args) -> workload.ModelShape:
    shape = workload.SHAPES[shape_name]
    if shape_name == "toy":  # --hidden and --layers change the toy shape
        shape = workload.ModelShape(hidden=args.hidden or shape.hidden, layers=args.layers or shape.layers)
    return shape


def token_stats(paths: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per regime, the data set's means per pair: useful tokens (prompt once + chosen + rejected),
    completion positions, and the (query, key) pairs attention needs (`_report.attention_pairs`)."""
    tokens = {}
    for regime in workload.REGIMES:
        counts = [
            workload.pair_token_counts(json.loads(x)) for x in Path(paths[regime]).read_text().splitlines()
        ]
        tokens[regime] = {
            "all": sum(map(sum, counts)) / len(counts),
            "completion": sum(c + r for _, c, r in counts) / len(counts),
            "attention": sum(attention_pairs(*c) for c in counts) / len(counts),
        }
    return tokens


def gradient_checkpointing(shape_name: str, args) -> bool:
    if args.gradient_checkpointing == "auto":
        return shape_name == "qwen2.5-0.5b"
    return args.gradient_checkpointing == "on"


def run_cases(
    args, shape_name: str, cases, *, steps: int, repeats: int, profile: bool, dtype: str | None = None
) -> tuple[dict, dict]:
    """Every (case, implementation) of one shape `repeats` times, alternating the order;
    (info, records). A run that fails (out of memory) is reported and left out."""
    import torch

    shape = model_shape(shape_name, args)
    paths = workload.prepare(args.workdir / shape_name / "workload", shape, pairs=steps * args.batch)
    tokens = token_stats(paths)
    dtype = dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    checkpointing = gradient_checkpointing(shape_name, args)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    info = {
        **machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shape_name": shape_name,
        "shape": asdict(shape),
        "batch": args.batch,
        "steps": steps,
        "repeats": repeats,
        "dtype": dtype,
        "gradient_checkpointing": checkpointing,
        "threads": args.threads,
        "loadavg_start": os.getloadavg(),
        "tokens_per_pair": tokens,
        "failures": [],
    }
    print(json.dumps(info, indent=1), flush=True)

    results: dict[str, dict[str, list]] = {}
    for rep in range(repeats):
        for case, impls in cases:
            order = impls if rep % 2 == 0 else impls[::-1]  # A B, then B A: load drifts hit both
            for impl, method in order:
                name = f"{case.name.replace('/', '-')}-{impl}-{method}-{rep}" + (
                    "-profile" if profile else ""
                )
                spec = {
                    "impl": impl,
                    "method": method,
                    "case": case.name,
                    "tuning": case.tuning,
                    "reference": case.reference,
                    "layers": intermediate_layers(shape.layers) if method == "idpo" else [],
                    "model": paths["model"],
                    "tokenizer": paths["tokenizer"],
                    "data": paths[case.regime],
                    "shape": asdict(shape),
                    "dtype": dtype,
                    "beta": 0.1,
                    "batch": args.batch,
                    "steps": steps,
                    "lr": args.lr,
                    "seed": 0,
                    "gradient_checkpointing": checkpointing,
                    "attn_implementation": "flex_attention" if method == "flex" else "sdpa",
                    "threads": args.threads,
                    "dpolab_training": json.loads(args.dpolab_training) if impl == "dpolab" else {},
                    "profile_step": 2 if profile else None,
                    "workdir": str(args.workdir / shape_name / "runs" / name),
                }
                try:
                    record = run_one(spec, Path(spec["workdir"]), env=env)
                except RunFailed as err:
                    print(err, flush=True)
                    info["failures"].append(f"{case.name} {impl}/{method}: {str(err).splitlines()[0]}")
                    continue
                results.setdefault(case.name, {}).setdefault(f"{impl}/{method}", []).append(record)
                f = figures(record, tokens[case.regime], record["matmul_peak_gflops"])
                print(
                    f"[{rep + 1}/{repeats}] {shape_name} {case.name:28s} {impl}/{method:5s} {f['pairs_per_s']:7.3f} pairs/s  "
                    f"peak memory {f['peak_rss_mib']:6.0f} MiB  load {f['loadavg'][0]:.2f}->{f['loadavg'][1]:.2f}",
                    flush=True,
                )
    info["loadavg_end"] = os.getloadavg()
    return info, results


def profile_pass(args, shape_name: str, cases) -> str:
    """One profiled step of each run of the profiled cases; prints the profile and returns it."""
    chosen = args.only or PROFILE_CASES
    cases = [(c, impls) for c, impls in cases if c.name in chosen]
    info, results = run_cases(args, shape_name, cases, steps=3, repeats=1, profile=True)
    text = (
        f"- {shape_name}: command `{info['command']}`; {info['date']}; {info['cpu']}, {info['cores']} cores; "
        f"load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}\n\n"
        + profile_table(results)
    )
    print(text)
    return text


def saved_shapes(saved: dict) -> dict[str, dict]:
    """{shape name (and "gradient checkpointing" where it was on): {"info", "runs"}} of a --json
    file (one written before shapes: the toy shape)."""
    shapes = saved["shapes"] if "shapes" in saved else {"toy": {"info": saved["info"], "runs": saved["runs"]}}
    return {
        name + (" gradient checkpointing" if s["info"].get("gradient_checkpointing") else ""): s
        for name, s in shapes.items()
    }


def write_results(args, shapes: dict[str, dict]) -> None:
    text = "\n\n".join(report(s["info"], s["runs"]) for s in shapes.values())
    update_results(args.update_results, "results", text)
    update_results(
        REPO / "docs" / "benchmarks.md",
        "performance",
        "\n\n".join(ratios(s["info"], s["runs"]) for s in shapes.values()),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        shapes = {}
        for path in args.report:
            shapes.update(saved_shapes(json.loads(path.read_text())))
        for s in shapes.values():
            report(s["info"], s["runs"])
        if args.update_results:
            write_results(args, shapes)
        return 0
    shape_names = args.shapes or (["toy"] if args.quick else list(workload.SHAPES))
    if args.profile:
        texts = [profile_pass(args, name, shape_cases(name, args)) for name in shape_names]
        if args.update_results:
            update_results(args.update_results, "profile", "\n\n".join(texts))
        return 0
    shapes = {}
    for name in shape_names:
        steps = args.steps or (4 if args.quick or name != "toy" else 8)
        repeats = args.repeats or (1 if args.quick else 3)
        info, results = run_cases(
            args, name, shape_cases(name, args), steps=steps, repeats=repeats, profile=False
        )
        shapes[name] = {"info": info, "runs": results}
        if args.json:  # after each shape: a long run keeps what it has measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"shapes": shapes}, indent=1))
        report(info, results)
    if args.update_results:
        write_results(args, shapes)
        # and where the time goes, for RESULTS.md: the toy shape's profile (a real shape's step is long)
        if "toy" in shape_names:
            update_results(
                args.update_results, "profile", profile_pass(args, "toy", shape_cases("toy", args))
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
