"""`dpolab train` from the adapter `dpolab sft` saves under LoRA: the base model with the adapter
merged is the starting policy and the reference, and a new LoRA adapter trained on top of it
loads on its own afterwards."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from dpolab.errors import DpolabError
from dpolab.modeling.loading import load_for_inference
from dpolab.testing import tiny_config, tiny_model
from dpolab.training import SFT, config_from_dict
from dpolab.training.run import MERGED_START, run

PAIRS = [{"prompt": f"Question {i}:", "chosen": " yes yes", "rejected": " no no"} for i in range(8)]
IDS = torch.tensor([[0, 5, 17, 42, 99, 7, 1]])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(model, data, out, **training):
    return {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
        "training": {
            "output_dir": str(out),
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "disable_tqdm": True,
            "seed": 0,
            **training,
        },
    }


def state(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, tokenizer):
    """A tiny Llama and the LoRA adapter that `dpolab sft` trained on it (adapter files only)."""
    root = tmp_path_factory.mktemp("sft-adapter")
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    data = write_jsonl(root / "pairs.jsonl", PAIRS)
    values = config(root / "base", data, root / "sft", max_steps=3, learning_rate=2e-2)
    values["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    run(config_from_dict(values, stage="sft"), SFT)
    assert (root / "sft" / "adapter_config.json").is_file() and not (root / "sft" / "config.json").exists()
    return root


@pytest.mark.parametrize("lora", [False, True])
def test_train_from_an_sft_adapter(tmp_path, sft_adapter, lora):
    merged, _ = load_for_inference(
        sft_adapter / "sft", dtype="float32", device="cpu"
    )  # as `dpolab eval` reads it
    base, _ = load_for_inference(sft_adapter / "base", dtype="float32", device="cpu")
    assert not torch.allclose(logits(merged), logits(base))  # SFT moved the model

    values = config(
        sft_adapter / "sft", sft_adapter / "pairs.jsonl", tmp_path / "dpo", max_steps=3, learning_rate=1e-2
    )
    values["loss"] = {"beta": 0.5, "intermediate": {"layers": [2]}}
    if lora:
        values["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state_, control, model=None, **kwargs):
            seen["start"] = state(model)

        def on_train_end(self, args, state_, control, model=None, **kwargs):
            seen["end"] = logits(model)

    run(config_from_dict(values), callbacks=(Spy(),))

    # the starting policy is the merged SFT model (under LoRA: its base weights, adapters on top)
    expected = merged.state_dict()
    start = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in seen["start"].items()
    }
    for name, weight in expected.items():
        assert torch.equal(start[name], weight), name
    # ... and so is the reference: at the first step policy = reference, so every reward is 0
    lines = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    first = lines[0]
    assert (
        first["rewards/chosen"] == 0
        and first["rewards/rejected"] == 0
        and first["layers/2/rewards/chosen"] == 0
    )
    assert first["loss"] == pytest.approx(0.693147, abs=1e-6)
    assert lines[-1]["rewards/margins"] > 0  # and it trained

    # what was saved loads on its own and is the model trained in memory
    out = tmp_path / "dpo"
    if lora:
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str((out / MERGED_START).resolve())
        assert not (out / "config.json").exists()
    else:
        assert not (out / "adapter_config.json").exists() and not (out / MERGED_START).exists()
    reloaded, _ = load_for_inference(out, dtype="float32", device="cpu")
    torch.testing.assert_close(logits(reloaded), seen["end"], rtol=1e-5, atol=1e-5)


def _fake_adapter(folder, base):
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    return folder


def test_adapter_layers_are_checked_against_the_base_config_before_weights_load(tmp_path, tokenizer):
    # the base folder has a config and a tokenizer but no weights: only configs may be read
    base = tmp_path / "config-only"
    tiny_config("llama", vocab_size=len(tokenizer), num_layers=4).save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapter = _fake_adapter(tmp_path / "adapter", base)
    values = config(adapter, write_jsonl(tmp_path / "pairs.jsonl", PAIRS), tmp_path / "out")
    values["loss"] = {"intermediate": {"layers": [4]}}
    with pytest.raises(DpolabError, match=r"loss.intermediate.layers: layer 4 is outside 1\.\.3"):
        run(config_from_dict(values))


def test_adapter_whose_base_is_gone(tmp_path):
    adapter = _fake_adapter(tmp_path / "adapter", tmp_path / "moved" / "base")
    values = config(adapter, write_jsonl(tmp_path / "pairs.jsonl", PAIRS), tmp_path / "out")
    with pytest.raises(DpolabError) as err:
        run(config_from_dict(values))
    assert str(err.value).startswith(f"adapter '{adapter}': its base model (adapter_config.json): model ")
    assert "no such folder" in str(err.value)
