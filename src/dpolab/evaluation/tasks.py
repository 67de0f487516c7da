"""Downstream tasks on local files in the datasets' own schemas, scored as lm-evaluation-harness
(v0.4) scores them, zero-shot.

Multiple choice (ARC, HellaSwag). Each choice is the continuation `" " + choice` of the context
(lm-eval's target delimiter); its log-likelihood is the sum of the log-probs of its tokens, the
tokens being those of `context + continuation` after the context's (trailing spaces of the context
move to the continuation; no special tokens unless `add_bos_token`, an empty context gets EOS).
- acc      = 1 if argmax_i LL_i is the gold choice
- acc_norm = 1 if argmax_i LL_i / len(choice_i) is the gold choice, len counting CHARACTERS of the
             choice text without the delimiter (lm-eval: `completion_len = len(choice)`; its
             byte-length variant is `acc_bytes`, not reported here)
The reported value is the mean over documents, with lm-eval's standard error (sample std / √n).

Schemas and prompts (lm-eval's task configs):
- ARC (`arc`): {question, choices: {text, label}, answerKey}; context "Question: {question}\\nAnswer:",
  gold = choices.label.index(answerKey).
- HellaSwag (`hellaswag`): {ctx_a, ctx_b (or ctx), activity_label, endings, label (a string)};
  context preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices
  preprocess(ending), gold = int(label).
- GSM8K (`gsm8k`): {question, answer ending in "#### N"}; greedy generation from
  "Question: {question}\\nAnswer:", cut at "Question:"; exact match of the first `#### N` of the
  output (strict) and of its last number (flexible), lm-eval's two filters, with its exact_match
  normalisation (`dpolab.evaluation.answers.lm_eval_gsm8k`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dpolab.data.io import read_rows
from dpolab.errors import DpolabError, where
from dpolab.evaluation.answers import lm_eval_gsm8k
from dpolab.evaluation.results import format_table, result_header

TARGET_DELIMITER = " "
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")


@dataclass
class ChoiceDoc:
    row: int
    context: str
    choices: list[str]
    gold: int


@dataclass
class GenerationDoc:
    row: int
    prompt: str
    reference: str  # the dataset's answer field, as it is


class _Bad(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _text(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise _Bad(key, "missing" if value is None else f"expected text, found {type(value).__name__}")
    return value


def arc_doc(record: Mapping[str, Any], row: int) -> ChoiceDoc:
    choices = record.get("choices")
    if (
        not isinstance(choices, Mapping)
        or not isinstance(choices.get("text"), list)
        or not isinstance(choices.get("label"), list)
    ):
        raise _Bad("choices", "expected {'text': [...], 'label': [...]}")
    key = record.get("answerKey")
    if key not in choices["label"]:
        raise _Bad("answerKey", f"{key!r} is not one of the labels {choices['label']}")
    return ChoiceDoc(
        row,
        f"Question: {_text(record, 'question')}\nAnswer:",
        [str(t) for t in choices["text"]],
        choices["label"].index(key),
    )


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag clean-up: strip, ' [title]' -> '. ', drop [bracketed] artefacts, '  ' -> ' '."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(record: Mapping[str, Any], row: int) -> ChoiceDoc:
    if "ctx_a" in record and "ctx_b" in record:
        ctx = _text(record, "ctx_a") + " " + _text(record, "ctx_b").capitalize()
    else:
        ctx = _text(record, "ctx")
    label = record.get("activity_label")
    query = hellaswag_preprocess(f"{label}: {ctx}" if isinstance(label, str) and label else ctx)
    endings = record.get("endings")
    if not isinstance(endings, list) or not endings:
        raise _Bad("endings", "expected a list of endings")
    try:
        gold = int(record.get("label"))
    except (TypeError, ValueError):
        raise _Bad(
            "label", f"expected the index of the right ending, found {record.get('label')!r}"
        ) from None
    if not 0 <= gold < len(endings):
        raise _Bad("label", f"{gold} is outside 0..{len(endings) - 1}")
    return ChoiceDoc(row, query, [hellaswag_preprocess(str(e)) for e in endings], gold)


def gsm8k_doc(record: Mapping[str, Any], row: int) -> GenerationDoc:
    reference = _text(record, "answer")
    if "#### " not in reference:
        raise _Bad("answer", "has no final answer after '#### '")
    return GenerationDoc(row, f"Question: {_text(record, 'question')}\nAnswer:", reference)


TASKS: dict[str, Callable[[Mapping[str, Any], int], ChoiceDoc | GenerationDoc]] = {
    "arc": arc_doc,
    "hellaswag": hellaswag_doc,
    "gsm8k": gsm8k_doc,
}


def load_task(task: str, source, *, limit: int | None = None) -> list:
    """The documents of a task file; a bad row stops with its file, row and field."""
    if task not in TASKS:
        raise DpolabError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    docs = []
    for row in read_rows(source):
        if limit is not None and len(docs) >= limit:
            break
        if row.record is None:
            raise DpolabError(f"{where(source, row.number)}: {row.error}")
        try:
            docs.append(TASKS[task](row.record, row.number))
        except _Bad as bad:
            raise DpolabError(
                f"{where(source, row.number, bad.field)}: {bad.reason} (expected the {task} schema)"
            ) from None
    if not docs:
        raise DpolabError(f"{source}: no {task} documents")
    return docs


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def _encode(tokenizer, text: str, add_bos_token: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_bos_token)["input_ids"])


def encode_pair(
    tokenizer, context: str, continuation: str, *, add_bos_token: bool = False
) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as lm-eval's HFLM encodes them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        prefix = (
            tokenizer.bos_token_id
            if add_bos_token and tokenizer.bos_token_id is not None
            else tokenizer.eos_token_id
        )
        return [prefix], _encode(tokenizer, continuation, False)
    whole = _encode(tokenizer, context + continuation, add_bos_token)
    context_ids = _encode(tokenizer, context, add_bos_token)
    return whole[: len(context_ids)], whole[len(context_ids) :]


def choice_metrics(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, Any]:
    """acc and acc_norm of one document from its choices' log-likelihoods."""
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i))  # argmax, first on ties (numpy's)
    normed = [ll / max(1, len(c)) for ll, c in zip(lls, choices)]
    pred_norm = max(range(len(normed)), key=lambda i: (normed[i], -i))
    return {
        "pred": pred,
        "pred_norm": pred_norm,
        "acc": float(pred == gold),
        "acc_norm": float(pred_norm == gold),
    }


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample standard deviation / √n), as lm-eval reports them."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def evaluate_choices(
    model, tokenizer, docs: Sequence[ChoiceDoc], *, batch_size: int = 8, add_bos_token: bool = False
) -> dict[str, Any]:
    """acc and acc_norm (with standard errors) over multiple-choice documents."""
    from dpolab.evaluation.scoring import continuation_logprobs, pad_id_of

    requests, spans = [], []
    for doc in docs:
        start = len(requests)
        requests.extend(
            encode_pair(tokenizer, doc.context, TARGET_DELIMITER + c, add_bos_token=add_bos_token)
            for c in doc.choices
        )
        spans.append((start, len(requests)))
    lls = continuation_logprobs(model, requests, pad_token_id=pad_id_of(tokenizer), batch_size=batch_size)
    samples = []
    for doc, (start, end) in zip(docs, spans):
        metrics = choice_metrics(lls[start:end], doc.choices, doc.gold)
        samples.append({"row": doc.row, "gold": doc.gold, "loglikelihoods": lls[start:end], **metrics})
    acc, acc_se = mean_stderr([s["acc"] for s in samples])
    acc_norm, acc_norm_se = mean_stderr([s["acc_norm"] for s in samples])
    return {
        "n": len(docs),
        "acc": acc,
        "acc_stderr": acc_se,
        "acc_norm": acc_norm,
        "acc_norm_stderr": acc_norm_se,
        "samples": samples,
    }


def cut_at_stop(text: str, stops: Sequence[str] = GSM8K_STOP) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def gsm8k_metrics(output: str, reference: str) -> dict[str, Any]:
    """One output against the dataset's answer field: lm-eval's strict and flexible extractions,
    the normalised reference and both exact matches."""
    return lm_eval_gsm8k(output, reference)


def evaluate_generation(
    model,
    tokenizer,
    docs: Sequence[GenerationDoc],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    add_bos_token: bool = False,
) -> dict[str, Any]:
    """Greedy generation and exact match (strict `#### N` and flexible last number)."""
    from dpolab.evaluation.generate import GenerationSettings, generate_from_ids

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0)
    samples = []
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        rows = [_encode(tokenizer, d.prompt, add_bos_token) for d in chunk]
        for doc, text in zip(chunk, generate_from_ids(model, tokenizer, rows, settings, seed=0)):
            output = cut_at_stop(text)
            samples.append(
                {
                    "row": doc.row,
                    "output": output,
                    **gsm8k_metrics(output, doc.reference),
                }
            )
    em, em_se = mean_stderr([s["exact_match"] for s in samples])
    flex, flex_se = mean_stderr([s["exact_match_flexible"] for s in samples])
    return {
        "n": len(docs),
        "exact_match": em,
        "exact_match_stderr": em_se,
        "exact_match_flexible": flex,
        "exact_match_flexible_stderr": flex_se,
        "samples": samples,
    }


DEFINITIONS = {
    "acc": "mean over documents of [argmax_i sum log p(' ' + choice_i | context) = gold]",
    "acc_norm": "as acc with each sum divided by len(choice_i) in characters (lm-evaluation-harness)",
    "exact_match": "greedy output's '#### N' answer equals the reference's (lm-eval strict-match)",
    "exact_match_flexible": "the output's last number equals the reference's (lm-eval flexible-extract)",
}


def evaluate_tasks(
    model,
    tokenizer,
    tasks: Sequence[str],
    data: Mapping[str, str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    add_bos_token: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Every task on its local file (`data[task]`); the result dict (kind `tasks`)."""
    for task in tasks:
        if task not in TASKS:
            raise DpolabError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        if task not in data:
            raise DpolabError(
                f"no data for task {task!r}; give --data {task}=FILE (a local file in its schema)"
            )
    results = {}
    for task in tasks:
        docs = load_task(task, data[task], limit=limit)
        if task == "gsm8k":
            metrics = evaluate_generation(
                model,
                tokenizer,
                docs,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                add_bos_token=add_bos_token,
            )
        else:
            metrics = evaluate_choices(
                model, tokenizer, docs, batch_size=batch_size, add_bos_token=add_bos_token
            )
        results[task] = {"data": str(data[task]), **metrics}
    result = result_header("tasks")
    result.update(
        {
            "model": model_name,
            "backend": "dpolab",
            "num_fewshot": 0,
            "add_bos_token": add_bos_token,
            "definitions": DEFINITIONS,
            "tasks": results,
        }
    )
    return result


def tasks_table(result: Mapping[str, Any]) -> str:
    rows = []
    for name, metrics in result["tasks"].items():
        for key in ("acc", "acc_norm", "exact_match", "exact_match_flexible"):
            if key in metrics:
                rows.append([name, key, metrics[key], metrics.get(f"{key}_stderr"), metrics.get("n")])
    return format_table(["task", "metric", "value", "stderr", "n"], rows)
