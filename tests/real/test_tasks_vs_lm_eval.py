"""On the real model, dpolab's own ARC, HellaSwag and GSM8K scores equal lm-evaluation-harness's,
document by document: `dpolab eval tasks` against `dpolab eval tasks --harness`, which runs lm-eval
itself (its own task configs, reading the same local files). Each choice's log-likelihood, acc and
acc_norm; each GSM8K output and its strict and flexible exact match.

The files are in the datasets' own schemas: ARC-Challenge and HellaSwag rows from the data
fixtures, three hand-written GSM8K problems (tests/real/fixtures/gsm8k_test.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpolab.cli import main

pytestmark = pytest.mark.real

DATA = {
    "arc": Path(__file__).parents[1] / "data" / "fixtures" / "arc_challenge_train.jsonl",
    "hellaswag": Path(__file__).parents[1] / "data" / "fixtures" / "hellaswag_train.jsonl",
    "gsm8k": Path(__file__).parent / "fixtures" / "gsm8k_test.jsonl",
}
DOCS = 3


def test_own_task_scores_equal_lm_eval_per_document(tmp_path, smollm2_dir):
    pytest.importorskip("lm_eval")
    command = ["eval", "tasks", "--model", str(smollm2_dir), "--tasks", ",".join(DATA), "--device", "cpu"]
    command += [f"--data={task}={path}" for task, path in DATA.items()]
    command += ["--limit", str(DOCS), "--max-new-tokens", "24"]
    assert main([*command, "--output", str(tmp_path / "own.json")]) == 0
    assert main([*command, "--harness", "--output", str(tmp_path / "lm_eval.json")]) == 0
    own = json.loads((tmp_path / "own.json").read_text())["tasks"]
    theirs = json.loads((tmp_path / "lm_eval.json").read_text())["tasks"]
    for task in ("arc", "hellaswag"):
        assert len(own[task]["samples"]) == len(theirs[task]["samples"]) == DOCS
        for doc, (a, b) in enumerate(zip(own[task]["samples"], theirs[task]["samples"])):
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], rel=1e-4, abs=1e-3), (task, doc)
            assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"]), (task, doc)
    assert len(own["gsm8k"]["samples"]) == len(theirs["gsm8k"]["samples"]) == DOCS
    for doc, (a, b) in enumerate(zip(own["gsm8k"]["samples"], theirs["gsm8k"]["samples"])):
        assert a["output"] == b["output"].strip(), doc  # the same greedy text (dpolab strips it)
        assert a["exact_match"] == b["exact_match"], doc
        assert a["exact_match_flexible"] == b["exact_match_flexible"], doc
    for task, metrics in (("arc", "acc acc_norm"), ("hellaswag", "acc acc_norm"), ("gsm8k", "exact_match")):
        for metric in metrics.split():
            assert own[task][metric] == pytest.approx(theirs[task][metric]), (task, metric)
