"""The benchmark's targets (issue 18) and the verdict on each, from the rows of `_report.summarise`."""

from __future__ import annotations

TARGETS = """\
- toy shape: every speed and memory ratio no worse than the 2026-12-01 record (`TOY_RECORD`), within
  the repeat-to-repeat noise of these runs (speed ≥ 0.9× the recorded ratio, memory ≤ 1.05×)
- SmolLM2-135M shape, full fine-tuning, live reference, dialogue-like pairs: ≥ 2.5× TRL pairs/s and
  ≤ 0.4× its peak memory
- intermediate DPO, 2 layers: time within 5 % of what the FLOP count predicts, at every shape
- MFU of plain DPO ≥ 50 % of the measured matmul peak, at every shape"""

# dpolab ÷ TRL (pairs/s, peak memory) in the 2026-12-01 record of the toy shape
TOY_RECORD = {
    "dialogue/full/live": (7.70, 0.22),
    "dialogue/full/precomputed": (8.45, 0.21),
    "dialogue/lora/live": (9.51, 0.20),
    "dialogue/lora/precomputed": (9.82, 0.20),
    "answer/full/live": (3.57, 0.24),
    "answer/full/precomputed": (3.79, 0.23),
    "answer/lora/live": (5.10, 0.23),
    "answer/lora/precomputed": (5.33, 0.23),
}


def verdicts(rows: dict, shape_name: str = "toy") -> list[str]:
    out = []

    def check(name, value, ok, text):
        if value is not None:
            out.append(f"{'MET   ' if ok(value) else 'MISSED'} {name}: {text.format(value)}")

    if shape_name == "toy":
        for case, (speed, memory) in TOY_RECORD.items():
            row = rows.get(case, {})
            check(
                f"{case} speed no worse than the record's {speed:.2f}× (≥ {0.9 * speed:.2f}×)",
                row.get("speed_ratio"),
                lambda v, s=speed: v >= 0.9 * s,
                "{:.2f}×",
            )
            check(
                f"{case} peak memory no worse than the record's {memory:.2f}× (≤ {1.05 * memory:.2f}×)",
                row.get("memory_ratio"),
                lambda v, m=memory: v <= 1.05 * m,
                "{:.2f}×",
            )
    if shape_name == "smollm2-135m":
        row = rows.get("dialogue/full/live", {})
        check("dialogue full live speed ≥ 2.5×", row.get("speed_ratio"), lambda v: v >= 2.5, "{:.2f}×")
        check("dialogue full live peak memory ≤ 0.4×", row.get("memory_ratio"), lambda v: v <= 0.4, "{:.2f}×")
    for name, row in rows.items():
        check(
            f"{name} intermediate DPO time within 5 % of the FLOP count's {row.get('idpo_flops_ratio', 0):.2f}×",
            row.get("idpo_time_ratio"),
            lambda v, r=row: abs(v / r["idpo_flops_ratio"] - 1) <= 0.05,
            "{:.2f}×",
        )
        check(
            f"{name} losses agree to 1e-4 (steps 1-2)",
            row.get("loss_difference_first_steps"),
            lambda v: v <= 1e-4,
            "max |Δloss| {:.1e}",
        )
        check(
            f"{name} step-1 log-probs agree to 1e-5 (relative)",
            row.get("logps_difference"),
            lambda v: v <= 1e-5,
            "{:.1e}",
        )
        check(
            f"{name} same trainable weights at the start",
            row.get("start_difference"),
            lambda v: v <= 1e-9,
            "relative difference of their sums {:.0e}",
        )
    # judged on plain DPO in every case: the lowest counts (intermediate DPO's extra head
    # projections run at a higher rate and would flatter the figure)
    mfus = [row["impl"]["dpolab/dpo"]["mfu"] for row in rows.values() if "dpolab/dpo" in row["impl"]]
    if mfus:
        check("dpolab MFU ≥ 50 % (plain DPO, every case)", min(mfus), lambda v: v >= 0.5, "lowest {:.1%}")
    return out
