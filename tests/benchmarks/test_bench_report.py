"""The benchmark's arithmetic (`benchmarks/_report.py`, `_workload.py`): the FLOP count of a pair,
the attention pairs it needs, throughput from step times, and the named model shapes, worked by hand."""

from __future__ import annotations

import pytest
import torch

from dpolab.modeling.attention import segment_attention_mask
from dpolab.modeling.collate import PairCollator


def test_attention_pairs_are_the_mask_s_allowed_entries():
    from _report import attention_pairs

    # prompt 3, chosen 2, rejected 1: the prompt causally (1 + 2 + 3 = 6), the chosen tokens see
    # the prompt and themselves causally (2·3 + 1 + 2 = 9), the rejected token the prompt and
    # itself (3 + 1 = 4): 19
    assert attention_pairs(3, 2, 1) == 19
    for p, c, r in [(3, 2, 1), (5, 1, 4), (1, 7, 7), (4, 0, 2)]:
        batch = PairCollator(pad_token_id=0)(
            [{"prompt_ids": [9] * p, "chosen_ids": [8] * c, "rejected_ids": [7] * r}]
        )
        mask = segment_attention_mask(batch["segment_ids"], torch.float32)
        assert int((mask == 0).sum()) == attention_pairs(p, c, r), (p, c, r)


def _record(shape: dict, *, total: int, trainable: int, tuning="full", reference="live", layers=()):
    return {
        "spec": {"shape": shape, "tuning": tuning, "reference": reference, "layers": list(layers)},
        "start_checksum": {"total": total, "trainable": trainable, "abs_sum": 1.0},
    }


TOY = {"hidden": 256, "layers": 4, "vocab": 32000}
TOKENS = {"all": 500, "completion": 200, "attention": 100_000}


def test_model_flops_of_a_pair_worked_by_hand():
    from _report import model_flops_per_pair

    # untied toy: the head and the embedding are 32,000 × 256 = 8,192,000 each; blocks 3,000,000
    total = 2 * 8_192_000 + 3_000_000
    matmuls = 2 * (3_000_000 * 500 + 8_192_000 * 200)  # 6.2768e9: blocks at every token, head at T_c
    attention = 4 * 4 * 256 * 100_000  # 4·L·d·A = 4.096e8
    full_live = _record(TOY, total=total, trainable=total)
    # training 3F and the live reference F
    assert model_flops_per_pair(full_live, TOKENS) == pytest.approx(4 * (matmuls + attention))
    precomputed = _record(TOY, total=total, trainable=total, reference="precomputed")
    assert model_flops_per_pair(precomputed, TOKENS) == pytest.approx(3 * (matmuls + attention))
    # two intermediate layers: two more head projections of the 200 completion positions
    idpo = _record(TOY, total=total, trainable=total, layers=(2, 3))
    assert model_flops_per_pair(idpo, TOKENS) == pytest.approx(
        4 * (matmuls + 2 * 2 * 8_192_000 * 200 + attention)
    )
    # LoRA with 100,000 adapter weights: frozen base 2F, the adapters 6·N·T, attention 3×, reference F
    lora = _record(TOY, total=total + 100_000, trainable=100_000, tuning="lora")
    assert model_flops_per_pair(lora, TOKENS) == pytest.approx(
        2 * matmuls + 6 * 100_000 * 500 + 3 * attention + matmuls + attention
    )
    # a file written before attention was counted has no "attention" entry: 0
    assert model_flops_per_pair(full_live, {"all": 500, "completion": 200}) == pytest.approx(4 * matmuls)


def test_a_tied_head_is_counted_once():
    from _report import model_flops_per_pair

    tied = {"hidden": 576, "layers": 30, "vocab": 49_152, "tied": True}
    head = 49_152 * 576
    total = head + 106_000_000  # the embedding is the head
    tokens = {"all": 500, "completion": 200, "attention": 0}
    flops = model_flops_per_pair(_record(tied, total=total, trainable=total), tokens)
    assert flops == pytest.approx(4 * 2 * (106_000_000 * 500 + head * 200))


def test_named_shapes_have_their_models_parameter_counts():
    import _workload as workload

    # SmolLM2-135M: 134,515,008 parameters; Qwen2.5-0.5B: 494,032,768 (both with the tied head)
    for name, expected in (("smollm2-135m", 134_515_008), ("qwen2.5-0.5b", 494_032_768)):
        shape = workload.SHAPES[name]
        with torch.device("meta"):
            model = workload.build_model(shape)
        assert sum(p.numel() for p in model.parameters()) == expected, name
        assert model.config.tie_word_embeddings
    toy = workload.SHAPES["toy"]
    assert (toy.heads, toy.kv_heads, toy.intermediate, toy.tied) == (4, 4, 672, False)


def test_pairs_per_second_from_step_times():
    from _report import figures

    record = {
        **_record(TOY, total=2 * 8_192_000 + 3_000_000, trainable=2 * 8_192_000 + 3_000_000),
        # steps end at 1, 3 and 5 s; the first step (ending at 1 s) is not timed
        "step_ends": [0.0, 1.0, 3.0, 5.0],
        "batch_tokens": [2000, 2400, 1600],
        "peak_rss_setup_mib": 900.0,
        "peak_rss_train_mib": 1200.0,
        "rss_imports_mib": 300.0,
        "matmul_peak_gflops": 100.0,
        "loadavg_start": [1.0],
        "loadavg_end": [2.0],
    }
    f = figures(record, TOKENS, peak_gflops=100.0)
    # steps 2 and 3 trained 2400 + 1600 useful tokens in 5 − 1 = 4 s: 1000 tokens/s, 500 per pair
    assert f["pairs_per_s"] == pytest.approx(2.0)
    assert (f["peak_rss_mib"], f["peak_rss_over_imports_mib"]) == (1200.0, 900.0)
    # MFU: 2 pairs/s × the pair's FLOPs ÷ 100 GFLOP/s
    assert f["mfu"] == pytest.approx(2.0 * 4 * (6.2768e9 + 4.096e8) / 100e9)


def test_verdicts_on_the_issue_s_targets():
    from _targets import verdicts

    row = {
        "impl": {"dpolab/dpo": {"mfu": 0.52}},
        "speed_ratio": 2.6,
        "memory_ratio": 0.41,
        "idpo_time_ratio": 1.25,
        "idpo_flops_ratio": 1.20,  # 1.25 / 1.20 = 1.042: within 5 %
    }
    lines = verdicts({"dialogue/full/live": row}, "smollm2-135m")
    assert "MET    dialogue full live speed ≥ 2.5×: 2.60×" in lines
    assert "MISSED dialogue full live peak memory ≤ 0.4×: 0.41×" in lines
    assert (
        "MET    dialogue/full/live intermediate DPO time within 5 % of the FLOP count's 1.20×: 1.25×" in lines
    )
    assert "MET    dpolab MFU ≥ 50 % (plain DPO, every case): lowest 52.0%" in lines
    row["idpo_time_ratio"] = 1.27  # 1.058: outside
    assert any(
        x.startswith("MISSED dialogue/full/live intermediate DPO")
        for x in verdicts({"dialogue/full/live": row})
    )
    # the toy shape is held to the 2026-12-01 record (speed ≥ 0.9×, memory ≤ 1.05× its ratios)
    toy = verdicts({"answer/full/live": {"impl": {}, "speed_ratio": 3.3, "memory_ratio": 0.25}}, "toy")
    assert toy == [
        "MET    answer/full/live speed no worse than the record's 3.57× (≥ 3.21×): 3.30×",
        "MET    answer/full/live peak memory no worse than the record's 0.24× (≤ 0.25×): 0.25×",
    ]
