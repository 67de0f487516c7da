"""`dpolab config from-trl` and `from-llamafactory`: the docs' key tables are the converters' rules,
the TRL rules cover every key of TRL 1.16's config classes, the docs' examples print what the page
shows, and a converted LLaMA-Factory config trains on its ShareGPT data."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from dpolab.cli import main
from dpolab.commands.config import converted
from dpolab.config import from_llamafactory, from_trl
from dpolab.errors import DpolabError
from dpolab.training import config_from_dict

DOC = Path(__file__).parents[2] / "docs" / "coming-from-trl-llamafactory.md"
TEXT = DOC.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text under the heading `title` (## or ###) up to the next heading outside code."""
    lines, out, inside, fenced = TEXT.splitlines(keepends=True), [], False, False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading = not fenced and re.match(r"#{2,3} ", line)
        if heading and inside:
            break
        if heading and line.split(" ", 1)[1].strip() == title:
            inside = True
        elif inside:
            out.append(line)
    assert inside, title
    return "".join(out)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("tool", [from_trl, from_llamafactory], ids=["trl", "llamafactory"])
def test_the_key_table_is_the_converters_rules(tool):
    rows = [line for line in section(tool.TOOL).splitlines() if line.startswith("| `")]
    assert rows == [rule.table_row() for rule in tool.RULES.values()]


def test_the_trl_rules_cover_every_key_of_trls_config_classes():
    """TRL 1.16's own classes: every DPOConfig key beyond TrainingArguments, every key of
    ScriptArguments, ModelConfig and DatasetMixtureConfig has a rule (and no rule is made up)."""
    from transformers import TrainingArguments
    from trl import DPOConfig, ModelConfig, ScriptArguments
    from trl.scripts.utils import DatasetMixtureConfig

    def names(cls):
        return {f.name for f in dataclasses.fields(cls) if f.init}

    trl_keys = (names(DPOConfig) - names(TrainingArguments)) | names(ScriptArguments) | names(ModelConfig)
    trl_keys |= names(DatasetMixtureConfig)
    renames = {rule.key for rule in from_trl.TRAINING_RENAMES}
    assert set(from_trl.RULES) - renames == trl_keys


def test_a_trl_config_with_every_key_at_its_default_converts_to_a_config_that_loads():
    """TRL's defaults that are also dpolab's are left out (a default is not a choice): nothing is
    reported, and no key takes part in a conflict check (f_alpha without alpha_divergence)."""
    from transformers import TrainingArguments
    from trl import DPOConfig, ModelConfig, ScriptArguments
    from trl.scripts.utils import DatasetMixtureConfig

    training = {f.name for f in dataclasses.fields(TrainingArguments)}
    values = {"model_name_or_path": "m", "dataset_name": "d"}
    for cls in (DPOConfig, ScriptArguments, ModelConfig, DatasetMixtureConfig):
        for f in dataclasses.fields(cls):
            if f.init and f.name not in training and f.name not in values:
                has_default = f.default is not dataclasses.MISSING
                values[f.name] = f.default if has_default else f.default_factory()
    out = convert_trl(values)
    assert out.unmapped == []
    assert out.values == {
        "model": {"name_or_path": "m"},
        "data": {"train": "d", "max_length": 1024, "max_prompt_length": None},
        "loss": {"method": "dpo", "beta": 0.1},
    }
    config_from_dict(out.values)


@pytest.mark.parametrize(
    ("title", "config", "files"),
    [
        ("A TRL config", "trl-dpo.yaml", {}),
        ("A LLaMA-Factory config", "llamafactory-dpo.yaml", {"data/dataset_info.json": "json"}),
    ],
)
def test_the_pages_examples_print_what_the_page_shows(title, config, files, tmp_path, monkeypatch, capsys):
    text = section(title)
    source, shown = blocks(text, "yaml")
    for name, lang in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(blocks(text, lang)[0])
    (tmp_path / config).write_text(source)
    monkeypatch.chdir(tmp_path)
    tool = "trl" if "TRL" in title else "llamafactory"
    assert main(["config", f"from-{tool}", config]) == 0
    out, err = capsys.readouterr()
    assert out == shown
    assert "fix" not in err  # the converted config loads
    values = yaml.safe_load(out)
    config_from_dict(values, stage="train")


def test_the_data_example_loads():
    (block,) = blocks(section("Data as you have it"), "yaml")
    config = config_from_dict({"model": {"name_or_path": "m"}, **yaml.safe_load(block)})
    assert config.data.columns == {"prompt": "question", "chosen": "good", "rejected": "bad"}


def convert_trl(values):
    return from_trl.convert(values)


def test_trl_losses_and_their_keys():
    """Keys the method does not take: left out at their default (TRL ignores them too), reported
    otherwise; a list of loss types is a weighted sum; an unknown type is reported."""
    out = convert_trl({"loss_type": "ipo", "label_smoothing": 0.0, "beta": 0.5})
    assert out.values["loss"] == {"method": "ipo", "beta": 0.5} and out.unmapped == []
    out = convert_trl({"loss_type": ["ipo"], "label_smoothing": 0.2})
    assert out.values["loss"] == {"method": "ipo"}
    assert out.unmapped == [("label_smoothing", 0.2, "loss.method ipo does not take it")]
    out = convert_trl({"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]})
    assert out.values["loss"] == {"method": ["dpo", "bco_pair", "sft"], "weights": [0.8, 0.2, 1.0]}
    out = convert_trl({"loss_type": "kto_pair"})
    assert "loss" not in out.values and out.unmapped[0][0] == "loss_type"


def test_trl_data_sources():
    out = convert_trl(
        {"dataset_name": "org/set", "dataset_config": "en", "dataset_train_split": "train_prefs"}
    )
    assert out.values["data"] == {"train": "org/set:en", "split": "train_prefs", "max_prompt_length": None}
    assert "dataset_test_split: TRL evaluates" not in " ".join(out.notes)
    out = convert_trl({"dataset_name": "d", "dataset_test_split": "test_prefs"})
    assert "eval" not in out.values["data"] and any("dataset_test_split" in n for n in out.notes)
    mixture = [
        {"path": "json", "data_files": "a.jsonl", "fraction": 0.7},
        {"path": "org/b", "name": "x", "split": "prefs", "fraction": 0.3},
        {"path": "csv", "data_files": "c.csv"},
    ]
    out = convert_trl({"datasets": mixture, "test_split_size": 0.05})
    assert out.values["data"]["train"] == [
        {"path": "a.jsonl", "weight": 0.7},
        {"path": "org/b:x", "split": "prefs", "weight": 0.3},
    ]
    assert (
        out.values["data"]["mix_strategy"] == "interleave_under" and out.values["data"]["eval_size"] == 0.05
    )
    assert out.unmapped[0][0] == "datasets[2].data_files"


def test_trl_keys_at_their_default_need_no_line_and_others_do():
    out = convert_trl({"sync_ref_model": False, "model_revision": "main", "max_grad_norm": 0.5})
    assert out.unmapped == [] and out.values["training"] == {"max_grad_norm": 0.5}
    out = convert_trl({"sync_ref_model": True, "load_in_4bit": True, "no_such_key": 1})
    assert [key for key, _, _ in out.unmapped] == ["sync_ref_model", "load_in_4bit", "no_such_key"]
    assert out.unmapped[2][2] == "not a TRL key this converter knows"


def write_dataset_info(folder: Path, entries: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_info.json").write_text(json.dumps(entries))


def test_llamafactory_datasets_losses_and_stages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_dataset_info(
        tmp_path / "data",
        {
            "orca": {
                "file_name": "orca.json",
                "ranking": True,
                "columns": {
                    "prompt": "question",
                    "chosen": "chosen",
                    "rejected": "rejected",
                    "system": "system",
                },
            },
            "alpaca_pairs": {"file_name": "a.jsonl", "ranking": True},
            "chat": {"hf_hub_url": "org/chat", "subset": "en", "ranking": True, "formatting": "sharegpt"},
            "sft_only": {"file_name": "s.json"},
        },
    )
    values = {
        "stage": "dpo",
        "dataset": "orca, alpaca_pairs,chat,sft_only,missing",
        "interleave_probs": "0.5,0.3,0.2",
        "mix_strategy": "interleave_over",
        "pref_loss": "sigmoid",
        "pref_ftx": 0.5,
        "finetuning_type": "full",
    }
    out = from_llamafactory.convert(values, tmp_path / "c.yaml")
    assert out.values["data"]["train"] == [
        {"path": "data/orca.json", "columns": {"prompt": "question"}, "weight": 0.5},
        {"path": "data/a.jsonl", "columns": {"prompt": "instruction", "query": "input"}, "weight": 0.3},
        {"path": "org/chat:en", "columns": {"messages": "conversations"}, "weight": 0.2},
    ]
    assert out.values["data"]["mix_strategy"] == "interleave_over"
    assert out.values["loss"] == {"method": ["dpo", "sft"], "weights": [1.0, 0.5]}
    assert "lora" not in out.values.get("model", {})
    assert [key for key, _, _ in out.unmapped] == [
        "dataset sft_only",
        "dataset",
    ]  # not pairs; not in the file
    config_from_dict({"model": {"name_or_path": "m"}, **out.values})
    assert (
        from_llamafactory.convert({"stage": "dpo", "pref_loss": "kto_pair"}, tmp_path).unmapped[0][0]
        == "pref_loss"
    )
    sft = from_llamafactory.convert({"stage": "sft", "pref_beta": 0.2}, tmp_path / "c.yaml")
    assert sft.command == "sft" and "loss" not in sft.values
    with pytest.raises(DpolabError, match="stage: ppo: dpolab converts dpo"):
        from_llamafactory.convert({"stage": "ppo"}, tmp_path)


SHAREGPT_ROWS = [
    {
        "conversations": [{"from": "human", "value": f"What is {a} plus {a}?"}],
        "chosen": {"from": "gpt", "value": f"It is {2 * a}."},
        "rejected": {"from": "gpt", "value": f"It is {2 * a + 1}."},
        "system": "You answer in one sentence." if a % 2 else "",
    }
    for a in range(6)
]


def test_a_converted_llamafactory_config_trains_on_its_sharegpt_data(tmp_path, monkeypatch, model_dir):
    """End to end: LLaMA-Factory's preference format (ShareGPT conversations, single-message
    answers, a system column) through the converted config, one training step on a tiny model."""
    monkeypatch.chdir(tmp_path)
    write_dataset_info(
        tmp_path / "data",
        {
            "demo": {
                "file_name": "demo.json",
                "ranking": True,
                "formatting": "sharegpt",
                "columns": {"system": "system"},
            }
        },
    )
    (tmp_path / "data" / "demo.json").write_text(json.dumps(SHAREGPT_ROWS))
    (tmp_path / "lf.yaml").write_text(
        f"model_name_or_path: {model_dir}\nstage: dpo\nfinetuning_type: lora\nlora_rank: 4\ndataset: demo\n"
        "cutoff_len: 128\nper_device_train_batch_size: 3\nmax_steps: 1\noutput_dir: out\nval_size: 2\n"
    )
    values = converted(tmp_path / "lf.yaml", "llamafactory").values
    assert values["data"]["train"] == "data/demo.json"
    from dpolab.training import run

    summary = run(config_from_dict(values))
    assert summary["global_step"] == 1 and summary["pairs"] == {"train": 4, "eval": 2}
    assert summary["last_eval"]["loss"] > 0
