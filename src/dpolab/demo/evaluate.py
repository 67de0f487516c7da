"""The demo's evaluation of every model, built from dpolab's evaluation and analysis functions:
exact-match accuracy on held-out problems (greedy and sampled), the change of the chosen
completion's log-prob against the SFT reference, rewards/accuracies on eval pairs, win/lose/tie
with the programmatic judge, the layer-wise DPO likelihood and the token-level analysis."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dpolab.analysis.layers import analyze_layers
from dpolab.analysis.pairs import load_tokenized_pairs, pair_logprobs
from dpolab.analysis.tokens import token_analysis
from dpolab.demo.settings import DemoSettings
from dpolab.evaluation.answer_files import load_answers, load_prompts
from dpolab.evaluation.answers import answers_match, extract_final_answer
from dpolab.evaluation.generate import GenerationSettings, generate_answers
from dpolab.evaluation.judges import ExactJudge
from dpolab.evaluation.results import write_result
from dpolab.evaluation.winrate import winrate

log = logging.getLogger("dpolab")

REFERENCE = "sft"


def load_model(path: Path):
    """A model of the demo (a folder, or a LoRA adapter folder merged into its base), in eval mode."""
    from dpolab.modeling.loading import load_causal_lm

    return load_causal_lm(str(path)).eval()


def test_prompts(data: dict[str, Path], settings: DemoSettings, limit: int | None = None):
    """The test problems as prompts: text, or on a pretrained model a user message (its chat
    template renders it as the pairs were rendered in training)."""
    return load_prompts(data["test.chat" if settings.chat else "test.problems"], limit=limit)


def eval_pairs_file(data: dict[str, Path], kind: str, settings: DemoSettings) -> Path:
    return data[f"eval.{kind}.chat" if settings.chat else f"eval.{kind}"]


def accuracy(answers_file: Path) -> float:
    """Share of answers whose final `#### N` equals the problem's answer."""
    answers = load_answers(answers_file)
    right = sum(answers_match(extract_final_answer(a.completion), str(a.record["answer"])) for a in answers)
    return right / len(answers)


def generate(
    model, tokenizer, name: str, prompts, out: Path, settings: DemoSettings, step=lambda what: None
) -> dict[str, float]:
    """Greedy and sampled (temperature 0.3, repetition penalty 1.1) answers; their accuracies.

    `step(what)` is called after each of the two passes (the evaluation's progress bar)."""
    modes = {
        "greedy": GenerationSettings(
            max_new_tokens=settings.max_new_tokens,
            temperature=0.0,
            repetition_penalty=1.0,
            batch_size=settings.generation_batch,
            seed=settings.seed,
        ),
        "sampled": GenerationSettings(
            max_new_tokens=settings.max_new_tokens,
            temperature=0.3,
            repetition_penalty=1.1,
            batch_size=settings.generation_batch,
            seed=settings.seed,
        ),
    }
    result = {}
    for mode, gen in modes.items():
        path = out / "answers" / f"{name}.{mode}.jsonl"
        generate_answers(model, tokenizer, prompts, path, settings=gen, model_name=name)
        result[f"accuracy/{mode}"] = accuracy(path)
        step(f"{name}: {mode} answers")
    return result


def evaluate_models(
    out: Path,
    run_dirs: dict[str, Path],
    data: dict[str, Path],
    settings: DemoSettings,
    pairs_of: dict[str, str],
) -> dict[str, Any]:
    """Every figure of the demo's table, keyed by model name, plus the analyses' result dicts.

    Args:
        run_dirs: model name -> folder (the first is the SFT model, the reference of all others).
        data: `test.problems`, `eval.low`, `eval.high` files.
        pairs_of: model name -> `low` or `high`, the pairs it was trained on.
    """
    from tqdm.auto import tqdm

    from dpolab.modeling.loading import load_tokenizer

    trained_names = [n for n in run_dirs if n != REFERENCE]
    comparisons = [(name, REFERENCE) for name in trained_names] + [
        (a, b)
        for a, b in (("idpo-low", "dpo-low"), ("dpop-low", "dpo-low"), ("dpop-high", "dpo-high"))
        if a in run_dirs and b in run_dirs
    ]
    kinds = sorted({pairs_of[n] for n in run_dirs})
    # one bar for the stage: per model its two generation passes and its log-probs, then the
    # layer analysis per kind of pairs, the token analysis and the pairwise comparisons
    bar = tqdm(total=3 * len(run_dirs) + len(kinds) + 1 + len(comparisons), desc="evaluate", unit="step")

    def step(what: str) -> None:
        bar.set_postfix_str(what, refresh=False)
        bar.update()

    eval_dir = out / "eval"
    tokenizer = load_tokenizer(str(run_dirs[REFERENCE]))
    pad = tokenizer.pad_token_id
    prompts = test_prompts(data, settings, limit=settings.test_problems)
    pairs = {
        kind: load_tokenized_pairs(
            eval_pairs_file(data, kind, settings), tokenizer, limit=settings.eval_pairs
        )
        for kind in kinds
    }
    reference = load_model(run_dirs[REFERENCE])
    ref_chosen = {
        kind: pair_logprobs(reference, p, batch_size=32, pad_token_id=pad)[0][0] for kind, p in pairs.items()
    }

    table: dict[str, dict[str, float]] = {}
    models = {}
    for name, folder in run_dirs.items():
        model = reference if name == REFERENCE else load_model(folder)
        models[name] = model
        log.info("evaluating %s", name)
        row = generate(model, tokenizer, name, prompts, eval_dir, settings, step)
        kind = pairs_of[name]
        chosen = pair_logprobs(model, pairs[kind], batch_size=32, pad_token_id=pad)[0][0]
        row["pairs"] = kind
        # mean over eval pairs of log π_θ(y_w|x) − log π_sft(y_w|x); > 0: the chosen answer became more likely
        row["chosen_logp_change"] = (chosen - ref_chosen[kind]).mean().item()
        row["chosen_logp_change_per_token"] = (
            ((chosen - ref_chosen[kind]) / torch.tensor([len(p.chosen_ids) for p in pairs[kind]]))
            .mean()
            .item()
        )
        table[name] = row
        step(f"{name}: log-probs")

    trained = {n: m for n, m in models.items() if n != REFERENCE}
    layers = {}
    for kind in kinds:
        group = {n: m for n, m in trained.items() if pairs_of[n] == kind}
        if group:
            layers[kind] = analyze_layers(
                group,
                reference,
                pairs[kind],
                beta=settings.beta,
                batch_size=32,
                pad_token_id=pad,
                reference_name=REFERENCE,
                pairs_source=str(eval_pairs_file(data, kind, settings)),
            )
            write_result(eval_dir / f"layers-{kind}.json", layers[kind])
            for name, curves in layers[kind]["models"].items():
                table[name]["rewards/accuracies"] = curves["rewards/accuracies"][-1]
                table[name]["dpo_likelihood"] = curves["dpo_likelihood"][-1]
            step(f"layers ({kind}-edit pairs)")
    low = {n: m for n, m in trained.items() if pairs_of[n] == "low"}
    tokens = token_analysis(
        low,
        reference,
        pairs["low"],
        reference_name=REFERENCE,
        batch_size=32,
        pad_token_id=pad,
        pairs_source=str(eval_pairs_file(data, "low", settings)),
    )
    write_result(eval_dir / "tokens-low.json", tokens)
    step("token analysis")
    for name, spans in tokens["models"].items():
        table[name]["tokens/chosen_before_m"] = spans["chosen_before_m"]["mean"]
        table[name]["tokens/chosen_from_m"] = spans["chosen_from_m"]["mean"]

    judge = ExactJudge()
    answers = {name: load_answers(eval_dir / "answers" / f"{name}.greedy.jsonl") for name in run_dirs}
    wins = {}
    for a, b in comparisons:
        result = winrate(
            answers[a],
            answers[b],
            judge,
            cache=eval_dir / "judgements.jsonl",
            names=(a, b),
            sources=(f"{a}.greedy", f"{b}.greedy"),
        )
        write_result(eval_dir / f"winrate-{a}-vs-{b}.json", result)
        wins[f"{a} vs {b}"] = {
            k: result[k] for k in ("wins", "losses", "ties", "win_rate", "win_rate_no_ties", "ci95")
        }
        if b == REFERENCE:
            table[a]["vs_sft/win"], table[a]["vs_sft/lose"], table[a]["vs_sft/tie"] = (
                result["wins"],
                result["losses"],
                result["ties"],
            )
        step(f"{a} vs {b}")
    bar.close()
    return {"models": table, "layers": layers, "tokens": tokens, "winrates": wins}
