"""The demo's tokenizer (exact round trip, one token per word/digit/symbol) and tiny model."""

from __future__ import annotations

import pytest
import torch

from dpolab.demo.model import ModelSize, build_model, num_parameters, save_model
from dpolab.demo.task import SplitSizes, TaskConfig, make_splits, task_tokens
from dpolab.demo.tokenizer import build_demo_tokenizer, save_tokenizer

SMALL = ModelSize(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def problems():
    hard = TaskConfig(min_steps=2, max_steps=5, max_start=50, max_value=999)
    return make_splits(seed=11, sizes=SplitSizes(train=300, eval=0, test=0), config=hard)["train"]


def test_round_trips_every_task_text_exactly(tok, problems):
    for p in problems:
        for text in (p.prompt, p.chosen, p.rejected_low, p.rejected_high, p.prompt + p.chosen):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
            # one token per word, digit and symbol, each with the space before it
            assert tok.convert_ids_to_tokens(ids) == [
                t.replace(" ", "Ġ").replace("\n", "Ċ") for t in task_tokens(text)
            ]


def test_digits_are_single_tokens_and_specials_are_set(tok):
    assert tok.convert_ids_to_tokens(tok("123 + 45", add_special_tokens=False)["input_ids"]) == [
        "1",
        "2",
        "3",
        "Ġ+",
        "Ġ4",
        "5",
    ]
    ids = tok("7 + 5")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    # the EOS text appended to a completion (as dpolab.data.tokenize does) is the EOS token
    assert tok("#### 12" + tok.eos_token, add_special_tokens=False)["input_ids"][-1] == tok.eos_token_id
    assert len(tok) < 300


def test_pairs_tokenise_with_the_prompt_as_a_prefix(tok, problems):
    from dpolab.data.formats import PreferenceExample
    from dpolab.data.tokenize import tokenize_pair

    p = problems[0]
    pair = tokenize_pair(
        PreferenceExample(p.prompt, p.chosen, p.rejected_low), tok, max_length=None, max_prompt_length=None
    )
    assert pair.prompt_ids == tok(p.prompt)["input_ids"]
    assert tok.decode(pair.chosen_ids) == p.chosen + "</s>"
    assert tok.decode(pair.rejected_ids) == p.rejected_low + "</s>"


def test_saved_tokenizer_reloads_the_same(tmp_path, tok, problems):
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = problems[1].prompt + problems[1].chosen
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.eos_token_id == tok.eos_token_id and again.pad_token_id == tok.pad_token_id


def test_model_is_a_tiny_llama_saved_in_hf_format(tmp_path, tok):
    from transformers import AutoModelForCausalLM

    assert num_parameters(build_model(tok)) <= 5_000_000  # the default size
    model = save_model(tmp_path, tok, SMALL)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tok) and model.config.pad_token_id == tok.pad_token_id
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([tok("Mia has 7 coins .")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, again(ids).logits)
    assert again(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_model_size_and_seed_are_honoured(tok):
    small = build_model(tok, SMALL, seed=1)
    # embeddings V x 32 (the head tied to them) + per layer: q,k,v,o 4·32·32, mlp 3·32·64, 2 norms 2·32;
    # final norm 32
    v = len(tok)
    assert num_parameters(small) == v * 32 + 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32
    same = build_model(tok, SMALL, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(small.parameters(), same.parameters()))


@pytest.mark.parametrize("name", ["FULL", "QUICK"])
def test_settings_fit_together(name, tok):
    from dpolab.demo import settings

    s = getattr(settings, name)
    layers = [r.loss["intermediate"]["layers"] for r in s.runs if "intermediate" in r.loss]
    # intermediate DPO needs layers strictly inside the model: a middle and a late one, below L
    assert layers and all(1 <= k < s.model.num_layers for k in layers[0]) and len(set(layers[0])) == 2
    # the preference runs draw their pairs from the SFT training problems, each pair once
    prefs = s.preference["max_steps"] * s.preference["per_device_train_batch_size"]
    assert prefs <= s.preference_pairs <= s.sizes.train
    assert num_parameters(build_model(tok, s.model)) <= 5_000_000
