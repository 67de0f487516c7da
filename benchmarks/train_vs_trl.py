"""dpolab vs TRL's DPOTrainer on the same model and data: pairs/s, peak memory, MFU.

    python benchmarks/train_vs_trl.py            # every case, 3 repeats (about an hour on 2 CPU cores)
    python benchmarks/train_vs_trl.py --quick    # a few cases, 1 repeat (a few minutes)

Each run is its own process (`_worker.py`), and the runs of a case alternate A B A B between the
implementations, so that a change in the machine's load hits both; the table gives medians over
the repeats, and each run records the load average at its start and end. See RESULTS.md for what
is measured and how (peak resident memory, the FLOP convention of the MFU, the loss check).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import _workload as workload

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


# (implementation, method): dpolab's intermediate DPO has no TRL counterpart
DPOLAB, TRL, DPOLAB_IDPO = ("dpolab", "dpo"), ("trl", "dpo"), ("dpolab", "idpo")


def all_cases(regimes) -> list[tuple[Case, list[tuple[str, str]]]]:
    cases = []
    for regime in regimes:
        for tuning in ("full", "lora"):
            cases.append((Case(regime, tuning, "live"), [DPOLAB, TRL, DPOLAB_IDPO]))
            cases.append((Case(regime, tuning, "precomputed"), [DPOLAB, TRL]))
    return cases


def quick_cases() -> list[tuple[Case, list[tuple[str, str]]]]:
    return [(Case("dialogue", "full", "live"), [DPOLAB, TRL, DPOLAB_IDPO]),
            (Case("answer", "full", "live"), [DPOLAB, TRL]),
            (Case("dialogue", "full", "precomputed"), [DPOLAB, TRL]),
            (Case("dialogue", "lora", "live"), [DPOLAB, TRL])]


def intermediate_layers(num_layers: int) -> list[int]:
    """Two intermediate layers, at one half and three quarters of the depth."""
    return sorted({max(1, num_layers // 2), max(1, (3 * num_layers) // 4)} - {num_layers}) or [1]


def run_one(spec: dict, workdir: Path, *, env: dict) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = workdir / "spec.json", workdir / "result.json"
    spec_file.write_text(json.dumps(spec))
    log = workdir / "log.txt"
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, str(HERE / "_worker.py"), str(spec_file), str(result_file)],
                              env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"run failed ({spec['impl']} {spec['case']}): see {log}\n{tail}")
    return json.loads(result_file.read_text())


# ----------------------------------------------------------------------------------------------
# Figures of one run
# ----------------------------------------------------------------------------------------------


def model_flops_per_pair(record: dict, tokens: dict[str, float]) -> float:
    """The matrix-multiply FLOPs a pair needs, whoever computes it (attention scores left out).

    One forward pass of the model costs F = 2·(N_body·T + N_head·T_c·(1 + k)): the transformer
    blocks (N_body parameters: everything but the input embedding and the output head) see the T
    tokens of the pair (prompt once + chosen + rejected, BOS and EOS included); the output head
    (N_head = vocabulary × hidden) is needed only at the T_c positions that predict a completion
    token, once for the final layer and once for each of the k intermediate layers. Training
    costs 3F (forward, gradients of the activations and of the weights); under LoRA 2F plus the
    adapters' 6·N_lora·T (frozen weights need no weight gradients). A live reference adds F."""
    spec, checksum = record["spec"], record["start_checksum"]
    shape = workload.ModelShape(**spec["shape"])
    n_head = shape.vocab * shape.hidden
    lora = spec["tuning"] == "lora"
    n_base = checksum["total"] - (checksum["trainable"] if lora else 0)
    n_body = n_base - 2 * n_head
    forward = 2 * (n_body * tokens["all"] + n_head * tokens["completion"] * (1 + len(spec["layers"])))
    flops = 2 * forward + 6 * checksum["trainable"] * tokens["all"] if lora else 3 * forward
    if spec["reference"] == "live":
        flops += forward
    return flops


def figures(record: dict, tokens: dict[str, float], peak_gflops: float) -> dict:
    """Throughput over the steps after the first (allocations, kernel choice): useful tokens per
    second, and pairs per second as that over the data set's mean useful tokens per pair (so that
    a run whose timed batches happen to be short or long is not favoured)."""
    ends = record["step_ends"]
    steps = len(ends) - 1
    timed = ends[-1] - ends[1]
    tokens_per_s = sum(record["batch_tokens"][1:steps]) / timed
    pairs_per_s = tokens_per_s / tokens["all"]
    peak = max(record["peak_rss_setup_mib"], record["peak_rss_train_mib"])
    return {
        "pairs_per_s": pairs_per_s,
        "peak_rss_mib": peak,
        "peak_rss_over_imports_mib": peak - record["rss_imports_mib"],
        "peak_rss_train_mib": record["peak_rss_train_mib"],
        "mfu": pairs_per_s * model_flops_per_pair(record, tokens) / (peak_gflops * 1e9),
        # against the matmul speed measured at this run's start and end: corrects for the load
        "mfu_own": pairs_per_s * model_flops_per_pair(record, tokens) / (run_peak_gflops(record) * 1e9),
        "loadavg": [record["loadavg_start"][0], record["loadavg_end"][0]],
    }


def run_peak_gflops(record: dict) -> float:
    return (record["matmul_peak_gflops"] + record.get("matmul_peak_end_gflops", record["matmul_peak_gflops"])) / 2


def loss_difference(a: dict, b: dict) -> float:
    """Largest |loss_a − loss_b| over the steps both logged (same weights, data and order)."""
    la = {x["step"]: x["loss"] for x in a.get("logs", [])}
    lb = {x["step"]: x["loss"] for x in b.get("logs", [])}
    common = sorted(set(la) & set(lb))
    return max((abs(la[s] - lb[s]) for s in common), default=float("nan"))


def median(values):
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------------------------
# Table and targets
# ----------------------------------------------------------------------------------------------

TARGETS = """\
- plain DPO, full fine-tuning, live reference: dialogue ≥ 2× TRL pairs/s and ≤ 0.5× peak memory; answer ≥ 1.3× and ≤ 0.5×
- precomputed reference (full fine-tuning): ≥ 1.3× TRL pairs/s
- intermediate DPO, 2 layers: ≤ 1.15× the time and ≤ 1.1× the peak memory of dpolab's plain DPO
- MFU: aim ≥ 40 % of the measured matmul peak"""


def summarise(results: dict, peak_gflops: float, tokens: dict) -> dict:
    """Medians per (case, implementation) and the ratios."""
    rows = {}
    for case_name, runs in results.items():
        regime = case_name.split("/")[0]
        per_impl = {}
        for key, records in runs.items():
            figs = [figures(r, tokens[regime], peak_gflops) for r in records]
            per_impl[key] = {name: median([f[name] for f in figs]) for name in
                             ("pairs_per_s", "peak_rss_mib", "peak_rss_over_imports_mib", "peak_rss_train_mib", "mfu",
                              "mfu_own")}
            per_impl[key]["repeats"] = len(figs)
            per_impl[key]["loadavg"] = [f["loadavg"] for f in figs]
        row = {"impl": per_impl}
        ours, theirs = per_impl.get("dpolab/dpo"), per_impl.get("trl/dpo")
        if ours and theirs:
            row["speed_ratio"] = ours["pairs_per_s"] / theirs["pairs_per_s"]
            row["speed_ratio_load_corrected"] = ours["mfu_own"] / theirs["mfu_own"]
            row["memory_ratio"] = ours["peak_rss_mib"] / theirs["peak_rss_mib"]
            row["memory_increment_ratio"] = ours["peak_rss_over_imports_mib"] / theirs["peak_rss_over_imports_mib"]
            row["max_loss_difference"] = max(loss_difference(a, b) for a, b in
                                             zip(runs["dpolab/dpo"], runs["trl/dpo"]))
        idpo = per_impl.get("dpolab/idpo")
        if ours and idpo:
            row["idpo_time_ratio"] = ours["pairs_per_s"] / idpo["pairs_per_s"]
            row["idpo_time_ratio_load_corrected"] = ours["mfu_own"] / idpo["mfu_own"]
            row["idpo_memory_ratio"] = idpo["peak_rss_mib"] / ours["peak_rss_mib"]
        rows[case_name] = row
    return rows


def verdicts(rows: dict) -> list[str]:
    out = []

    def check(name, value, ok, text):
        if value is not None:
            out.append(f"{'MET   ' if ok(value) else 'MISSED'} {name}: {text.format(value)}")

    for regime, speed in (("dialogue", 2.0), ("answer", 1.3)):
        row = rows.get(f"{regime}/full/live", {})
        check(f"{regime} full live speed ≥ {speed}×", row.get("speed_ratio"), lambda v, s=speed: v >= s, "{:.2f}×")
        check(f"{regime} full live peak memory ≤ 0.5×", row.get("memory_ratio"), lambda v: v <= 0.5, "{:.2f}×")
        row = rows.get(f"{regime}/full/precomputed", {})
        check(f"{regime} full precomputed speed ≥ 1.3×", row.get("speed_ratio"), lambda v: v >= 1.3, "{:.2f}×")
    for name, row in rows.items():
        check(f"{name} intermediate DPO time ≤ 1.15×", row.get("idpo_time_ratio"), lambda v: v <= 1.15, "{:.2f}×")
        check(f"{name} intermediate DPO memory ≤ 1.1×", row.get("idpo_memory_ratio"), lambda v: v <= 1.1, "{:.2f}×")
        check(f"{name} losses agree to 1e-4", row.get("max_loss_difference"), lambda v: v <= 1e-4, "max |Δloss| {:.1e}")
    mfus = [impl["mfu"] for row in rows.values() for key, impl in row["impl"].items() if key.startswith("dpolab")]
    if mfus:
        check("dpolab MFU ≥ 40 %", max(mfus), lambda v: v >= 0.4, "best {:.0%}")
    return out


def table(rows: dict) -> str:
    lines = ["| case | dpolab pairs/s | TRL pairs/s | speed × | (load-corrected) | dpolab peak RSS MiB "
             "| TRL peak RSS MiB | memory × | memory over imports × | MFU dpolab | MFU TRL | max Δloss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        ours, theirs = row["impl"].get("dpolab/dpo"), row["impl"].get("trl/dpo")
        if not (ours and theirs):
            continue
        lines.append(f"| {name} | {ours['pairs_per_s']:.3f} | {theirs['pairs_per_s']:.3f} | **{row['speed_ratio']:.2f}** "
                     f"| ({row['speed_ratio_load_corrected']:.2f}) | {ours['peak_rss_mib']:.0f} | {theirs['peak_rss_mib']:.0f} | **{row['memory_ratio']:.2f}** "
                     f"| {row['memory_increment_ratio']:.2f} | {ours['mfu']:.1%} | {theirs['mfu']:.1%} "
                     f"| {row['max_loss_difference']:.1e} |")
    idpo = [(n, r) for n, r in rows.items() if "idpo_time_ratio" in r]
    if idpo:
        lines += ["", "| case | DPO pairs/s | intermediate DPO pairs/s | time × | (load-corrected) "
                  "| DPO peak RSS MiB | intermediate DPO peak RSS MiB | memory × |", "|---|---|---|---|---|---|---|---|"]
        for name, row in idpo:
            ours, mid = row["impl"]["dpolab/dpo"], row["impl"]["dpolab/idpo"]
            lines.append(f"| {name} | {ours['pairs_per_s']:.3f} | {mid['pairs_per_s']:.3f} "
                         f"| **{row['idpo_time_ratio']:.2f}** | ({row['idpo_time_ratio_load_corrected']:.2f}) | {ours['peak_rss_mib']:.0f} | {mid['peak_rss_mib']:.0f} "
                         f"| **{row['idpo_memory_ratio']:.2f}** |")
    return "\n".join(lines)


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
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="four cases, one repeat, fewer steps")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="pairs per step (per_device_train_batch_size)")
    p.add_argument("--steps", type=int, default=None, help="steps per run; the first is not timed (default 8, quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="runs per implementation and case (default 3, quick 1)")
    p.add_argument("--regimes", nargs="+", default=list(workload.REGIMES), choices=list(workload.REGIMES))
    p.add_argument("--only", nargs="*", default=None, help="case names to run, e.g. dialogue/full/live")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on both sides (TRL's default is on)")
    p.add_argument("--dpolab-training", default="{}", help="extra JSON training args for dpolab only")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "dpolab-bench")
    p.add_argument("--json", type=Path, default=None, help="write every run's record here")
    p.add_argument("--report", type=Path, default=None, help="print the table of a --json file again, and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        report(saved["info"], saved["runs"])
        return 0
    steps = args.steps or (4 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 3)
    cases = quick_cases() if args.quick else all_cases(args.regimes)
    if args.only:
        cases = [(c, impls) for c, impls in cases if c.name in args.only]
    shape = workload.ModelShape(hidden=args.hidden, layers=args.layers)
    paths = workload.prepare(args.workdir / "workload", shape, pairs=steps * args.batch)
    tokens = {}
    for regime in workload.REGIMES:
        counts = [workload.pair_token_counts(json.loads(x)) for x in Path(paths[regime]).read_text().splitlines()]
        tokens[regime] = {"all": sum(map(sum, counts)) / len(counts),
                          "completion": sum(c + r for _, c, r in counts) / len(counts)}
    import torch

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    info = {**machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "shape": vars(shape) | {"heads": shape.heads, "intermediate": shape.intermediate},
            "batch": args.batch, "steps": steps, "repeats": repeats, "dtype": dtype,
            "loadavg_start": os.getloadavg(), "tokens_per_pair": tokens}
    print(json.dumps(info, indent=1), flush=True)

    results: dict[str, dict[str, list]] = {}
    for rep in range(repeats):
        for case, impls in cases:
            order = impls if rep % 2 == 0 else impls[::-1]  # A B, then B A: load drifts hit both
            for impl, method in order:
                spec = {"impl": impl, "case": case.name, "tuning": case.tuning, "reference": case.reference,
                        "layers": intermediate_layers(args.layers) if method == "idpo" else [],
                        "model": paths["model"], "data": paths[case.regime], "shape": vars(shape), "dtype": dtype,
                        "beta": 0.1, "batch": args.batch, "steps": steps, "lr": args.lr, "seed": 0,
                        "gradient_checkpointing": args.gradient_checkpointing, "threads": args.threads,
                        "dpolab_training": json.loads(args.dpolab_training) if impl == "dpolab" else {},
                        "workdir": str(args.workdir / "runs" / f"{case.name.replace('/', '-')}-{impl}-{method}-{rep}")}
                record = run_one(spec, Path(spec["workdir"]), env=env)
                results.setdefault(case.name, {}).setdefault(f"{impl}/{method}", []).append(record)
                f = figures(record, tokens[case.regime], record["matmul_peak_gflops"])
                print(f"[{rep + 1}/{repeats}] {case.name:28s} {impl}/{method:5s} {f['pairs_per_s']:7.3f} pairs/s  "
                      f"peak RSS {f['peak_rss_mib']:6.0f} MiB  load {f['loadavg'][0]:.2f}->{f['loadavg'][1]:.2f}",
                      flush=True)

    info["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "runs": results}, indent=1))
    report(info, results)
    return 0


def report(info: dict, results: dict) -> dict:
    """Print the machine, the table and the targets; returns the summary rows."""
    peak = max(max(r["matmul_peak_gflops"], r.get("matmul_peak_end_gflops", 0.0))
               for runs in results.values() for rs in runs.values() for r in rs)
    rows = summarise(results, peak, info["tokens_per_pair"])
    shape = info["shape"]
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, transformers "
          f"{info['transformers']}, TRL {info['trl']}; {info['date']}")
    print(f"model: Llama, vocab {shape['vocab']}, hidden {shape['hidden']}, {shape['layers']} layers, {info['dtype']}; "
          f"batch {info['batch']} pairs; {info['steps'] - 1} timed steps × {info['repeats']} repeats; "
          f"matmul peak {peak:.1f} GFLOP/s; load average {info['loadavg_start'][0]:.2f} -> "
          f"{info['loadavg_end'][0]:.2f}\n")
    print(table(rows))
    print("\nTargets:\n" + "\n".join(verdicts(rows)))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
