"""Figures of the benchmark's runs and the tables: throughput, peak memory, MFU, the loss check,
the ratios dpolab / TRL and the verdict on each target."""

from __future__ import annotations

import statistics
from pathlib import Path

import _workload as workload
from _targets import verdicts

# the reference-free methods measured against dpolab's plain DPO (train_vs_trl.REFERENCE_FREE)
REFERENCE_FREE = ("simpo", "orpo")

# ----------------------------------------------------------------------------------------------
# Figures of one run
# ----------------------------------------------------------------------------------------------


def attention_pairs(prompt: int, chosen: int, rejected: int) -> int:
    """The (query, key) pairs a pair's attention needs: the prompt causally, and each completion
    against the prompt and causally itself (never the other completion)."""

    def causal(n: int) -> int:
        return n * (n + 1) // 2

    return causal(prompt) + chosen * prompt + causal(chosen) + rejected * prompt + causal(rejected)


def model_flops_per_pair(record: dict, tokens: dict[str, float]) -> float:
    """The FLOPs a pair needs, whoever computes it: matrix products and attention scores.

    One forward pass of the model costs F = 2·(N_body·T + N_head·T_c·(1 + k)) + 4·L·d·A: the
    transformer blocks (N_body parameters: everything but the input embedding and the output head,
    counted once when they are tied) see the T tokens of the pair (prompt once + chosen + rejected,
    BOS and EOS included); the output head (N_head = vocabulary × hidden) is needed only at the T_c
    positions that predict a completion token, once for the final layer and once for each of the
    k intermediate layers; attention takes 2·d FLOPs for the score and 2·d for the weighted value
    of each of the A (query, key) pairs the pair needs (`attention_pairs`) in each of L layers (d:
    the heads × head dimension, the hidden size here). Training costs 3F (forward, gradients of the
    activations and of the weights); under LoRA 2F plus the adapters' 6·N_lora·T (frozen weights
    need no weight gradients) plus attention's backward (no weights: 2× its forward either way).
    A live reference adds F. Padding and masked attention scores are not counted."""
    spec, checksum = record["spec"], record["start_checksum"]
    shape = workload.ModelShape(**spec["shape"])
    n_head = shape.head_params
    lora = spec["tuning"] == "lora"
    n_base = checksum["total"] - (checksum["trainable"] if lora else 0)
    n_body = n_base - (1 if shape.tied else 2) * n_head
    matmuls = 2 * (n_body * tokens["all"] + n_head * tokens["completion"] * (1 + len(spec["layers"])))
    attention = 4 * shape.layers * shape.hidden * tokens.get("attention", 0.0)
    if lora:
        flops = 2 * matmuls + 6 * checksum["trainable"] * tokens["all"] + 3 * attention
    else:
        flops = 3 * (matmuls + attention)
    if spec["reference"] == "live":
        flops += matmuls + attention
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
    if "peak_cuda_train_mib" in record:  # on a GPU: its memory (allocated by torch), not the host's
        peak = max(record["peak_cuda_setup_mib"], record["peak_cuda_train_mib"])
    return {
        "pairs_per_s": pairs_per_s,
        "peak_rss_mib": peak,
        "peak_rss_over_imports_mib": peak
        - (0.0 if "peak_cuda_train_mib" in record else record["rss_imports_mib"]),
        "peak_rss_train_mib": record["peak_rss_train_mib"],
        "mfu": pairs_per_s * model_flops_per_pair(record, tokens) / (peak_gflops * 1e9),
        # pairs/s per GFLOP/s of matmul speed measured at this run's start and end: corrects for the load
        "pairs_per_s_own": pairs_per_s / run_peak_gflops(record),
        "loadavg": [record["loadavg_start"][0], record["loadavg_end"][0]],
    }


def run_peak_gflops(record: dict) -> float:
    return (
        record["matmul_peak_gflops"] + record.get("matmul_peak_end_gflops", record["matmul_peak_gflops"])
    ) / 2


def _logged(record: dict, key: str) -> dict[int, float]:
    return {x["step"]: x[key] for x in record.get("logs", []) if key in x}


def loss_difference(a: dict, b: dict, steps=None) -> float:
    """Largest |loss_a − loss_b| over `steps` (default: every step both logged). Same weights at
    step 1, and one update that is the same in exact arithmetic before step 2; later steps drift
    apart slowly, as Adam's normalisation magnifies the rounding of tiny gradients."""
    la, lb = _logged(a, "loss"), _logged(b, "loss")
    common = [s for s in sorted(set(la) & set(lb)) if steps is None or s in steps]
    return max((abs(la[s] - lb[s]) for s in common), default=float("nan"))


def logps_difference(a: dict, b: dict) -> float:
    """Largest relative difference of the step-1 `logps/chosen` and `logps/rejected` (the
    policy's summed log-probs with the same weights: a check of the forward pass alone)."""
    out = 0.0
    for key in ("logps/chosen", "logps/rejected"):
        x, y = _logged(a, key).get(1), _logged(b, key).get(1)
        if x is None or y is None:
            return float("nan")
        out = max(out, abs(x - y) / max(abs(y), 1e-12))
    return out


def median(values):
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------------------------
# Table and targets
# ----------------------------------------------------------------------------------------------


def summarise(results: dict, peak_gflops: float, tokens: dict) -> dict:
    """Medians per (case, implementation) and the ratios."""
    rows = {}
    for case_name, runs in results.items():
        regime = case_name.split("/")[0]
        per_impl = {}
        for key, records in runs.items():
            figs = [figures(r, tokens[regime], peak_gflops) for r in records]
            per_impl[key] = {
                name: median([f[name] for f in figs])
                for name in (
                    "pairs_per_s",
                    "peak_rss_mib",
                    "peak_rss_over_imports_mib",
                    "peak_rss_train_mib",
                    "mfu",
                    "pairs_per_s_own",
                )
            }
            per_impl[key]["repeats"] = len(figs)
            per_impl[key]["loadavg"] = [f["loadavg"] for f in figs]
        row = {"impl": per_impl}
        ours, theirs = per_impl.get("dpolab/dpo"), per_impl.get("trl/dpo")
        if ours and theirs:
            row["speed_ratio"] = ours["pairs_per_s"] / theirs["pairs_per_s"]
            row["speed_ratio_load_corrected"] = ours["pairs_per_s_own"] / theirs["pairs_per_s_own"]
            row["memory_ratio"] = ours["peak_rss_mib"] / theirs["peak_rss_mib"]
            row["memory_increment_ratio"] = (
                ours["peak_rss_over_imports_mib"] / theirs["peak_rss_over_imports_mib"]
            )
            pairs = list(zip(runs["dpolab/dpo"], runs["trl/dpo"]))
            row["loss_difference_first_steps"] = max(loss_difference(a, b, steps=(1, 2)) for a, b in pairs)
            row["max_loss_difference"] = max(loss_difference(a, b) for a, b in pairs)
            row["logps_difference"] = max(logps_difference(a, b) for a, b in pairs)
            # the trainable parameters' sums at the start (LoRA: the random adapters) must agree
            row["start_difference"] = max(
                abs(a["start_checksum"]["abs_sum"] - b["start_checksum"]["abs_sum"])
                / b["start_checksum"]["abs_sum"]
                for a, b in pairs
            )
        idpo = per_impl.get("dpolab/idpo")
        if ours and idpo:
            row["idpo_time_ratio"] = ours["pairs_per_s"] / idpo["pairs_per_s"]
            row["idpo_time_ratio_load_corrected"] = ours["pairs_per_s_own"] / idpo["pairs_per_s_own"]
            # model FLOPs per pair grow with the extra head projections: the ratio they predict
            row["idpo_flops_ratio"] = (idpo["mfu"] / idpo["pairs_per_s"]) / (
                ours["mfu"] / ours["pairs_per_s"]
            )
            row["idpo_memory_ratio"] = idpo["peak_rss_mib"] / ours["peak_rss_mib"]
        for method in REFERENCE_FREE:  # no reference: pairs/s and memory over plain DPO's (live reference)
            free = per_impl.get(f"dpolab/{method}")
            if ours and free:
                row[f"{method}_speed_ratio"] = free["pairs_per_s"] / ours["pairs_per_s"]
                row[f"{method}_memory_ratio"] = free["peak_rss_mib"] / ours["peak_rss_mib"]
        rows[case_name] = row
    return rows


def table(rows: dict) -> str:
    lines = [
        "| case | dpolab pairs/s | TRL pairs/s | speed × | (load-corrected) | dpolab peak memory MiB "
        "| TRL peak memory MiB | memory × | memory over imports × | MFU dpolab | MFU TRL "
        "| Δloss steps 1–2 (all) | Δlogps step 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        ours, theirs = row["impl"].get("dpolab/dpo"), row["impl"].get("trl/dpo")
        if not (ours and theirs):
            continue
        lines.append(
            f"| {name} | {ours['pairs_per_s']:.3f} | {theirs['pairs_per_s']:.3f} | **{row['speed_ratio']:.2f}** "
            f"| ({row['speed_ratio_load_corrected']:.2f}) | {ours['peak_rss_mib']:.0f} | {theirs['peak_rss_mib']:.0f} | **{row['memory_ratio']:.2f}** "
            f"| {row['memory_increment_ratio']:.2f} | {ours['mfu']:.1%} | {theirs['mfu']:.1%} "
            f"| {row['loss_difference_first_steps']:.1e} ({row['max_loss_difference']:.1e}) "
            f"| {row['logps_difference']:.0e} |"
        )
    idpo = [(n, r) for n, r in rows.items() if "idpo_time_ratio" in r]
    if idpo:
        lines += [
            "",
            "| case | DPO pairs/s | intermediate DPO pairs/s | time × | (load-corrected) "
            "| FLOP-count prediction × | time ÷ prediction | MFU DPO | MFU intermediate | DPO peak memory MiB "
            "| intermediate DPO peak memory MiB | memory × |",
            "|---" * 12 + "|",
        ]
        for name, row in idpo:
            ours, mid = row["impl"]["dpolab/dpo"], row["impl"]["dpolab/idpo"]
            lines.append(
                f"| {name} | {ours['pairs_per_s']:.3f} | {mid['pairs_per_s']:.3f} "
                f"| **{row['idpo_time_ratio']:.2f}** | ({row['idpo_time_ratio_load_corrected']:.2f}) "
                f"| {row['idpo_flops_ratio']:.2f} | {row['idpo_time_ratio'] / row['idpo_flops_ratio']:.2f} "
                f"| {ours['mfu']:.1%} | {mid['mfu']:.1%} "
                f"| {ours['peak_rss_mib']:.0f} | {mid['peak_rss_mib']:.0f} | **{row['idpo_memory_ratio']:.2f}** |"
            )
    return "\n".join(lines)


def reference_free_table(rows: dict) -> str:
    """SimPO's and ORPO's pairs/s and peak memory over dpolab's plain DPO with a live reference."""
    measured = [(n, r) for n, r in rows.items() if any(f"{m}_speed_ratio" in r for m in REFERENCE_FREE)]
    if not measured:
        return ""
    lines = [
        "| case | DPO pairs/s (live reference) | method | pairs/s | speed × DPO | peak memory MiB | memory × DPO |",
        "|---" * 7 + "|",
    ]
    for name, row in measured:
        ours = row["impl"]["dpolab/dpo"]
        for method in REFERENCE_FREE:
            if f"{method}_speed_ratio" in row:
                free = row["impl"][f"dpolab/{method}"]
                lines.append(
                    f"| {name} | {ours['pairs_per_s']:.3f} | {method} | {free['pairs_per_s']:.3f} "
                    f"| **{row[f'{method}_speed_ratio']:.2f}** | {free['peak_rss_mib']:.0f} "
                    f"| **{row[f'{method}_memory_ratio']:.2f}** |"
                )
    return "\n".join(lines)


def profile_table(results: dict) -> str:
    """CPU seconds of one profiled step by category, their shares, and the GFLOP/s of the matrix
    products in each (as the profiler counts their FLOPs), for each run."""
    categories = ["block matmuls", "output head", "attention", "other"]
    lines = ["| run | " + " | ".join(categories) + " | total s |", "|---" * (len(categories) + 2) + "|"]
    for case_name, runs in results.items():
        for key, records in runs.items():
            prof = records[0].get("profile", {})
            total = sum(v for k, v in prof.items() if not k.endswith("GFLOP")) or float("nan")
            cells = []
            for c in categories:
                seconds = prof.get(c, 0.0)
                cell = f"{seconds:.2f} s ({seconds / total:.0%})"
                if c in ("block matmuls", "output head") and prof.get(f"{c} GFLOP") and seconds > 0:
                    cell += f", {prof[f'{c} GFLOP'] / seconds:.0f} GFLOP/s"
                cells.append(cell)
            lines.append(f"| {case_name} {key} | " + " | ".join(cells) + f" | {total:.2f} |")
    return "\n".join(lines)


def matmul_peak(results: dict) -> float:
    """The best square product measured in any run (at its start or end), GFLOP/s."""
    return max(
        (
            max(r["matmul_peak_gflops"], r.get("matmul_peak_end_gflops", 0.0))
            for runs in results.values()
            for rs in runs.values()
            for r in rs
        ),
        default=float("nan"),
    )


def shape_text(info: dict) -> str:
    """'<shape name>: <its proportions>' of a run's info (an info written before shapes: the toy's)."""
    shape = workload.ModelShape(
        **{k: v for k, v in info["shape"].items() if k in workload.ModelShape.__dataclass_fields__}
    )
    return f"{info.get('shape_name', 'toy')}: {shape.describe()}"


def report(info: dict, results: dict) -> str:
    """The machine, the table and the targets of one shape, as Markdown (also printed)."""
    peak = matmul_peak(results)
    rows = summarise(results, peak, info["tokens_per_pair"])
    tokens = info["tokens_per_pair"]
    loads = [
        r[key][0]
        for runs in results.values()
        for rs in runs.values()
        for r in rs
        for key in ("loadavg_start", "loadavg_end")
    ]
    checkpointing = info.get("gradient_checkpointing")
    shape_name = info.get("shape_name", "toy")
    if shape_name == "toy" and (info["shape"]["hidden"], info["shape"]["layers"]) != (256, 4):
        shape_name = "toy (custom)"  # --hidden / --layers: the record's ratios are not this shape's
    text = "\n".join(
        [
            f"### {shape_text(info)}",
            "",
            f"- command: `{info['command']}`",
            f"- date: {info['date']}; machine: {info['cpu']}, {info['cores']} cores ({threads_text(info)})"
            + (f", {info['gpu']}" if info.get("gpu") else "")
            + f"; torch {info['torch']}, transformers {info['transformers']}, TRL {info['trl']}",
            f"- {info['dtype']}; batch {info['batch']} pairs; gradient checkpointing "
            f"{'on' if checkpointing else 'off'} on both sides; {info['steps'] - 1} timed steps (after one "
            f"untimed) × {info['repeats']} repeats, medians",
            "- useful tokens per pair, all (completion positions): "
            + ", ".join(f"{k} {v['all']:.0f} ({v['completion']:.0f})" for k, v in tokens.items()),
            "- memory: "
            + (
                "peak CUDA memory allocated by torch"
                if info.get("gpu")
                else "peak resident set of the process (VmHWM)"
            )
            + "; over imports: minus the resident set "
            "after the imports",
            f"- matmul peak (best square product measured in the runs): {peak:.1f} GFLOP/s; load average "
            f"{info['loadavg_start'][0]:.2f} at the start, {info['loadavg_end'][0]:.2f} at the end"
            + (f", {min(loads):.2f}–{max(loads):.2f} at the starts and ends of the runs" if loads else ""),
            *[f"- **failed**: {failure}" for failure in info.get("failures", [])],
            "",
            table(rows),
            *(["", free] if (free := reference_free_table(rows)) else []),
            "",
            "Targets:",
            "",
            "\n".join(f"    {line}" for line in verdicts(rows, shape_name)),
        ]
    )
    print("\n" + text)
    return text


def ratios(info: dict, results: dict) -> str:
    """The short table the README quotes: dpolab / TRL, and intermediate DPO / plain DPO."""
    peak = matmul_peak(results)
    rows = summarise(results, peak, info["tokens_per_pair"])
    lines = [
        "| case (regime/tuning/reference) | pairs/s, dpolab ÷ TRL | peak memory, dpolab ÷ TRL "
        "| intermediate DPO ÷ plain DPO, time / memory |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        speed = f"{row['speed_ratio']:.2f}×" if "speed_ratio" in row else ""
        memory = f"{row['memory_ratio']:.2f}×" if "memory_ratio" in row else ""
        idpo = (
            f"{row['idpo_time_ratio']:.2f}× / {row['idpo_memory_ratio']:.2f}×"
            if "idpo_time_ratio" in row
            else ""
        )
        lines.append(f"| {name} | {speed} | {memory} | {idpo} |")
    return (
        f"{shape_text(info)}; {info['date'][:10]}, {info['cpu']} ({info['cores']} cores), {threads_text(info)}, "
        f"TRL {info['trl']}, "
        f"load average {info['loadavg_start'][0]:.1f} at the start, {info['loadavg_end'][0]:.1f} at the end "
        f"(`{info['command']}`):\n\n" + "\n".join(lines)
    )


def threads_text(info: dict) -> str:
    threads = info.get("threads")
    if threads is None and "--threads" in info["command"]:
        threads = int(info["command"].split("--threads")[1].split()[0])
    return f"{threads} torch thread{'s' if threads != 1 else ''} per run" if threads else "all cores per run"


def update_results(path: Path, marker: str, text: str) -> None:
    """Replace what lies between `<!-- marker:start -->` and `<!-- marker:end -->` in `path`."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = path.read_text(encoding="utf-8")
    if start not in content or end not in content:
        raise SystemExit(f"{path} has no {start} ... {end} block")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")
