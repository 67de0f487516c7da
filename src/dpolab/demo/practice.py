"""The practitioner study's two findings in the demo ("DPO: a practitioner's study", Cerebras;
docs/notes.md), measured on the demo's first run (DPO on low-edit pairs):

- Forgetting against β: DPO trained at each β of `settings.betas` (`dpolab sweep` for all but the
  first run's own β); the mean token loss of each on held-out text (`dpolab.demo.heldout`) against
  the SFT model's, the model every β starts from. The study: a small rise, smaller the higher β.
- Early stopping: at every checkpoint of the run (saved when it is evaluated), greedy answers to
  the first `checkpoint_problems` test problems, judged against the SFT model's answers by the
  exact-answer judge in both orders, beside the eval `rewards/accuracies` logged at that step. The
  study: the win rate peaks where rewards/accuracies peaks.

Each finding is stated as computed: reproduced, partly or not, with the numbers. The study's own
numbers are in its Table 3 and Figs. 3–4, which the text dpolab works from does not give; what it
states is quoted beside ours.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from pathlib import Path
from typing import Any

from dpolab.demo.settings import DemoSettings
from dpolab.evaluation.results import write_result

log = logging.getLogger("dpolab")

PAPER_FORGETTING = (
    "BTLM-3B after DPO (LoRA) on Anthropic HH, loss on SlimPajama's validation set (its Table 3): "
    "a small increase in loss, and the higher β the smaller"
)
PAPER_EARLY_STOPPING = (
    "Pythia-1.4B and -2.8B during DPO on Anthropic HH (its Figs. 3–4): the GPT-4 win rate peaks "
    "concurrently with eval rewards/accuracies, where the model is best"
)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
Request = tuple[list[int], list[int]]  # (context token ids, the token ids scored after it)


def heldout(data: dict[str, Path], settings: DemoSettings, tokenizer) -> tuple[list[Request], str]:
    """(requests, what they are) of the held-out text forgetting is measured on: each request a
    `(context ids, scored ids)` pair, `settings.forgetting_tokens` scored tokens in all."""
    from dpolab.demo.heldout import STDLIB_MODULES, stdlib_docstrings, task_texts
    from dpolab.evaluation.forgetting import chunk, token_stream

    if settings.chat:
        version = ".".join(map(str, sys.version_info[:2]))
        ids = token_stream(tokenizer, stdlib_docstrings())[: settings.forgetting_tokens]
        chunks = chunk(ids, settings.forgetting_context)
        return [(c[:1], c[1:]) for c in chunks], (
            f"docstrings of the Python {version} standard library ({', '.join(STDLIB_MODULES)}), "
            f"in chunks of {settings.forgetting_context} tokens"
        )
    from dpolab.data.formats import PreferenceExample
    from dpolab.data.io import read_rows
    from dpolab.data.tokenize import tokenize_sft

    problems = [row.record for row in read_rows(data["test.problems"])]
    requests, scored = [], 0
    for prompt, solution in task_texts(problems):
        example = PreferenceExample(prompt=prompt, chosen=solution, rejected="", row=0)
        pair = tokenize_sft(example, tokenizer, max_length=None, max_prompt_length=None)
        if scored + len(pair.chosen_ids) > settings.forgetting_tokens:
            break
        requests.append((pair.prompt_ids, pair.chosen_ids))
        scored += len(pair.chosen_ids)
    return requests, (
        f"the correct solutions of {len(requests)} test problems, each given its problem, tokenised as "
        "SFT tokenised the training problems (no training stage saw them; the tiny model's vocabulary "
        "holds only the task's words, so the task's own held-out text is what it can be measured on, "
        "and SFT on the task's solutions is its pre-training)"
    )


def forgetting_by_beta(models: dict[str, Path], tokenizer, requests: list[Request]) -> dict[str, Any]:
    """Mean token loss of each model on the same held-out requests' scored tokens."""
    from dpolab.demo.evaluate import load_model
    from dpolab.evaluation.scoring import continuation_logprobs, pad_id_of

    n = sum(len(scored) for _, scored in requests)
    longest = max(len(context) + len(scored) for context, scored in requests)
    losses = {}
    for name, path in models.items():
        logps = continuation_logprobs(
            load_model(path), requests, pad_token_id=pad_id_of(tokenizer), batch_size=4, max_length=longest
        )
        losses[name] = -sum(logps) / n
    return {"n_tokens": n, "loss": losses}


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of a run's checkpoints, in step order."""
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def checkpoint_winrates(
    out: Path, run_dir: Path, reference: Path, prompts, tokenizer, settings: DemoSettings
) -> list[dict[str, Any]]:
    """Per checkpoint: its step, the eval rewards/accuracies logged there, and its greedy answers'
    win / lose / tie against the reference's (the SFT model) on `prompts`, exact-answer judge."""
    from dpolab.demo.evaluate import load_model
    from dpolab.evaluation.answer_files import load_answers
    from dpolab.evaluation.generate import GenerationSettings, generate_answers
    from dpolab.evaluation.judges import ExactJudge
    from dpolab.evaluation.winrate import winrate
    from dpolab.report.runs import load_run

    greedy = GenerationSettings(
        max_new_tokens=settings.max_new_tokens,
        temperature=0.0,
        repetition_penalty=1.0,
        batch_size=min(settings.generation_batch, len(prompts)),
        seed=settings.seed,
    )
    folder = out / "eval" / "checkpoints"

    def answer(name: str, path: Path):
        file = folder / f"{name}.greedy.jsonl"
        generate_answers(load_model(path), tokenizer, prompts, file, settings=greedy, model_name=name)
        return load_answers(file)

    baseline = answer("sft", reference)
    steps, accuracies = load_run(run_dir).series("rewards/accuracies", "eval")
    logged = dict(zip(steps, accuracies))
    rows = []
    for step, path in checkpoints(run_dir):
        name = f"{run_dir.name}-step{step}"
        result = winrate(
            answer(name, path),
            baseline,
            ExactJudge(),
            cache=folder / "judgements.jsonl",
            names=(name, "sft"),
            sources=(f"{name}.greedy", "sft.greedy"),
        )
        rows.append(
            {
                "step": step,
                "rewards/accuracies": logged.get(step),
                **{k: result[k] for k in ("wins", "losses", "ties", "win_rate")},
            }
        )
    return rows


def evaluate_practice(
    out: Path,
    run_dirs: dict[str, Path],
    data: dict[str, Path],
    settings: DemoSettings,
    swept: dict[str, Any],
    *,
    base: Path | None = None,
) -> dict[str, Any]:
    """Both measurements (written to eval/forgetting-beta.json and eval/checkpoints.json)."""
    from dpolab.demo.evaluate import REFERENCE, test_prompts
    from dpolab.modeling.loading import load_tokenizer

    tokenizer = load_tokenizer(str(run_dirs[REFERENCE]))
    requests, source = heldout(data, settings, tokenizer)
    models = {**({"base": base} if base is not None else {}), REFERENCE: run_dirs[REFERENCE]}
    models.update({f"beta {b}": Path(p) for b, p in swept["betas"].items()})
    log.info("forgetting: %d models on held-out text", len(models))
    forgetting = {"text": source, **forgetting_by_beta(models, tokenizer, requests)}
    write_result(out / "eval" / "forgetting-beta.json", forgetting)

    run = swept["run"]
    prompts = test_prompts(data, settings, limit=settings.checkpoint_problems)
    log.info("early stopping: the checkpoints of %s on %d test problems", run, len(prompts))
    rows = checkpoint_winrates(out, run_dirs[run], run_dirs[REFERENCE], prompts, tokenizer, settings)
    early = {"run": run, "problems": len(prompts), "checkpoints": rows}
    write_result(out / "eval" / "checkpoints.json", early)
    return {"forgetting": forgetting, "early_stopping": early}


# ----------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------

_VERDICTS = {
    "reproduced": "Reproduced.",
    "partly": "Partly reproduced.",
    "not": "Not reproduced at this scale.",
}


def _finding(finding: str, verdict: str, text: str, paper: str) -> dict[str, Any]:
    return {
        "finding": finding,
        "verdict": verdict,
        "shown": verdict == "reproduced",
        "text": f"{text} {_VERDICTS[verdict]}",
        "paper": paper,
    }


def forgetting_finding(forgetting: dict[str, Any]) -> dict[str, Any]:
    """Reproduced: the loss rise over SFT falls strictly as β grows; partly: the smallest β forgot
    more than the largest; else not."""
    loss = forgetting["loss"]
    sft = loss["sft"]
    betas = sorted((float(k.split()[1]), v - sft) for k, v in loss.items() if k.startswith("beta "))
    rises = [r for _, r in betas]
    if all(a > b for a, b in itertools.pairwise(rises)):
        verdict = "reproduced"
    elif rises[0] > rises[-1]:
        verdict = "partly"
    else:
        verdict = "not"
    text = (
        f"Held-out loss ({forgetting['n_tokens']} tokens) of SFT {sft:.4f} nats; after DPO "
        + ", ".join(f"β {b}: {sft + r:.4f} ({r:+.4f})" for b, r in betas)
        + "."
    )
    return _finding(
        "Practitioner study, forgetting: after DPO the loss on held-out text rises a little, less the higher β",
        verdict,
        text,
        PAPER_FORGETTING,
    )


def _peaks(rows: list[dict[str, Any]], key: str) -> list[int]:
    values = [r[key] for r in rows if r[key] is not None]
    top = max(values) if values else None
    return [r["step"] for r in rows if r[key] is not None and r[key] == top]


def early_stopping_finding(early: dict[str, Any]) -> dict[str, Any]:
    """Reproduced: a step where the win rate peaks is one where rewards/accuracies peaks; partly:
    the peaks are one checkpoint apart; else not (also when either is the same at every
    checkpoint: then it has no peak)."""
    rows = early["checkpoints"]
    steps = [r["step"] for r in rows]
    win, acc = _peaks(rows, "win_rate"), _peaks(rows, "rewards/accuracies")
    if len(win) == len(rows) or len(acc) == len(rows):  # a flat series has no peak to agree on
        verdict = "not"
    elif set(win) & set(acc):
        verdict = "reproduced"
    elif any(abs(steps.index(w) - steps.index(a)) <= 1 for w in win for a in acc):
        verdict = "partly"
    else:
        verdict = "not"
    text = (
        f"Over {len(rows)} checkpoints of {early['run']} ({early['problems']} test problems each), the win rate "
        f"against SFT peaks at step {', '.join(map(str, win))} ({max(r['win_rate'] for r in rows):.3f}), eval "
        f"rewards/accuracies at step {', '.join(map(str, acc))} "
        f"({max((r['rewards/accuracies'] for r in rows if r['rewards/accuracies'] is not None), default=float('nan')):.3f})."
    )
    return _finding(
        "Practitioner study, early stopping: the win rate peaks where eval rewards/accuracies peaks",
        verdict,
        text,
        PAPER_EARLY_STOPPING,
    )


def practice_findings(practice: dict[str, Any]) -> list[dict[str, Any]]:
    return [forgetting_finding(practice["forgetting"]), early_stopping_finding(practice["early_stopping"])]


# ----------------------------------------------------------------------------------------------
# Report blocks
# ----------------------------------------------------------------------------------------------


def plot_checkpoints(early: dict[str, Any], path: Path) -> Path:
    """Win rate against SFT and eval rewards/accuracies at each checkpoint."""
    from dpolab.analysis.plots import new_figure, save_figure

    rows = early["checkpoints"]
    fig, ax = new_figure()
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["win_rate"] for r in rows], marker="o", label="win rate vs SFT (ties ½)")
    acc = [(r["step"], r["rewards/accuracies"]) for r in rows if r["rewards/accuracies"] is not None]
    ax.plot([s for s, _ in acc], [a for _, a in acc], marker="s", label="eval rewards/accuracies")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{early['run']}: early stopping ({early['problems']} test problems per checkpoint)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def practice_blocks(practice: dict[str, Any], plots: Path) -> list:
    """The report's section on the practitioner study: both findings with the study's claims, the
    losses per β, the checkpoints' win rates, and their plot."""
    from dpolab.report.document import Heading, Image, Para, Table

    forgetting, early = practice["forgetting"], practice["early_stopping"]
    sft = forgetting["loss"]["sft"]
    blocks: list = [Heading(2, "The practitioner study: forgetting against β, early stopping")]
    for finding in practice_findings(practice):
        blocks.append(Para(f"{finding['finding']}. {finding['text']} The study: {finding['paper']}."))
    blocks += [
        Para(
            f"Held-out text: {forgetting['text']}; {forgetting['n_tokens']} tokens scored, the same "
            "tokens for every model."
        ),
        Table(
            ["model", "held-out loss (nats)", "change vs SFT"],
            [[name, loss, loss - sft] for name, loss in forgetting["loss"].items()],
        ),
        Table(
            ["step", "eval rewards/accuracies", "win rate vs SFT (ties ½)", "win", "lose", "tie"],
            [
                [r["step"], r["rewards/accuracies"], r["win_rate"], r["wins"], r["losses"], r["ties"]]
                for r in early["checkpoints"]
            ],
        ),
        Image(
            plot_checkpoints(early, plots / "checkpoints.png"),
            "Win rate and rewards/accuracies per checkpoint",
        ),
    ]
    return blocks
