"""A GGUF file as a model: the one loader reads it (dequantised by transformers) into the model it
was written from, says so once, and everything dpolab saves from it is in Hugging Face format;
the caches key the file by its contents; a missing `gguf` package is one line saying what to install.

The GGUF files are written here from a tiny Llama (`dpolab.testing_gguf`, llama.cpp's layout)."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest
import torch

from dpolab.cli import main
from dpolab.errors import DpolabError
from dpolab.evaluation.harness import harness_model_args
from dpolab.modeling.fingerprint import model_fingerprint
from dpolab.modeling.loading import load_causal_lm, load_for_inference, load_model_config, load_tokenizer
from dpolab.testing import build_tokenizer, tiny_model

pytest.importorskip("gguf")
from dpolab.testing_gguf import write_tiny_gguf

IDS = torch.tensor([[5, 40, 77, 120, 9, 200, 31]])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(tiny Llama, its tokenizer, an F32 GGUF file of them, a Q8_0 one) in one folder."""
    folder = tmp_path_factory.mktemp("gguf")
    tokenizer = build_tokenizer()
    # one more id than the tokenizer has: transformers' GGUF tokenizer adds <|endoftext|> as unk
    model = tiny_model("llama", vocab_size=len(tokenizer) + 1, hidden_size=64, num_layers=2)
    f32 = write_tiny_gguf(model, tokenizer, folder / "tiny-f32.gguf")
    q8 = write_tiny_gguf(model, tokenizer, folder / "tiny-q8_0.gguf", quantize=True)
    return model, tokenizer, f32, q8


def test_a_gguf_file_loads_as_the_model_it_was_written_from(written):
    model, tokenizer, f32, q8 = written
    expected = model(IDS).logits
    loaded = load_causal_lm(str(f32))
    assert type(loaded) is type(model)  # a plain LlamaForCausalLM
    assert torch.equal(loaded(IDS).logits, expected)  # F32 tensors: the same weights exactly
    assert all(p.requires_grad for p in loaded.parameters())  # trainable as loaded
    # Q8_0 is dequantised: within the quantisation error (8 bits per weight, one scale per 32)
    assert torch.allclose(load_causal_lm(str(q8))(IDS).logits, expected, atol=0.05)
    # no quantisation marker: neither on the model nor on the config read alone
    assert not hasattr(loaded.config, "quantization_config") and not getattr(loaded, "is_quantized", False)
    config = load_model_config(str(f32))
    assert not hasattr(config, "quantization_config") and config.num_hidden_layers == 2
    # the tokenizer and its chat template come from the file
    gguf_tokenizer = load_tokenizer(str(f32))
    text = "The quick brown fox"
    assert gguf_tokenizer(text)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    assert gguf_tokenizer.eos_token == "</s>" and gguf_tokenizer.pad_token == "<pad>"


def test_the_gguf_file_is_said_once_in_the_log(written, caplog):
    _, _, f32, _ = written
    from dpolab.modeling import loading

    loading._ANNOUNCED.discard(str(f32.resolve()))
    with caplog.at_level(logging.INFO, logger="dpolab"):
        load_causal_lm(str(f32))
        load_causal_lm(str(f32))  # a run loads its model twice (policy, reference)
    said = [r.getMessage() for r in caplog.records if "GGUF" in r.getMessage()]
    assert said == [
        f"model: {f32} is a GGUF file, dequantised to float32 by transformers; what dpolab saves from it "
        "is in Hugging Face format"
    ]


def test_without_the_gguf_package_one_line_says_what_to_install(written, tmp_path, monkeypatch, capsys):
    _, _, f32, _ = written
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as if it were not installed
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    code = main(["generate", "--model", str(f32), "--prompts", str(prompts), "--output", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.endswith("is a GGUF file; reading it needs the gguf package: pip install 'dpolab[gguf]'")


def test_a_missing_gguf_file_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(DpolabError, match=r"model '.*nothere.gguf': no such file"):
        load_causal_lm(str(tmp_path / "nothere.gguf"))
    monkeypatch.chdir(tmp_path)  # a bare file name, read from the current directory
    with pytest.raises(DpolabError, match=r"^tokenizer 'model.gguf': no such file$"):
        load_tokenizer("model.gguf")
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(DpolabError, match=r"folder.gguf': not a file \(a GGUF model is one .gguf file\)"):
        load_model_config(str(tmp_path / "folder.gguf"))


def test_the_fingerprint_keys_a_gguf_file_by_its_contents(written, tmp_path):
    model, tokenizer, _, _ = written
    a = write_tiny_gguf(model, tokenizer, tmp_path / "a.gguf")
    b = write_tiny_gguf(model, tokenizer, tmp_path / "b.gguf", quantize=True)
    first = model_fingerprint(str(a))
    assert first["path"] == str(a.resolve()) and "hub_id" not in first  # a file, not a hub id
    assert model_fingerprint(str(a)) == first  # nothing changed: the caches serve
    assert model_fingerprint(str(b)) != first  # another file in the same folder
    data = bytearray(a.read_bytes())
    data[len(data) // 2] ^= 0xFF  # another weight in the middle, same size
    before = a.stat().st_mtime_ns
    while a.stat().st_mtime_ns == before:
        time.sleep(0.01)
        a.write_bytes(bytes(data))
    assert model_fingerprint(str(a)) != first


def test_train_generate_and_judge_from_a_gguf_file(written, tmp_path, capsys):
    """`dpolab train` from a GGUF file (policy and precomputed reference) saves a Hugging Face
    model; `dpolab generate --model` and the `hf:` judge take the GGUF file as it is."""
    _, _, f32, _ = written
    rows = [
        {"prompt": "Question: 2 + 2 = ?", "chosen": " 4", "rejected": " 5"},
        {"prompt": "The quick brown fox", "chosen": " jumps.", "rejected": " sleeps."},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    overrides = [
        f"model.name_or_path={f32}",
        f"data.train={data}",
        f"training.output_dir={out}",
        "training.max_steps=1",
        "training.per_device_train_batch_size=2",
        "training.learning_rate=1e-3",
        "reference.precompute=true",
        f"reference.cache_dir={tmp_path / 'cache'}",
    ]
    config = tmp_path / "run.yaml"
    config.write_text("loss:\n  method: dpo\n  beta: 0.1\n")
    assert main(["train", str(config), *overrides]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in saved and saved["model_type"] == "llama"
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    trained, _ = load_for_inference(str(out), device="cpu")
    start = load_causal_lm(str(f32))
    assert not torch.equal(trained(IDS).logits, start(IDS).logits)  # it trained, and saved what it trained

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Question: 2 + 2 = ?"}\n{"prompt": "The quick brown fox"}\n')
    answers = tmp_path / "answers.jsonl"
    generate = ["generate", "--model", str(f32), "--prompts", str(prompts), "--output", str(answers)]
    assert main([*generate, "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert [json.loads(line)["model"] for line in answers.read_text().splitlines()] == [str(f32)] * 2
    result = tmp_path / "winrate.json"
    judge = ["eval", "winrate", "--a", str(answers), "--b", str(answers), "--judge", f"hf:{f32}"]
    assert main([*judge, "--output", str(result), "--bootstrap", "10"]) == 0
    verdicts = json.loads(result.read_text())
    assert verdicts["wins"] + verdicts["losses"] + verdicts["ties"] == 2


def test_lm_eval_gets_the_gguf_file_as_its_folder_and_name(tmp_path):
    path = tmp_path / "m" / "model.Q4_1.gguf"
    assert harness_model_args(str(path), dtype="float32") == (
        f"pretrained={path.parent},gguf_file=model.Q4_1.gguf,dtype=float32,add_bos_token=False"
    )
