"""Every method TRL has, against TRL 1.16: the first-step loss of `dpolab train` (learning rate 0,
the same tiny model, reference and pairs, policy ≠ reference) equals the first logged loss of
TRL's DPOTrainer for each `loss_type` (alone, weighted together, with label smoothing, LD-DPO, WPO
and each f-divergence), of CPOTrainer for SimPO and CPO, and of ORPOTrainer for ORPO.

One tiny model pair and six pairs shared by every case; each case is one dpolab run and one TRL
run, about a second together."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from dpolab.data.formats import normalise
from dpolab.data.tokenize import tokenize_pair
from dpolab.testing import tiny_model
from dpolab.training import config_from_dict, run

ROWS = [
    {"prompt": "Question: 3 + 5 = ?", "chosen": " Answer: 8", "rejected": " Answer: 9"},
    {"prompt": "Question: 2 + 2 = ?", "chosen": " Answer: 4", "rejected": " The answer is 5"},
    {"prompt": "Human: What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon, I think."},
    {"prompt": "Question: 7 + 1 = ?", "chosen": " Answer: 8", "rejected": " Answer: 7 + 1 = 9"},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sleeps."},
    {"prompt": "Question: 4 + 5 = ?", "chosen": " Answer: 9", "rejected": " Answer: 10"},
]
BETA = 0.3

# (case, dpolab's loss section, TRL DPOConfig's arguments)
DPO_CASES = [
    ("sigmoid", {"method": "sigmoid"}, {"loss_type": ["sigmoid"]}),
    ("hinge", {"method": "hinge"}, {"loss_type": ["hinge"]}),
    ("ipo", {"method": "ipo"}, {"loss_type": ["ipo"]}),
    (
        "exo_pair",
        {"method": "exo_pair", "label_smoothing": 1e-3},
        {"loss_type": ["exo_pair"], "label_smoothing": 1e-3},
    ),
    ("nca_pair", {"method": "nca_pair"}, {"loss_type": ["nca_pair"]}),
    (
        "robust",
        {"method": "robust", "label_smoothing": 0.1},
        {"loss_type": ["robust"], "label_smoothing": 0.1},
    ),
    ("bco_pair", {"method": "bco_pair"}, {"loss_type": ["bco_pair"]}),
    ("sppo_hard", {"method": "sppo_hard"}, {"loss_type": ["sppo_hard"]}),
    ("aot", {"method": "aot", "label_smoothing": 0.1}, {"loss_type": ["aot"], "label_smoothing": 0.1}),
    ("aot_unpaired", {"method": "aot_unpaired"}, {"loss_type": ["aot_unpaired"]}),
    ("apo_zero", {"method": "apo_zero"}, {"loss_type": ["apo_zero"]}),
    ("apo_down", {"method": "apo_down"}, {"loss_type": ["apo_down"]}),
    (
        "discopop",
        {"method": "discopop", "discopop_tau": 0.2},
        {"loss_type": ["discopop"], "discopop_tau": 0.2},
    ),
    ("sft", {"method": "sft"}, {"loss_type": ["sft"]}),
    ("sigmoid_norm", {"method": "sigmoid_norm"}, {"loss_type": ["sigmoid_norm"]}),
    (
        "mpo",  # MPO's mix: 0.8 sigmoid + 0.2 bco_pair + 1.0 sft
        {"method": ["sigmoid", "bco_pair", "sft"], "weights": [0.8, 0.2, 1.0]},
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    ),
    ("ld_alpha", {"method": "sigmoid", "ld_alpha": 0.3}, {"loss_type": ["sigmoid"], "ld_alpha": 0.3}),
    (
        "wpo",  # (not with sft: TRL 1.16 multiplies sft's expanded scalar in place, which fails)
        {
            "method": ["robust", "bco_pair"],
            "weights": [1.0, 0.5],
            "label_smoothing": 0.1,
            "use_weighting": True,
        },
        {
            "loss_type": ["robust", "bco_pair"],
            "loss_weights": [1.0, 0.5],
            "label_smoothing": 0.1,
            "use_weighting": True,
        },
    ),
    (
        "ipo_forward_kl_ld",  # IPO averages the f-score of the LD-weighted sum over the full length
        {"method": "ipo", "f_divergence": "forward_kl", "ld_alpha": 0.5},
        {"loss_type": ["ipo"], "f_divergence_type": "forward_kl", "ld_alpha": 0.5},
    ),
    (
        "hinge_js",
        {"method": "hinge", "f_divergence": "js_divergence"},
        {"loss_type": ["hinge"], "f_divergence_type": "js_divergence"},
    ),
    (
        "sigmoid_norm_alpha",
        {"method": "sigmoid_norm", "f_divergence": "alpha_divergence", "f_alpha": 0.3},
        {
            "loss_type": ["sigmoid_norm"],
            "f_divergence_type": "alpha_divergence",
            "f_alpha_divergence_coef": 0.3,
        },
    ),
    (
        "discopop_exo_forward_kl",
        {"method": ["discopop", "exo_pair"], "label_smoothing": 0.01, "f_divergence": "forward_kl"},
        {"loss_type": ["discopop", "exo_pair"], "label_smoothing": 0.01, "f_divergence_type": "forward_kl"},
    ),
]

# (case, dpolab's loss section, TRL trainer, its config's arguments)
REFERENCE_FREE_CASES = [
    (
        "simpo",
        {"method": "simpo", "beta": 2.0, "simpo_gamma": 0.8},
        "cpo",
        {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.8, "cpo_alpha": 0.0},
    ),
    (
        "cpo",
        {"method": "cpo", "cpo_alpha": 0.7},
        "cpo",
        {"loss_type": "sigmoid", "beta": BETA, "cpo_alpha": 0.7},
    ),
    (
        "cpo_simpo",
        {"method": ["simpo", "sft"], "weights": [1.0, 0.4], "beta": 2.0},
        "cpo",
        {"loss_type": "simpo", "beta": 2.0, "cpo_alpha": 0.4},
    ),
    ("orpo", {"method": "orpo", "beta": 0.1}, "orpo", {"beta": 0.1}),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """The two tiny models (policy seed 0, reference seed 1) saved once, and the pairs' file."""
    root = tmp_path_factory.mktemp("methods-vs-trl")
    dirs = {}
    for name, seed in (("policy", 0), ("ref", 1)):
        dirs[name] = root / name
        tiny_model("llama", vocab_size=len(tokenizer), seed=seed).save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return dirs["policy"], dirs["ref"], data


def dpolab_first_step(tmp_path, setup, loss, *, reference=True) -> dict:
    policy, ref, data = setup
    values = {
        "model": {"name_or_path": str(policy)},
        "data": {"train": str(data), "max_length": None, "max_prompt_length": None},
        "loss": {**({} if loss["method"] == "sft" else {"beta": BETA}), **loss},  # sft takes no β
        "training": {
            "output_dir": str(tmp_path / "dpolab"),
            "per_device_train_batch_size": len(ROWS),
            "max_steps": 1,
            "logging_steps": 1,
            "learning_rate": 0.0,
            "disable_tqdm": True,
            "seed": 0,
        },
    }
    if reference:
        values["model"]["ref_name_or_path"] = str(ref)
    run(config_from_dict(values))
    lines = [json.loads(x) for x in (tmp_path / "dpolab" / "metrics.jsonl").read_text().splitlines()]
    return next(line for line in lines if line["split"] == "train")


def _common(tmp_path):
    return dict(
        output_dir=str(tmp_path / "trl"),
        learning_rate=0.0,
        per_device_train_batch_size=len(ROWS),
        max_steps=1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # TRL's configs default to bf16 autocast, even on the CPU
        disable_tqdm=True,
        seed=0,
    )


@pytest.mark.parametrize("case,loss,trl_args", DPO_CASES, ids=[c[0] for c in DPO_CASES])
def test_first_step_loss_equals_trl_dpo_trainer(tmp_path, tokenizer, setup, case, loss, trl_args):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ours = dpolab_first_step(tmp_path, setup, loss, reference=loss["method"] != "sft")
    policy, ref, _ = setup
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy),
        ref_model=AutoModelForCausalLM.from_pretrained(ref),
        args=DPOConfig(**_common(tmp_path), beta=BETA, **trl_args),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    trainer.train()
    theirs = trainer.state.log_history[0]
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-5), case
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        if case in ("sft",):  # sft alone has no reference in dpolab: its rewards are the log-probs
            break
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-5), (case, key)


@pytest.mark.parametrize(
    "case,loss,kind,trl_args", REFERENCE_FREE_CASES, ids=[c[0] for c in REFERENCE_FREE_CASES]
)
def test_first_step_loss_equals_trl_cpo_and_orpo_trainers(
    tmp_path, tokenizer, setup, case, loss, kind, trl_args
):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    ours = dpolab_first_step(tmp_path, setup, loss, reference=False)
    config_cls, trainer_cls = (CPOConfig, CPOTrainer) if kind == "cpo" else (ORPOConfig, ORPOTrainer)
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(setup[0]),
        args=config_cls(**_common(tmp_path), **trl_args),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    # precondition: TRL's (older) tokenisation of these rows is dpolab's
    for row, tokenized in zip(ROWS, trainer.train_dataset):
        pair = tokenize_pair(normalise(row), tokenizer, max_length=None, max_prompt_length=None)
        assert tokenized["chosen_input_ids"] == pair.prompt_ids + pair.chosen_ids
        assert tokenized["rejected_input_ids"] == pair.prompt_ids + pair.rejected_ids
    trainer.train()
    theirs = trainer.state.log_history[0]
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-5), case
    keys = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"]
    if kind == "orpo":
        keys += ["log_odds_ratio", "log_odds_chosen", "nll_loss"]
    if case == "cpo":
        keys += ["nll_loss"]
    for key in keys:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-5), (case, key)
