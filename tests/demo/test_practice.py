"""The practitioner study's findings in the demo: the verdicts worked out on hand-made numbers, the
held-out texts, and the settings of the demo on a pretrained model (the paper's layers, Table 1)."""

from __future__ import annotations

import pytest

from dpolab.demo.heldout import STDLIB_MODULES, stdlib_docstrings, task_texts
from dpolab.demo.practice import early_stopping_finding, forgetting_finding
from dpolab.demo.settings import FULL, QUICK, REAL, REAL_QUICK, TABLE_1_LORA, paper_layers, with_model_layers


def forgetting(sft: float, **after: float) -> dict:
    return {
        "n_tokens": 100,
        "loss": {"sft": sft, **{f"beta {k[1:].replace('_', '.')}": v for k, v in after.items()}},
    }


def test_forgetting_verdicts():
    # rises over SFT 0.30, 0.20, 0.10 nats: strictly smaller the higher β
    found = forgetting_finding(forgetting(2.0, b0_1=2.3, b0_3=2.2, b0_5=2.1))
    assert found["verdict"] == "reproduced" and found["shown"] is True
    assert "β 0.1: 2.3000 (+0.3000), β 0.3: 2.2000 (+0.2000), β 0.5: 2.1000 (+0.1000)" in found["text"]
    # the ends ordered (0.30 > 0.10) but the middle above both: partly
    assert forgetting_finding(forgetting(2.0, b0_1=2.3, b0_3=2.4, b0_5=2.1))["verdict"] == "partly"
    # the highest β forgot most: not
    found = forgetting_finding(forgetting(2.0, b0_1=2.1, b0_3=2.2, b0_5=2.3))
    assert found["verdict"] == "not" and found["text"].endswith("Not reproduced at this scale.")
    # the keys sort by β as numbers, not as text ("beta 0.05" before "beta 0.1")
    assert forgetting_finding(forgetting(1.0, b0_05=1.5, b0_1=1.4, b0_5=1.1))["verdict"] == "reproduced"


def early(*rows: tuple[int, float, float]) -> dict:
    return {
        "run": "dpo-low",
        "problems": 10,
        "checkpoints": [{"step": s, "rewards/accuracies": a, "win_rate": w} for s, a, w in rows],
    }


def test_early_stopping_verdicts():
    # both peak at step 40
    found = early_stopping_finding(early((20, 0.7, 0.55), (40, 0.9, 0.65), (60, 0.8, 0.5)))
    assert found["verdict"] == "reproduced"
    assert "peaks at step 40 (0.650), eval rewards/accuracies at step 40 (0.900)" in found["text"]
    # the win rate one checkpoint before rewards/accuracies: partly
    assert (
        early_stopping_finding(early((20, 0.7, 0.6), (40, 0.9, 0.55), (60, 0.8, 0.5)))["verdict"] == "partly"
    )
    # the win rate first, rewards/accuracies last (DPO's failure mode on low-edit pairs): not
    found = early_stopping_finding(early((20, 0.7, 0.6), (40, 0.8, 0.55), (60, 0.9, 0.5)))
    assert found["verdict"] == "not"
    # tied peaks count: rewards/accuracies 1.0 at 40 and 60, the win rate's peak at 60
    assert (
        early_stopping_finding(early((20, 0.7, 0.5), (40, 1.0, 0.5), (60, 1.0, 0.6)))["verdict"]
        == "reproduced"
    )
    # a win rate the same at every checkpoint has no peak to agree with
    assert early_stopping_finding(early((20, 0.7, 0.5), (40, 0.9, 0.5)))["verdict"] == "not"


def test_held_out_texts():
    docs = stdlib_docstrings()
    assert docs == stdlib_docstrings()  # the same text every time
    assert len(docs) > 100 and sum(len(d) for d in docs) > 50_000  # far more than the demo measures on
    assert docs[0].startswith("JSON (JavaScript Object Notation)") and len(STDLIB_MODULES) == 15
    problem = {
        "prompt": "Tom has 3 pens . How many pens does Tom have now ?\n",
        "chosen": "3 + 0 = 3\n#### 3",
    }
    assert task_texts([problem]) == [
        ("Tom has 3 pens . How many pens does Tom have now ?\n", "3 + 0 = 3\n#### 3")
    ]


@pytest.mark.parametrize(
    "layers,expected", [(32, [11, 22]), (30, [10, 21]), (6, [2, 4]), (4, [1, 3]), (2, [1])]
)
def test_paper_layers(layers, expected):
    # the Intermediate DPO paper's 11 and 22 of 32, at the same depth: round(L·11/32), round(L·22/32)
    assert paper_layers(layers) == expected


@pytest.mark.parametrize("settings", [REAL, REAL_QUICK], ids=["REAL", "REAL_QUICK"])
def test_real_settings_fit_together(settings):
    s = with_model_layers(settings, 30)
    assert [r.name for r in s.runs] == ["dpo-low", "dpop-low", "idpo-low"]
    assert s.runs[2].loss["intermediate"]["layers"] == [10, 21]
    assert s.chat and s.preference_lora == TABLE_1_LORA and s.preference["learning_rate"] == 5e-4
    prefs = s.preference["max_steps"] * s.preference["per_device_train_batch_size"]
    assert prefs <= s.preference_pairs <= s.sizes.train
    # a checkpoint at every evaluation, the last at the last step
    assert s.preference["max_steps"] % s.checkpoint_every == 0
    assert s.checkpoint_problems <= s.test_problems <= s.sizes.test and s.eval_pairs <= s.sizes.eval
    assert float(s.runs[0].loss["beta"]) in s.betas


@pytest.mark.parametrize("settings", [FULL, QUICK], ids=["FULL", "QUICK"])
def test_tiny_settings_checkpoint_the_first_run(settings):
    assert settings.preference["max_steps"] % settings.checkpoint_every == 0
    assert settings.checkpoint_problems <= settings.test_problems
    assert settings.runs[0].name == "dpo-low" and float(settings.runs[0].loss["beta"]) in settings.betas
    assert with_model_layers(settings, 6) is settings  # the tiny model's layers are fixed in its runs
