"""Configs: YAML + overrides, and every mistake caught at start-up with a message that says what
to write instead."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from dpolab.cli import main
from dpolab.commands.config import example_names, example_text
from dpolab.config import parse_override
from dpolab.errors import DpolabError
from dpolab.training import config_from_dict, load_config

BASE = {"model": {"name_or_path": "some/model"}, "data": {"train": "train.jsonl"}}


def with_(**sections):
    values = copy.deepcopy(BASE)
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    return values


def test_defaults_and_types():
    config = config_from_dict(with_(loss={"beta": 1, "intermediate": {"layers": [3, 5]}}))
    assert config.loss.beta == 1.0 and isinstance(config.loss.beta, float)
    inter = config.loss.intermediate
    assert (
        config.loss.method == "dpo"
        and inter.layers == [3, 5]
        and inter.gamma == 0.9
        and inter.final_norm is True
    )
    assert config.data.max_length == 1024 and config.data.max_prompt_length == 512
    assert config.reference.precompute is False and config.early_stopping.patience is None
    assert config.model.lora is None


def test_lora_section_is_typed():
    config = config_from_dict(
        with_(model={"name_or_path": "m", "lora": {"r": 8, "target_modules": ["q_proj"]}})
    )
    assert config.model.lora.r == 8 and config.model.lora.alpha == 16 and config.model.lora.dropout == 0.05
    assert config.model.lora.target_modules == ["q_proj"]


@pytest.mark.parametrize(
    "values,message",
    [
        (with_(loss={"betta": 0.1}), "unknown key 'loss.betta'; did you mean 'loss.beta'?"),
        ({**BASE, "losss": {}}, "unknown section 'losss'; did you mean 'loss'?"),
        (
            with_(training={"learnin_rate": 1e-5}),
            "unknown key 'training.learnin_rate'; did you mean 'training.learning_rate'?",
        ),
        (with_(model={"name_or_path": "m", "lora": {"rank": 8}}), "unknown key 'model.lora.rank'"),
        (with_(loss={"beta": "high"}), "loss.beta: expected float, got 'high'"),
        (with_(loss={"intermediate": {"layers": 11}}), "loss.intermediate.layers: expected a list, got 11"),
        (
            with_(loss={"intermediate": {"final_norm": "yes", "layers": [1]}}),
            "loss.intermediate.final_norm: expected true or false",
        ),
        (
            with_(loss={"intermediate_layers": [11, 22]}),
            "loss.intermediate_layers is now loss.intermediate.layers: write `loss: {intermediate: {layers: "
            "[11, 22]}}` in the YAML, or loss.intermediate.layers=[11,22] on the command line",
        ),
        (with_(loss={"gamma": 0.5}), "loss.gamma is now loss.intermediate.gamma"),
        (with_(loss={"final_norm": False}), "loss.final_norm is now loss.intermediate.final_norm"),
        (with_(loss={"method": "kto"}), "loss.method: 'kto' is not one of dpo, ipo, dpop"),
        (with_(loss={"dpop_lambda": 10}), "loss.dpop_lambda is only used by loss.method dpop"),
        (
            with_(loss={"intermediate": {"gamma": 0.5}}),
            "loss.intermediate.gamma only matters with loss.intermediate.layers",
        ),
        (with_(loss={"intermediate": {"layers": [2, 2]}}), "lists a layer twice"),
        (
            with_(loss={"intermediate": {"layers": [2], "gamma": 1.5}}),
            "loss.intermediate.gamma: 1.5 must be in [0, 1]",
        ),
        (with_(loss={"beta": 0}), "loss.beta: 0.0 must be positive"),
        (
            with_(data={"train": "t.jsonl", "max_length": 128, "max_prompt_length": 128}),
            "must be below data.max_length",
        ),
        (
            with_(data={"train": "t.jsonl", "eval": "e.jsonl", "eval_size": 0.1}),
            "data.eval and data.eval_size are both set",
        ),
        (
            with_(data={"train": "t.jsonl", "builder": "arc", "source": "x"}),
            "data.train and data.builder are both set",
        ),
        (with_(data={"train": None, "builder": "arc"}), "data.builder: arc needs data.source"),
        (with_(data={"train": None}), "data.train is required"),
        (with_(model={"name_or_path": ""}), "model.name_or_path is required"),
        (
            with_(model={"name_or_path": "m", "dtype": "float16"}),
            "model.dtype: 'float16' is not one of float32, bfloat16",
        ),
        (with_(early_stopping={"patience": 2}), "early_stopping.patience needs evaluation data"),
        (
            with_(
                early_stopping={"patience": 2},
                data={"train": "t", "eval_size": 0.1},
                training={"eval_strategy": "no"},
            ),
            "early stopping needs evaluations",
        ),
        (
            with_(
                early_stopping={"patience": 2},
                data={"train": "t", "eval_size": 0.1},
                training={"load_best_model_at_end": False},
            ),
            "training.load_best_model_at_end is set by early_stopping",
        ),
        (
            with_(
                early_stopping={"patience": 2, "metric": "rewards/accuracy"},
                data={"train": "t", "eval_size": 0.1},
            ),
            "early_stopping.metric: 'rewards/accuracy' is not logged at evaluation by this run; use one of "
            "loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen, "
            "logps/rejected, dpo_likelihood, loss/final; did you mean 'rewards/accuracies'?",
        ),
        (
            with_(early_stopping={"metric": "layers/2/rewards/accuracies"}),
            "a layers/<k>/ metric needs k in loss.intermediate.layers",
        ),
        (with_(training={"remove_unused_columns": True}), "training.remove_unused_columns is set by dpolab"),
        (
            with_(training={"learning_rate": "1e-3x"}),
            "training.learning_rate: expected a number, got '1e-3x'",
        ),
        (with_(training={"max_steps": 1.5}), "training.max_steps: expected an integer, got 1.5"),
        (with_(training={"bf16": "yes"}), "training.bf16: expected true or false, got 'yes'"),
        (
            with_(model={"name_or_path": "m", "dtype": "bfloat16"}, training={"fp16": True}),
            "use training.bf16",
        ),
    ],
)
def test_bad_configs_fail_with_one_clear_line(values, message):
    with pytest.raises(DpolabError) as err:
        config_from_dict(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_sft_ignores_the_loss_section():
    values = with_(loss={"dpop_lambda": 10})
    with pytest.raises(DpolabError):
        config_from_dict(values)
    assert config_from_dict(values, stage="sft").loss.dpop_lambda == 10


ES = {"early_stopping": {"patience": 2}, "data": {"train": "t", "eval_size": 0.1}}


def test_sft_early_stopping_watches_eval_loss(tmp_path):
    """`dpolab sft` logs no rewards: its early stopping keeps the lowest eval loss (as a TRL
    SFTTrainer or HF Trainer run does with metric_for_best_model loss)."""
    from dpolab.training import PREFERENCE, SFT
    from dpolab.training.arguments import training_arguments

    out = {"training": {"output_dir": str(tmp_path)}}
    args = training_arguments(config_from_dict(with_(**ES, **out), stage=SFT), SFT, has_eval=True)
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    assert args.load_best_model_at_end is True
    args = training_arguments(config_from_dict(with_(**ES, **out)), PREFERENCE, has_eval=True)
    assert args.metric_for_best_model == "eval_rewards/accuracies" and args.greater_is_better is True
    values = with_(**ES, **out)
    values["early_stopping"]["metric"] = "loss"  # lower is better for a loss, also in `train`
    args = training_arguments(config_from_dict(values), PREFERENCE, has_eval=True)
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    values["early_stopping"]["metric"] = "layers/2/loss"  # an intermediate layer's loss, too
    values["loss"] = {"intermediate": {"layers": [2]}}
    args = training_arguments(config_from_dict(values), PREFERENCE, has_eval=True)
    assert args.metric_for_best_model == "eval_layers/2/loss" and args.greater_is_better is False

    values["early_stopping"]["metric"] = "rewards/accuracies"  # a train config's metric, in sft
    with pytest.raises(DpolabError) as err:
        config_from_dict(values, stage="sft")
    assert str(err.value) == (
        "early_stopping.metric: 'rewards/accuracies' is not logged at evaluation by dpolab sft (no rewards; by "
        "default it stops on eval loss); use one of loss, logps/per_token"
    )


def test_every_metric_the_objective_returns_is_named_for_early_stopping():
    import torch

    from dpolab.modeling.logprobs import LayerLogprobs
    from dpolab.training import PREFERENCE

    for method, layers in (("dpo", []), ("dpop", [1, 2]), ("ipo", [2])):
        config = config_from_dict(with_(loss={"method": method, "intermediate": {"layers": layers}}))
        objective = PREFERENCE.objective(config, num_layers=3)
        n = len(objective.layers)
        policy = LayerLogprobs(
            logps=-torch.rand(n, 4), num_tokens=torch.tensor([3, 2, 4, 1]), layers=objective.layers
        )
        metrics = objective(policy, -torch.rand(n, 4)).metrics
        assert ["loss", *sorted(metrics)] == ["loss", *sorted(PREFERENCE.eval_metric_names(config)[1:])], (
            method
        )
        assert all(values.shape == (2,) for values in metrics.values())


def test_overrides_are_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name_or_path: m\ndata:\n  train: t.jsonl\nloss:\n  beta: 0.1\n")
    config = load_config(
        path,
        [
            "loss.beta=0.3",
            "loss.intermediate.layers=[8, 16]",
            "training.max_steps=5",
            "model.lora.r=4",
            "loss.method=dpop",
            "loss.dpop_lambda=50",
        ],
    )
    assert config.loss.beta == 0.3 and config.loss.intermediate.layers == [8, 16]
    assert config.training == {"max_steps": 5}
    assert config.model.lora.r == 4 and config.loss.method == "dpop"
    assert parse_override("data.eval=null") == (["data", "eval"], None)
    with pytest.raises(DpolabError, match=r"not of the form section\.key=value"):
        parse_override("beta")
    with pytest.raises(DpolabError, match="name a section and a key"):
        parse_override("beta=0.3")


def test_exponent_only_numbers_are_floats(tmp_path):
    # PyYAML's YAML 1.1 reads `1e-3` as a string; users write it in configs and on command lines
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name_or_path: m\ndata:\n  train: t.jsonl\ntraining:\n  learning_rate: 5e-7\n")
    config = load_config(
        path, ["loss.beta=3E-1", "training.weight_decay=1e-2", "training.adam_epsilon=1.0e-8"]
    )
    assert config.training == {"learning_rate": 5e-7, "weight_decay": 0.01, "adam_epsilon": 1e-8}
    assert config.loss.beta == 0.3
    assert parse_override("training.run_name=e5") == (["training", "run_name"], "e5")
    assert parse_override("training.max_steps=10") == (["training", "max_steps"], 10)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(DpolabError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(DpolabError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name", ["dpo", "dpop", "idpo", "ipo", "sft", "simpo", "orpo", "mpo"])
def test_examples_are_valid_and_shipped_in_the_repo(name):
    text = example_text(name)
    repo_copy = Path(__file__).parents[2] / "examples" / f"{name}.yaml"
    assert repo_copy.read_text() == text
    import yaml

    config = config_from_dict(yaml.safe_load(text), stage="sft" if name == "sft" else "train")
    assert config.model.name_or_path


def test_examples_carry_the_papers_settings():
    import yaml

    idpo = config_from_dict(yaml.safe_load(example_text("idpo")))
    assert idpo.model.name_or_path == "mistralai/Mistral-7B-Instruct-v0.1"
    assert (idpo.model.lora.r, idpo.model.lora.alpha, idpo.model.lora.dropout) == (16, 16, 0.05)
    assert sorted(idpo.model.lora.target_modules) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert (
        idpo.training["learning_rate"] == 5e-4
        and idpo.loss.beta == 0.1
        and idpo.loss.intermediate.gamma == 0.9
    )
    assert idpo.training["per_device_train_batch_size"] * idpo.training["gradient_accumulation_steps"] == 32
    dpop = config_from_dict(yaml.safe_load(example_text("dpop")))
    assert (dpop.loss.method, dpop.loss.beta, dpop.loss.dpop_lambda) == ("dpop", 0.3, 50.0)
    simpo = config_from_dict(yaml.safe_load(example_text("simpo")))
    assert (simpo.loss.method, simpo.loss.beta, simpo.loss.simpo_gamma) == ("simpo", 2.5, 1.25)  # γ/β = 0.5
    orpo = config_from_dict(yaml.safe_load(example_text("orpo")))
    assert (orpo.loss.method, orpo.loss.beta) == ("orpo", 0.1)  # λ = 0.1
    mpo = config_from_dict(yaml.safe_load(example_text("mpo")))
    assert (mpo.loss.method, mpo.loss.weights) == (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])


def test_config_example_command(capsys):
    assert main(["config", "example", "dpop"]) == 0
    assert "dpop_lambda: 50.0" in capsys.readouterr().out
    assert main(["config", "example", "nope"]) == 2
    assert "no example config 'nope'" in capsys.readouterr().err
    assert set(example_names()) >= {"dpo", "dpop", "idpo", "sft"}


def test_training_arguments_defaults_and_what_the_user_sets(tmp_path, monkeypatch):
    import torch

    from dpolab.training import PREFERENCE
    from dpolab.training.arguments import training_arguments

    out = str(tmp_path / "out")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    args = training_arguments(
        config_from_dict(with_(training={"output_dir": out})), PREFERENCE, has_eval=True
    )
    assert args.ddp_find_unused_parameters is False and args.remove_unused_columns is False
    assert args.eval_strategy == "steps" and args.eval_steps == args.logging_steps
    assert args.dataloader_pin_memory is False  # no accelerator: pinning would only warn
    args = training_arguments(
        config_from_dict(with_(training={"output_dir": out, "dataloader_pin_memory": True})),
        PREFERENCE,
        has_eval=False,
    )
    assert args.dataloader_pin_memory is True and args.eval_strategy == "no"


def test_under_deepspeed_bf16_follows_the_accelerate_config(tmp_path, monkeypatch):
    """DeepSpeed takes bf16/fp16 from the accelerate config's mixed_precision, and transformers
    stops (with a traceback) unless training.bf16/fp16 match: dpolab follows the launcher where
    the training section is silent, and says in one line what to write where it contradicts it."""
    from dpolab.training import PREFERENCE
    from dpolab.training.arguments import _deepspeed_mixed_precision, training_arguments

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert (
        _deepspeed_mixed_precision({}) == {}
    )  # not under DeepSpeed: the Trainer follows the launcher itself
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert _deepspeed_mixed_precision({}) == {"bf16": True}
    assert _deepspeed_mixed_precision({"bf16": True}) == {}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert _deepspeed_mixed_precision({}) == {"fp16": True}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert _deepspeed_mixed_precision({}) == {}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config = config_from_dict(with_(training={"output_dir": str(tmp_path), "bf16": False}))
    with pytest.raises(DpolabError) as err:
        training_arguments(config, PREFERENCE, has_eval=False)
    assert str(err.value) == (
        "training.bf16 is false but the accelerate config's mixed_precision is 'bf16', which DeepSpeed "
        "follows: write training.bf16=true, or change mixed_precision in the accelerate config"
    )
