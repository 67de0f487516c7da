"""The demo's report: whether the papers' findings showed at this scale, the table per model,
plots, and `summary.json` with every figure of the table keyed by model name."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from dpolab import __version__
from dpolab.analysis.plots import plot_layers, plot_tokens
from dpolab.data.io import write_json_atomic
from dpolab.report.plots import plot_curves
from dpolab.report.render import Heading, Image, Para, Table, to_html, to_markdown
from dpolab.report.runs import load_run

COLUMNS = [  # (key in the table row, header)
    ("pairs", "trained on"),
    ("accuracy/greedy", "accuracy (greedy)"),
    ("accuracy/sampled", "accuracy (T 0.3)"),
    ("chosen_logp_change", "Δ log p(chosen) vs SFT"),
    ("tokens/chosen_before_m", "chosen tokens before m"),
    ("tokens/chosen_from_m", "chosen tokens from m"),
    ("rewards/accuracies", "rewards/accuracies (eval)"),
    ("dpo_likelihood", "DPO likelihood (final layer)"),
    ("vs_sft/win", "vs SFT: win"),
    ("vs_sft/lose", "lose"),
    ("vs_sft/tie", "tie"),
]


def findings(results: dict[str, Any], intermediate_layers: list[int]) -> list[dict[str, Any]]:
    """The two findings the demo is meant to show, each with `shown` (True / False / None when it
    could not be checked) and a sentence with the numbers. Nothing here is forced."""
    table = results["models"]
    out = []
    dpo, dpop = table.get("dpo-low"), table.get("dpop-low")
    if dpo and dpop:
        d, p = dpo["chosen_logp_change"], dpop["chosen_logp_change"]
        shown = d < 0 <= p
        out.append({
            "finding": "Smaug: on low-edit-distance pairs DPO lowers the chosen completion's log-prob below the "
                       "reference's, DPOP keeps it at or above",
            "shown": shown,
            "text": (f"DPO changed log p(chosen) by {d:+.3f} nats against the SFT reference, DPOP by {p:+.3f}. "
                     + ("Reproduced." if shown else
                        "Partly: DPOP kept it higher than DPO did." if p > d else "Not reproduced at this scale.")),
        })
    layers = results.get("layers", {}).get("low")
    if layers and "idpo-low" in layers["models"] and "dpo-low" in layers["models"]:
        numbers = layers["layers"]
        idpo = layers["models"]["idpo-low"]["dpo_likelihood"]
        plain = layers["models"]["dpo-low"]["dpo_likelihood"]
        at = {k: idpo[numbers.index(k)] - plain[numbers.index(k)] for k in intermediate_layers if k in numbers}
        above = all(v > 0 for v in at.values())
        final_ok = idpo[-1] >= plain[-1]
        peak = numbers[max(range(len(idpo)), key=idpo.__getitem__)]
        gaps = ", ".join(f"layer {k}: {v:+.4f}" for k, v in at.items())
        out.append({
            "finding": "Intermediate DPO: the likelihood rises at the chosen intermediate layers over DPO's, and the "
                       "final layer's is at least DPO's",
            "shown": above and final_ok,
            "text": (f"Intermediate-DPO minus DPO likelihood at the chosen layers: {gaps}; final layer: "
                     f"{idpo[-1]:.3f} vs DPO {plain[-1]:.3f}. The intermediate-DPO curve peaks at layer {peak} of "
                     f"{numbers[-1]}" + (" (a chosen layer)." if peak in intermediate_layers else
                                         " (not a chosen layer: the peak itself did not move there).")
                     + (" Reproduced." if above and final_ok else " Not fully reproduced at this scale.")),
        })
    return out


def write_demo_report(out: Path, results: dict[str, Any], *, run_dirs: dict[str, Path], task: dict[str, Any],
                      timings: dict[str, float], command: str, intermediate_layers: list[int],
                      quick: bool = False) -> dict[str, Any]:
    """Write report.html, report.md, plots/ and summary.json under `out`; returns the summary."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    found = findings(results, intermediate_layers)
    table = results["models"]
    blocks: list = [
        Heading(1, "dpolab demo"),
        Para(f"{datetime.date.today().isoformat()}, dpolab {__version__}, `{command}`. A tiny Llama trained on "
             f"generated arithmetic problems: SFT on the correct solutions, then preference training from the SFT "
             f"model on pairs whose rejected solution has one intermediate result wrong (low edit distance, "
             f"{100 * task['edit_distance']['low/mean']:.1f} % on average) or a wrong chain to a wrong answer (high, "
             f"{100 * task['edit_distance']['high/mean']:.1f} %)."),
        Heading(2, "What it shows"),
    ]
    if quick:
        blocks.append(Para("This is a --quick run: every stage runs, but the model is too small and trained too "
                           "briefly for the findings below to mean anything. Run `dpolab demo` for the real thing."))
    for f in found:
        verdict = {True: "shown", False: "not shown", None: "not checked"}[f["shown"]]
        blocks.append(Para(f"{f['finding']}: {verdict}. {f['text']}"))
    blocks += [Heading(2, "Models"),
               Table(["model", *(h for _, h in COLUMNS)],
                     [[name, *(row.get(k) for k, _ in COLUMNS)] for name, row in table.items()]),
               Para("Accuracy: exact match of the final answer on held-out problems. Δ log p(chosen): mean over eval "
                    "pairs of log π(y_w|x) − log π_SFT(y_w|x) (summed over the completion). Token columns: mean "
                    "per-token log-prob of the chosen solution before / from the first token where chosen and "
                    "rejected differ (Smaug, Fig. 3). Win/lose/tie: the exact-answer judge, both orders.")]
    if results.get("winrates"):
        blocks += [Heading(2, "Pairwise comparisons (greedy answers, exact-answer judge)"),
                   Table(["comparison", "win", "lose", "tie", "win rate (ties ½)"],
                         [[k, v["wins"], v["losses"], v["ties"], v["win_rate"]] for k, v in results["winrates"].items()])]
    images = []
    for kind, result in results.get("layers", {}).items():
        images.append((plot_layers(result, plots / f"layers-{kind}.png"),
                       f"DPO likelihood per layer against the SFT reference ({kind}-edit eval pairs)"))
    if results.get("tokens"):
        images.append((plot_tokens(results["tokens"], plots / "tokens-low.png"),
                       "Mean per-token log-prob of the chosen solution before / from the first differing token"))
    runs = [load_run(path, name) for name, path in run_dirs.items()]
    for key, title in (("rewards/accuracies", "eval rewards/accuracies"), ("loss", "loss"),
                       ("logps/chosen", "log p(chosen)")):
        path = plot_curves([r for r in runs if r.name != "sft"], key, plots / f"curve-{key.replace('/', '-')}.png",
                           mark_peak=key == "rewards/accuracies", title=title)
        if path:
            images.append((path, f"training curves: {title}"))
    path = plot_curves([r for r in runs if r.name == "sft"], "loss", plots / "curve-sft-loss.png", title="SFT loss")
    if path:
        images.append((path, "SFT loss"))
    blocks += [Heading(2, "Plots"), *(Image(p, c) for p, c in images if p)]
    blocks += [Heading(2, "Time per stage"), Table(["stage", "seconds"], [[k, round(v, 1)] for k, v in timings.items()])]
    (out / "report.html").write_text(to_html(blocks, "dpolab demo"), encoding="utf-8")
    (out / "report.md").write_text(to_markdown(blocks, out), encoding="utf-8")
    summary = {"date": datetime.date.today().isoformat(), "command": command, "dpolab": __version__, "quick": quick,
               "models": table, "findings": found, "task": task, "winrates": results.get("winrates", {}),
               "timings_s": timings}
    write_json_atomic(out / "summary.json", summary)
    return summary
