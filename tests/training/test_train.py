"""`dpolab train` / `dpolab sft` end to end on tiny models: the numbers it logs are the numbers a
direct computation (and TRL) gives, and training moves the right parameters."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, TrainerCallback

from dpolab.data.formats import normalise
from dpolab.data.tokenize import tokenize_pair
from dpolab.testing import naive_layer_logprobs, tiny_model
from dpolab.training import SFT, config_from_dict, run

ROWS = [
    {"prompt": "Question: 3 + 5 = ?", "chosen": " Answer: 8", "rejected": " Answer: 9"},
    {"prompt": "Question: 2 + 2 = ?", "chosen": " Answer: 4", "rejected": " The answer is 5"},
    {"prompt": "Human: What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon, I think."},
    {"prompt": "Question: 7 + 1 = ?", "chosen": " Answer: 8", "rejected": " Answer: 7 + 1 = 9"},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sleeps."},
    {"prompt": "Question: 4 + 5 = ?", "chosen": " Answer: 9", "rejected": " Answer: 10"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def save_model(path, tokenizer, model_type="llama", seed=0):
    tiny_model(model_type, vocab_size=len(tokenizer), seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tokenizer):
    """A policy and a different reference (other random weights)."""
    root = tmp_path_factory.mktemp("two-models")
    return save_model(root / "policy", tokenizer, seed=0), save_model(root / "ref", tokenizer, seed=1)


def base_config(tmp_path, model, data, **sections):
    values = {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "per_device_train_batch_size": len(ROWS),
            "max_steps": 1,
            "logging_steps": 1,
            "learning_rate": 0.0,
            "disable_tqdm": True,
            "seed": 0,
        },
    }
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    return values


def first_train_line(out_dir):
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return next(line for line in lines if line["split"] == "train")


def direct_layer_logps(model_dir, tokenizer, layers):
    """(layers, pairs) summed log-probs of chosen and rejected and their token counts, scoring
    prompt+chosen and prompt+rejected as separate sequences with full logits (no packing, no chunks)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    chosen, rejected, n_c, n_r = [], [], [], []
    for row in ROWS:
        pair = tokenize_pair(normalise(row), tokenizer, max_length=64, max_prompt_length=32)
        for completion, sums, counts in ((pair.chosen_ids, chosen, n_c), (pair.rejected_ids, rejected, n_r)):
            ids = torch.tensor([pair.prompt_ids + completion])
            mask = torch.zeros_like(ids)
            mask[0, len(pair.prompt_ids) :] = 1
            with torch.no_grad():
                out = naive_layer_logprobs(
                    model,
                    {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": mask},
                    layers,
                )
            sums.append(out.logps[:, 0])
            counts.append(len(completion))
    return (
        torch.stack(chosen, 1),
        torch.stack(rejected, 1),
        torch.tensor(n_c, dtype=torch.float32),
        torch.tensor(n_r, dtype=torch.float32),
    )


@pytest.mark.parametrize(
    "method,layers", [("dpo", []), ("ipo", []), ("dpop", []), ("dpo", [1, 3]), ("dpop", [2])]
)
def test_first_logged_metrics_equal_direct_computation(tmp_path, tokenizer, two_models, method, layers):
    policy_dir, ref_dir = two_models
    beta, lam, gamma = 0.5, 50.0, 0.8
    loss = {"method": method, "beta": beta}
    if method == "dpop":
        loss["dpop_lambda"] = lam
    if layers:
        loss["intermediate"] = {"layers": layers, "gamma": gamma}
    values = base_config(tmp_path, policy_dir, write_jsonl(tmp_path / "train.jsonl", ROWS), loss=loss)
    values["model"]["ref_name_or_path"] = str(ref_dir)
    run(config_from_dict(values))
    logged = first_train_line(tmp_path / "out")

    all_layers = [*layers, 4]
    pc, pr, n_c, n_r = direct_layer_logps(policy_dir, tokenizer, all_layers)
    rc, rr, _, _ = direct_layer_logps(ref_dir, tokenizer, all_layers)
    per_layer = []
    for i in range(len(all_layers)):
        d_w, d_l = pc[i] - rc[i], pr[i] - rr[i]
        if method == "ipo":  # (Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))², on per-token averages
            per_layer.append(((d_w / n_c - d_l / n_r) - 1 / (2 * beta)) ** 2)
        elif method == "dpop":  # −log σ(β(Δ_w − Δ_l − λ·max(0, −Δ_w)))
            per_layer.append(-F.logsigmoid(beta * (d_w - d_l - lam * torch.clamp(-d_w, min=0))))
        else:  # −log σ(β(Δ_w − Δ_l))
            per_layer.append(-F.logsigmoid(beta * (d_w - d_l)))
    final = per_layer[-1].mean()
    expected_loss = final if not layers else gamma * final + (1 - gamma) * torch.stack(per_layer[:-1]).mean()
    r_w, r_l = beta * (pc[-1] - rc[-1]), beta * (pr[-1] - rr[-1])

    assert logged["loss"] == pytest.approx(expected_loss.item(), rel=1e-5, abs=1e-5)
    assert logged["loss/final"] == pytest.approx(final.item(), rel=1e-5, abs=1e-5)
    assert logged["rewards/chosen"] == pytest.approx(r_w.mean().item(), rel=1e-5, abs=1e-5)
    assert logged["rewards/rejected"] == pytest.approx(r_l.mean().item(), rel=1e-5, abs=1e-5)
    assert logged["rewards/margins"] == pytest.approx((r_w - r_l).mean().item(), rel=1e-5, abs=1e-5)
    assert logged["rewards/accuracies"] == pytest.approx((r_w > r_l).float().mean().item())
    assert logged["logps/chosen"] == pytest.approx(pc[-1].mean().item(), abs=1e-4)
    assert logged["logps/rejected"] == pytest.approx(pr[-1].mean().item(), abs=1e-4)
    for i, k in enumerate(layers):
        assert logged[f"layers/{k}/loss"] == pytest.approx(per_layer[i].mean().item(), rel=1e-5, abs=1e-5)
        assert logged[f"layers/{k}/rewards/chosen"] == pytest.approx(
            beta * (pc[i] - rc[i]).mean().item(), rel=1e-5, abs=1e-5
        )


def test_plain_dpo_matches_trl(tmp_path, tokenizer, two_models):
    """Same data, same models, learning rate 0: dpolab's first logged figures are TRL's."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy_dir, ref_dir = two_models
    values = base_config(
        tmp_path, policy_dir, write_jsonl(tmp_path / "train.jsonl", ROWS), loss={"method": "dpo", "beta": 0.1}
    )
    values["model"]["ref_name_or_path"] = str(ref_dir)
    values["data"].update(max_length=None, max_prompt_length=None)
    run(config_from_dict(values))
    ours = first_train_line(tmp_path / "out")

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        learning_rate=0.0,
        per_device_train_batch_size=len(ROWS),
        max_steps=1,
        logging_steps=1,
        report_to="none",
        beta=0.1,
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy_dir),
        ref_model=AutoModelForCausalLM.from_pretrained(ref_dir),
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    trainer.train()
    theirs = trainer.state.log_history[0]
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key


def test_precomputed_reference_gives_the_live_metrics(tmp_path, tokenizer, two_models):
    policy_dir, ref_dir = two_models
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    lines = {}
    for precompute in (False, True, True):  # the third run reads the cache the second wrote
        out = tmp_path / f"out-{precompute}-{len(lines)}"
        values = base_config(
            tmp_path,
            policy_dir,
            data,
            loss={"method": "dpo", "beta": 0.3, "intermediate": {"layers": [2]}},
            reference={"precompute": precompute, "cache_dir": str(tmp_path / "cache")},
        )
        values["model"]["ref_name_or_path"] = str(ref_dir)
        values["training"]["output_dir"] = str(out)
        run(config_from_dict(values))
        lines[out.name] = first_train_line(out)
    live, precomputed, cached = lines.values()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    for key, value in live.items():
        if isinstance(value, float) and key not in ("grad_norm", "epoch"):
            assert precomputed[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
            assert cached[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


LEARNABLE = [{"prompt": f"Question {i}:", "chosen": " yes yes", "rejected": " no no"} for i in range(8)]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize(
    "method,layers", [("dpo", []), ("ipo", []), ("dpop", []), ("dpo", [2]), ("dpop", [1, 3])]
)
def test_sft_then_preference_training(tmp_path, monkeypatch, tokenizer, model_type, lora, method, layers):
    """SFT on the chosen responses, then preference training from the SFT model: the loss goes
    down, the reference stays frozen, and only what should train changes (adapters under LoRA)."""
    start = save_model(tmp_path / "start", tokenizer, model_type)
    data = write_jsonl(tmp_path / "pairs.jsonl", LEARNABLE)
    sft = base_config(tmp_path, start, data)
    sft["training"].update(
        output_dir=str(tmp_path / "sft"), max_steps=4, learning_rate=5e-3, per_device_train_batch_size=4
    )
    sft_summary = run(config_from_dict(sft, stage="sft"), SFT)
    assert sft_summary["global_step"] == 4
    sft_lines = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert sft_lines[-1]["loss"] < sft_lines[0]["loss"]

    loss = {"method": method, "beta": 0.5}
    if layers:
        loss["intermediate"] = {"layers": layers}
    values = base_config(tmp_path, tmp_path / "sft", data, loss=loss)
    values["training"].update(
        output_dir=str(tmp_path / "dpo"),
        max_steps=6,
        learning_rate=1e-2 if lora else 5e-3,
        per_device_train_batch_size=8,
    )
    if lora:
        values["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}

    seen = {}

    class Spy(TrainerCallback):  # the trained model's parameters before and after training
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["before"] = _params(model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            seen["after"] = _params(model)

    import dpolab.training.reference_setup

    real_loader = dpolab.training.reference_setup.load_frozen_reference

    def capture_reference(section):
        seen["reference"] = real_loader(section)
        seen["reference_before"] = _params(seen["reference"])
        return seen["reference"]

    monkeypatch.setattr("dpolab.training.reference_setup.load_frozen_reference", capture_reference)
    run(config_from_dict(values), callbacks=(Spy(),))
    lines = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["rewards/margins"] > 0
    changed = {n for n in seen["before"] if not torch.equal(seen["before"][n], seen["after"][n])}
    if lora:
        # the reference is the same model with adapters disabled: only adapters may move
        assert "reference" not in seen
        assert changed and all("lora_" in n for n in changed)
        assert (tmp_path / "dpo" / "adapter_config.json").exists()
    else:
        assert changed and not any("lora_" in n for n in changed)
        reference_after = _params(seen["reference"])
        assert all(torch.equal(p, reference_after[n]) for n, p in seen["reference_before"].items())
        assert not any(p.requires_grad for p in seen["reference"].parameters())
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
        assert reloaded.config.model_type == model_type


def test_report_to_tensorboard_goes_through_the_trainer(tmp_path, model_dir):
    values = base_config(tmp_path, model_dir, write_jsonl(tmp_path / "train.jsonl", ROWS))
    values["training"].update(report_to="tensorboard", max_steps=2)
    run(config_from_dict(values))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "out").rglob("events.out.tfevents*")).parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/rewards/accuracies" in tags and "train/loss" in tags


FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "data" / "fixtures"


def test_trains_on_a_builder_and_on_a_weighted_mixture(tmp_path, model_dir):
    """`data.builder` + `data.source` builds Smaug-style pairs on the fly; `data.train` as a list
    mixes sources by weight."""
    arc = base_config(tmp_path, model_dir, "unused")
    arc["data"] = {
        "builder": "arc",
        "source": str(FIXTURES / "arc_challenge_train.jsonl"),
        "max_length": 96,
        "max_prompt_length": 64,
    }
    arc["training"].update(output_dir=str(tmp_path / "arc"), per_device_train_batch_size=4)
    summary = run(config_from_dict(arc))
    assert summary["pairs"]["train"] >= 3 * 18  # three pairs per four-choice question

    hh = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    mix = base_config(tmp_path, model_dir, "unused")
    mix["data"] = {
        "train": [
            {"path": str(hh), "weight": 3},
            {"path": str(FIXTURES / "hh_rlhf_train.jsonl"), "weight": 1},
        ],
        "max_length": 256,
        "max_prompt_length": 192,
        "on_bad_rows": "skip",
    }
    mix["training"].update(output_dir=str(tmp_path / "mix"), per_device_train_batch_size=4)
    summary = run(config_from_dict(mix))
    # "sum": the mixture has as many pairs as the sources together (6 + 20), 3:1 by weight, so the
    # six pairs of ROWS are repeated to fill their share; tokenisation may skip over-long HH rows
    assert summary["pairs"]["train"] + summary["skipped_rows"] == len(ROWS) + 20


def test_builder_runs_read_data_eval_as_their_own_eval_data(tmp_path, model_dir):
    """With `data.builder` + `data.source` for training, `data.eval` is read on its own: a pairs
    file, or a list of specs that may build pairs (never the training source again)."""
    from dpolab.data.builders import build_pairs

    eval_file = write_jsonl(tmp_path / "eval.jsonl", ROWS[:4])
    hellaswag = FIXTURES / "hellaswag_train.jsonl"
    for name, eval_spec, expected in [
        ("file", str(eval_file), 4),
        (
            "built",
            [{"path": str(hellaswag), "builder": "hellaswag"}],
            len(build_pairs("hellaswag", hellaswag)[0]),
        ),
    ]:
        values = base_config(tmp_path, model_dir, "unused")
        values["data"] = {
            "builder": "arc",
            "source": str(FIXTURES / "arc_challenge_train.jsonl"),
            "eval": eval_spec,
            "max_length": 128,
            "max_prompt_length": 96,
        }
        values["training"].update(output_dir=str(tmp_path / name), per_device_train_batch_size=8)
        summary = run(config_from_dict(values))
        assert summary["pairs"]["train"] >= 3 * 18, name
        assert summary["pairs"]["eval"] == expected, name
        assert "loss" in summary["last_eval"], name
