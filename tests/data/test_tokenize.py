"""dpolab tokenises pairs exactly as TRL's DPOTrainer does (`DPOTrainer._prepare_dataset`), and
truncates as TRL's collator does with `truncation_mode="keep_start"`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dpolab.data.formats import BadRow, PreferenceExample, normalise
from dpolab.data.tokenize import tokenize_pair, tokenize_sft, truncate

from .helpers import FIXTURES, read_jsonl

STANDARD = [
    {
        "prompt": "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
        "chosen": " 3 + 5 = 8. #### 8",
        "rejected": " 3 + 5 = 9. #### 9",
    },
    {
        "prompt": "The capital of France is ",
        "chosen": "Paris.",
        "rejected": "Lyon.",
    },  # merges across the boundary
    {"prompt": "Human: hi", "chosen": " Hello!</s>", "rejected": " Go away."},  # EOS already there
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
        "rejected": [{"role": "assistant", "content": "Lyon."}],
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    },
]
IMPLICIT = read_jsonl(FIXTURES / "hh_rlhf_train.jsonl")[:5]


def trl_tokenize(rows, tokenizer):
    """TRL's own preprocessing: prompt extraction, EOS, tokenisation (no truncation there)."""
    import datasets
    from trl.trainer.dpo_trainer import DPOTrainer

    datasets.disable_progress_bars()
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    trainer = SimpleNamespace(_tokenizer=tokenizer)  # all `_prepare_dataset` reads from `self`
    out = DPOTrainer._prepare_dataset(trainer, datasets.Dataset.from_list(rows), tokenizer, args, "train")
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in out]


def ours(rows, tokenizer, **kwargs):
    kwargs = {"max_length": None, "max_prompt_length": None, **kwargs}
    pairs = [tokenize_pair(normalise(row), tokenizer, **kwargs) for row in rows]
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


@pytest.mark.parametrize(
    "rows", [STANDARD, CONVERSATIONAL, IMPLICIT], ids=["standard", "conversational", "implicit"]
)
def test_token_ids_match_trl(rows, tokenizer):
    expected = trl_tokenize(rows, tokenizer)
    assert ours(rows, tokenizer) == expected
    assert all(chosen[-1] == tokenizer.eos_token_id or rows is CONVERSATIONAL for _, chosen, _ in expected)


def test_standard_pair_by_hand(tokenizer):
    pair = tokenize_pair(
        PreferenceExample("Human: hi", " Hello", " Go"), tokenizer, max_length=None, max_prompt_length=None
    )
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert pair.prompt_ids == [bos, *tokenizer("Human: hi", add_special_tokens=False)["input_ids"]]
    assert pair.chosen_ids == [*tokenizer(" Hello", add_special_tokens=False)["input_ids"], eos]
    assert pair.rejected_ids == [*tokenizer(" Go", add_special_tokens=False)["input_ids"], eos]


@pytest.mark.parametrize("max_length", [12, 18, 45, 52])
def test_truncation_matches_trl_collator_keep_start(tokenizer, max_length):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    full = ours(STANDARD + CONVERSATIONAL, tokenizer)
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length)
    seen = set()
    for row, (prompt, chosen, rejected) in zip(STANDARD + CONVERSATIONAL, full):
        if len(prompt) >= max_length:  # TRL drops such rows in `_prepare_dataset`; dpolab names them
            with pytest.raises(BadRow) as err:
                tokenize_pair(normalise(row), tokenizer, max_length=max_length, max_prompt_length=None)
            assert err.value.field == "prompt"
            seen.add("prompt too long")
            continue
        batch = collator([{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}])
        pair = tokenize_pair(normalise(row), tokenizer, max_length=max_length, max_prompt_length=None)
        for i, completion in enumerate((pair.chosen_ids, pair.rejected_ids)):
            mask = batch["attention_mask"][i].bool()
            assert batch["input_ids"][i][mask].tolist() == pair.prompt_ids + completion
            assert batch["completion_mask"][i][mask].tolist() == [0] * len(pair.prompt_ids) + [1] * len(
                completion
            )
        assert pair.completion_truncated == (len(prompt) + max(len(chosen), len(rejected)) > max_length)
        seen.add("truncated" if pair.completion_truncated else "whole")
    assert {"prompt too long", "truncated"} <= seen  # (prompt, chosen, rejected) lengths: see the rows above


def test_truncate_keeps_the_prompt_end_and_the_completion_start():
    prompt, (chosen, rejected), p_cut, c_cut = truncate(
        list(range(10)), [[10, 11, 12, 13], [20]], max_length=7, max_prompt_length=4
    )
    assert prompt == [6, 7, 8, 9]  # the last 4 prompt tokens
    assert (chosen, rejected) == ([10, 11, 12], [20])  # 7 - 4 = 3 completion tokens left
    assert (p_cut, c_cut) == (True, True)
    assert truncate([1, 2], [[3], [4]], max_length=None, max_prompt_length=None) == (
        [1, 2],
        [[3], [4]],
        False,
        False,
    )


def test_prompt_too_long_is_a_bad_row_named_prompt(tokenizer):
    example = PreferenceExample("A very long prompt " * 10, " yes", " no")
    with pytest.raises(BadRow) as err:
        tokenize_pair(example, tokenizer, max_length=8, max_prompt_length=None)
    assert err.value.field == "prompt"
    assert "so no completion token survives max_length=8" in err.value.reason


def test_completions_equal_after_truncation_are_a_bad_row(tokenizer):
    example = PreferenceExample("Q:", " the same start, then A", " the same start, then B")
    prompt_len = len(tokenize_pair(example, tokenizer, max_length=None, max_prompt_length=None).prompt_ids)
    with pytest.raises(BadRow) as err:
        tokenize_pair(example, tokenizer, max_length=prompt_len + 2, max_prompt_length=None)
    assert (err.value.field, err.value.reason) == (
        "rejected",
        f"identical to chosen within max_length={prompt_len + 2} tokens",
    )


def test_sft_is_the_chosen_half(tokenizer):
    example = normalise(STANDARD[0])
    sft = tokenize_sft(example, tokenizer, max_length=None, max_prompt_length=None)
    pair = tokenize_pair(example, tokenizer, max_length=None, max_prompt_length=None)
    assert (sft.prompt_ids, sft.chosen_ids, sft.rejected_ids) == (pair.prompt_ids, pair.chosen_ids, [])


def test_conversational_data_needs_a_chat_template():
    from dpolab.errors import DpolabError
    from dpolab.testing import build_tokenizer

    plain = build_tokenizer(chat_template=False)
    with pytest.raises(DpolabError, match="has no chat template"):
        tokenize_pair(normalise(CONVERSATIONAL[0]), plain, max_length=None, max_prompt_length=None)
