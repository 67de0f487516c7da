"""The data preparation as it was before it moved onto Arrow tables (commit b19f2bc): Python lists
of dicts, one pair tokenised at a time with one tokenizer call per text, in one process. The
engine (`dpolab.data.prepare`) is tested against it: the same pairs in the same order, the same
token ids, the same bad rows and counts.

Only the orchestration and the per-text tokenizer calls are kept here; the per-row functions it
calls (`normalise`, the builders, `truncate`, `mixture_counts`, `resample`) are the
package's own, tested on their own.
"""

from __future__ import annotations

import random
from typing import Any

from dpolab.data.builders import build_pairs
from dpolab.data.formats import BadRow, common_prefix_length
from dpolab.data.mixture import check_specs, mixture_counts, resample
from dpolab.data.pairs import BadRowPolicy, load_pairs
from dpolab.data.prepare import merge_reports, train_spec
from dpolab.data.tokenize import TokenizedPair, truncate
from dpolab.errors import DpolabError


def _ids(tokenizer, text, *, generation_prompt=False):
    if isinstance(text, list):
        out = tokenizer.apply_chat_template(
            text, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )
        return list(out["input_ids"])
    return list(tokenizer(text)["input_ids"])


def tokenize_prompt_completions(tokenizer, prompt, completions):
    eos = tokenizer.eos_token or ""
    prompt_ids = _ids(tokenizer, prompt, generation_prompt=True)
    full = []
    for completion in completions:
        if isinstance(completion, list):
            full.append(_ids(tokenizer, prompt + completion))
        else:
            text = completion if completion.endswith(eos) else completion + eos
            full.append(_ids(tokenizer, prompt + text))
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return full[0][:prompt_len], [ids[prompt_len:] for ids in full]


def tokenize_pair(example, tokenizer, *, max_length, max_prompt_length):
    prompt_ids, (chosen_ids, rejected_ids) = tokenize_prompt_completions(
        tokenizer, example.prompt, [example.chosen, example.rejected]
    )
    if not prompt_ids:
        raise BadRow("prompt", "no prompt tokens (the prompt must tokenise to at least one token)")
    if not chosen_ids:
        raise BadRow("chosen", "no tokens after the prompt")
    if not rejected_ids:
        raise BadRow("rejected", "no tokens after the prompt")
    prompt_ids, (chosen_ids, rejected_ids), p_trunc, c_trunc = truncate(
        prompt_ids, [chosen_ids, rejected_ids], max_length=max_length, max_prompt_length=max_prompt_length
    )
    if chosen_ids == rejected_ids:
        raise BadRow("rejected", f"identical to chosen within max_length={max_length} tokens")
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, example.row, p_trunc, c_trunc)


def tokenize_sft(example, tokenizer, *, max_length, max_prompt_length):
    prompt_ids, (chosen_ids,) = tokenize_prompt_completions(tokenizer, example.prompt, [example.chosen])
    if not prompt_ids:
        raise BadRow("prompt", "no prompt tokens (the prompt must tokenise to at least one token)")
    if not chosen_ids:
        raise BadRow("chosen", "no tokens after the prompt")
    prompt_ids, (chosen_ids,), p_trunc, c_trunc = truncate(
        prompt_ids, [chosen_ids], max_length=max_length, max_prompt_length=max_prompt_length
    )
    return TokenizedPair(prompt_ids, chosen_ids, [], example.row, p_trunc, c_trunc)


def hold_out(
    pairs: list[dict[str, Any]], origins: list[tuple[str, int]], eval_size: float | int, *, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def content(i: int):
        pair = pairs[i]
        return origins[i], *(tuple(pair[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))

    distinct = list(dict.fromkeys(content(i) for i in range(len(pairs))))
    n_eval = round(eval_size * len(distinct)) if eval_size < 1 else int(eval_size)
    if not 0 < n_eval < len(distinct):
        raise DpolabError(
            f"data.eval_size: {eval_size} leaves {n_eval} of {len(distinct)} distinct pairs for "
            f"evaluation; choose a size that keeps pairs on both sides"
        )
    rows = list(dict.fromkeys(origins))
    pairs_of_row: dict[tuple[str, int], int] = {}
    for key in distinct:
        pairs_of_row[key[0]] = pairs_of_row.get(key[0], 0) + 1
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held, count = set(), 0
    for index in order:
        if count >= n_eval:
            break
        held.add(rows[index])
        count += pairs_of_row[rows[index]]
    if len(held) == len(rows):
        raise DpolabError(f"data.eval_size: {eval_size} holds out every source row; choose a smaller size")
    seen, eval_pairs = set(), []
    for i, pair in enumerate(pairs):
        key = content(i)
        if origins[i] in held and key not in seen:
            seen.add(key)
            eval_pairs.append(pair)
    train_pairs = [pair for i, pair in enumerate(pairs) if origins[i] not in held]
    return train_pairs, eval_pairs


def load_sources(specs, *, fmt, on_bad_rows, seed, mix_strategy):
    specs = check_specs(specs)
    per_source, reports = [], []
    for spec in specs:
        if spec["builder"]:
            examples, report = build_pairs(
                spec["builder"], spec["path"], split=spec["split"], seed=seed, on_bad_rows=on_bad_rows
            )
        else:
            examples, report = load_pairs(spec["path"], split=spec["split"], fmt=fmt, on_bad_rows=on_bad_rows)
        per_source.append(examples)
        reports.append(report)
    if specs[0]["weight"] is None:
        return [e for examples in per_source for e in examples], reports
    counts = mixture_counts(
        [len(e) for e in per_source], [spec["weight"] for spec in specs], mix_strategy=mix_strategy
    )
    rng = random.Random(seed)
    mixture = [e for examples, count in zip(per_source, counts) for e in resample(examples, count, rng)]
    rng.shuffle(mixture)
    return mixture, reports


def _spec_name(spec) -> str:
    if isinstance(spec, list):
        return ", ".join(str(s.get("path") if isinstance(s, dict) else s) for s in spec)
    return str(spec)


def _load_examples(spec, *, split, data, seed, limit=None):
    if isinstance(spec, list):
        examples, reports = load_sources(
            spec, fmt=data.format, on_bad_rows=data.on_bad_rows, seed=seed, mix_strategy=data.mix_strategy
        )
        return examples[:limit], reports
    examples, report = load_pairs(
        spec, split=split, fmt=data.format, on_bad_rows=data.on_bad_rows, limit=limit
    )
    return examples, [report]


def _tokenize_all(examples, source, tokenizer, data, *, tokenize, state, origins=None):
    policies = {}
    pairs = []
    for example in examples:
        try:
            pair = tokenize(
                example, tokenizer, max_length=data.max_length, max_prompt_length=data.max_prompt_length
            )
        except BadRow as err:
            name = example.source or source
            policies.setdefault(name, BadRowPolicy(name, data.on_bad_rows)).bad(
                example.row, err.field, err.reason
            )
            continue
        state["truncated_prompts"] += pair.prompt_truncated
        state["truncated_completions"] += pair.completion_truncated
        item = pair.to_dict()
        item["length"] = len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
        pairs.append(item)
        if origins is not None:
            origins.append((example.source or source, example.row))
    state["reports"] += [p.report for p in policies.values()]
    for index, item in enumerate(pairs):
        item["index"] = index
    if not pairs:
        raise DpolabError(
            f"{source}: no pair survives tokenisation (see data.max_length / max_prompt_length)"
        )
    return pairs


def naive_prepare(data, tokenizer, *, sft=False, seed=42, data_seed=None) -> dict:
    """{"train", "eval", "reports", "truncated_prompts", "truncated_completions"} as the old
    `prepare_data` made them (train and eval: lists of the dicts the collator received)."""
    tokenize = tokenize_sft if sft else tokenize_pair
    state = {"reports": [], "truncated_prompts": 0, "truncated_completions": 0, "eval": None}
    mix_seed = data_seed or seed
    spec = train_spec(data)
    examples, reports = _load_examples(spec, split=data.split, data=data, seed=mix_seed, limit=data.limit)
    state["reports"] += reports
    origins = []
    state["train"] = _tokenize_all(
        examples, _spec_name(spec), tokenizer, data, tokenize=tokenize, state=state, origins=origins
    )
    if data.eval:
        examples, reports = _load_examples(
            data.eval, split=data.eval_split or "test", data=data, seed=mix_seed
        )
        state["reports"] += reports
        state["eval"] = _tokenize_all(
            examples, _spec_name(data.eval), tokenizer, data, tokenize=tokenize, state=state
        )
    elif data.eval_size is not None:
        state["train"], state["eval"] = hold_out(state["train"], origins, data.eval_size, seed=seed)
        for part in (state["train"], state["eval"]):
            for index, item in enumerate(part):
                item["index"] = index
    state["reports"] = [r.to_dict() for r in merge_reports(state["reports"])]
    return state
