"""`benchmarks/gpu_check.py` without a GPU: its prerequisite check (one line naming what is
missing), its tables from a record (worked by hand), the record written as JSON and Markdown and
put into RESULTS.md's block, and its bf16 section run for real on a CPU with a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
SHAPE = {"hidden": 64, "layers": 2, "vocab": 32000, "heads": 1, "kv_heads": 1, "intermediate": 160}
TOTAL = 2 * 32000 * 64 + 100_000  # untied embedding and head, and the blocks
TOKENS = {"dialogue": {"all": 500.0, "completion": 200.0, "attention": 50_000.0}}


def _run(impl, method, *, seconds_per_step, peak_mib, losses, layers=()):
    """A worker's record: 4 steps of 2000 useful tokens (4 pairs of 500), the first untimed."""
    ends = [0.0] + [1.0 + seconds_per_step * i for i in range(4)]
    return {
        "spec": {
            "impl": impl,
            "method": method,
            "shape": SHAPE,
            "tuning": "full",
            "reference": "live",
            "layers": list(layers),
        },
        "start_checksum": {"total": TOTAL, "trainable": TOTAL, "abs_sum": 123.0},
        "step_ends": ends,
        "batch_tokens": [2000] * 4,
        "peak_rss_setup_mib": 100.0,
        "peak_rss_train_mib": peak_mib,
        "peak_cuda_setup_mib": 50.0,
        "peak_cuda_train_mib": peak_mib,
        "rss_imports_mib": 300.0,
        "matmul_peak_gflops": 1000.0,
        "loadavg_start": [0.5],
        "loadavg_end": [0.5],
        "logs": [
            {"step": i + 1, "loss": loss, "logps/chosen": -100.0, "logps/rejected": -120.0}
            for i, loss in enumerate(losses)
        ],
    }


def _trainer_section():
    losses = [0.6931, 0.65, 0.6, 0.55]
    runs = {
        "dpolab/dpo": [_run("dpolab", "dpo", seconds_per_step=0.5, peak_mib=2000.0, losses=losses)],
        "trl/dpo": [
            _run("trl", "dpo", seconds_per_step=2.0, peak_mib=8000.0, losses=[x + 1e-5 for x in losses])
        ],
        "dpolab/idpo": [
            _run("dpolab", "idpo", seconds_per_step=0.6, peak_mib=2100.0, losses=losses, layers=(1,))
        ],
    }
    info = {
        "shape_name": "toy",
        "shape": SHAPE,
        "dtype": "bfloat16",
        "batch": 4,
        "steps": 4,
        "gpu": "NVIDIA H100",
        "tokens_per_pair": TOKENS,
        "failures": [],
    }
    return {"info": info, "runs": {"dialogue/full/live": runs}}


def _record():
    trainers = _trainer_section()
    return {
        "info": {
            "command": "python benchmarks/gpu_check.py --out x",
            "date": "2026-12-07T12:00:00",
            "device": "NVIDIA H100",
            "torch": "2.13.0",
            "transformers": "5.25.0",
            "trl": "1.16.0",
            "elapsed_s": 300.0,
        },
        "sections": {
            "bf16": {
                "steps": 5,
                "fp32_final_loss": 0.61,
                "rows": {
                    "bf16 weights": {
                        "max_abs_loss_difference": 2e-3,
                        "max_rel_logps_difference": 1e-4,
                        "step1_margin": 0.0,
                        "final_loss": 0.612,
                    }
                },
            },
            "trl": trainers,
            "flex": {"available": False},
            "idpo": {"layers": [1], **trainers},
        },
    }


@pytest.fixture(scope="module")
def gpu_check():
    import gpu_check

    return gpu_check


def test_without_a_gpu_it_stops_with_one_line_naming_it():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", "never-written"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"gpu_check: missing: a CUDA GPU (torch {torch.__version__} sees none)"
    ]
    assert not Path("never-written").exists()


def test_a_missing_package_is_named(gpu_check):
    required = {"torch": "torch", "no_such_module_for_dpolab": "no-such-dist", "json": "json"}
    assert gpu_check.missing_prerequisites("cpu", required) == ["no-such-dist"]
    assert gpu_check.missing_prerequisites("cpu") == []  # this machine has all the packages


def test_flex_attention_is_detected_from_the_config_s_choices(gpu_check, monkeypatch):
    from dpolab.config import schema

    assert gpu_check.flex_attention_available() == (
        "flex_attention" in schema.CHOICES["model.attn_implementation"]
    )
    monkeypatch.setitem(schema.CHOICES, "model.attn_implementation", ("sdpa", "eager", "flex_attention"))
    assert gpu_check.flex_attention_available()
    monkeypatch.setitem(schema.CHOICES, "model.attn_implementation", ("sdpa", "eager"))
    assert not gpu_check.flex_attention_available()
    assert "not available in this build" in gpu_check.flex_markdown({"available": False})


def test_tables_of_a_record(gpu_check):
    text = gpu_check.markdown(_record())
    # 3 timed steps of 2000 tokens (4 pairs) in 1.5 s (dpolab), 6 s (TRL), 1.8 s (intermediate DPO)
    assert "| dpolab/dpo | 8.00 | 2000 |" in text
    assert "| trl/dpo | 2.00 | 8000 |" in text
    assert "| dpolab/idpo | 6.67 | 2100 |" in text
    assert "dpolab ÷ TRL: **4.00×** pairs/s, **0.25×** peak memory" in text
    assert "losses agree to 1.0e-05 at steps 1–2" in text
    assert "Intermediate DPO (layers [1]) ÷ plain DPO: **1.20×** the time" in text
    assert "**1.05×** the peak memory" in text
    assert "| bf16 weights | 2.0e-03 | 1.0e-04 | 0.0e+00 | 0.6120 |" in text
    assert "FlexAttention: not available in this build" in text
    assert text.count("#### ") == 4


def test_skipped_and_failed_sections_say_so(gpu_check):
    record = _record()
    record["sections"]["bf16"] = {"error": "RuntimeError: out of memory"}
    record["sections"]["trl"] = {"skipped": "400 s spent, over the budget of 360 s"}
    del record["sections"]["idpo"]
    text = gpu_check.markdown(record)
    assert "**failed**: RuntimeError: out of memory" in text
    assert "skipped: 400 s spent, over the budget of 360 s" in text
    assert text.split("#### intermediate DPO")[1].strip() == "not run"


def test_record_files_and_results_block(gpu_check, tmp_path):
    record = _record()
    json_path, md_path = gpu_check.write_record(record, tmp_path / "out")
    assert json.loads(json_path.read_text()) == record
    assert md_path.read_text() == gpu_check.markdown(record) + "\n"
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n<!-- gpu:start -->\nold\n<!-- gpu:end -->\n\nafter\n", encoding="utf-8")
    assert gpu_check.main(["--report", str(json_path), "--update-results", str(results)]) == 0
    assert results.read_text() == (
        f"# R\n\n<!-- gpu:start -->\n{gpu_check.markdown(record)}\n<!-- gpu:end -->\n\nafter\n"
    )
    # the repository's RESULTS.md has the block
    assert "<!-- gpu:start -->" in (SCRIPT.parent / "RESULTS.md").read_text()


@pytest.mark.slow
def test_bf16_section_runs_on_a_cpu(gpu_check, tmp_path):
    """The bf16 section for real, with the tiny model on the CPU: both bf16 runs follow fp32 and
    start with margins of exactly 0."""
    code = gpu_check.main(
        ["--device", "cpu", "--tiny", "--sections", "bf16", "--out", str(tmp_path / "out"),
         "--workdir", str(tmp_path / "work"), "--bf16-steps", "2"]
    )  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = record["sections"]["bf16"]["rows"]
    assert set(rows) == {"bf16 weights", "fp32 weights, bf16 autocast"}
    for row in rows.values():
        assert row["step1_margin"] == 0.0
        assert 0 < row["max_rel_logps_difference"] < 1e-3
        assert row["max_abs_loss_difference"] < 1e-2
    assert set(record["sections"]) == {"bf16"}
    assert "| fp32 weights, bf16 autocast |" in (tmp_path / "out" / "gpu_check.md").read_text()
