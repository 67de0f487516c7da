"""`dpolab demo`: the whole pipeline in stages, each one reused when a previous run finished it.

    task      generate the problems and the preference pairs (data/)
    model     build the tokenizer and a tiny Llama (base-model/); with --model, the pretrained
              model given (a folder, or a GGUF file converted into base-model/)
    sft       `dpolab sft` on the correct solutions (runs/sft/)
    train     `dpolab train`: DPO, DPOP, intermediate DPO on low-edit pairs; DPO, DPOP on high (runs/*/)
              (a pretrained model: the three low-edit runs, with LoRA adapters)
    sweep     `dpolab sweep`: the DPO run again at the other β of the practitioner study (runs/beta-sweep/)
    evaluate  accuracy, log-prob changes, win/lose/tie, layer-wise and token-level analyses; the
              practitioner study's forgetting per β and win rate per checkpoint (eval/)
    report    report.html, report.md, plots/, summary.json

A stage writes its marker (`.stages/<stage>.json`) only after its outputs are complete, so an
interrupted demo continues where it stopped; `--force` starts again from nothing. Each training
run is a config file under configs/ that `dpolab train` can run again by hand.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from dpolab.data.io import write_json_atomic
from dpolab.demo.settings import DemoSettings, settings_for, with_model_layers

log = logging.getLogger("dpolab")

STAGES = ("task", "model", "sft", "train", "sweep", "evaluate", "report")


class Stages:
    """Markers of finished stages under OUT/.stages, each holding the stage's small result."""

    def __init__(self, out: Path):
        self.folder = out / ".stages"

    def done(self, stage: str) -> dict[str, Any] | None:
        path = self.folder / f"{stage}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def mark(self, stage: str, result: dict[str, Any]) -> None:
        write_json_atomic(self.folder / f"{stage}.json", result)


def _banner(n: int, stage: str, note: str = "") -> None:
    log.info("[%d/%d] %s%s", n, len(STAGES), stage, f": {note}" if note else "")


def stage_task(out: Path, settings: DemoSettings) -> dict[str, Any]:
    from dpolab.demo.task import edit_distance_stats, make_splits, write_splits

    splits = make_splits(seed=settings.seed, sizes=settings.sizes, config=settings.task)
    paths = write_splits(out / "data", splits)
    if settings.chat:
        from dpolab.demo.pretrained import write_chat_files

        paths.update(write_chat_files(out / "data", splits))
    stats = edit_distance_stats(splits["train"])
    return {
        "files": {k: str(v) for k, v in paths.items()},
        "edit_distance": stats,
        "sizes": {k: len(v) for k, v in splits.items()},
        "example": splits["train"][0].to_dict(),
    }


def pairs_file(files: dict[str, str], split: str, kind: str, settings: DemoSettings) -> str:
    """The pair file a stage trains or evaluates on: the conversational one on a pretrained model."""
    return files[f"{split}.{kind}.chat" if settings.chat else f"{split}.{kind}"]


def stage_model(out: Path, settings: DemoSettings, task: dict[str, Any], model: str | None) -> dict[str, Any]:
    from dpolab.demo.model import num_parameters, save_model, size_dict

    if model is not None:
        from dpolab.demo.pretrained import pretrained_model

        return pretrained_model(out, model)
    from dpolab.demo.tokenizer import build_demo_tokenizer

    tokenizer = build_demo_tokenizer()
    built = save_model(out / "base-model", tokenizer, settings.model, seed=settings.seed)
    return {
        "path": str(out / "base-model"),
        "parameters": num_parameters(built),
        "vocab": len(tokenizer),
        "size": size_dict(settings.model),
        "num_layers": settings.model.num_layers,
    }


def _config(
    out: Path,
    name: str,
    model: str,
    train: str,
    eval_file: str,
    training: dict[str, Any],
    settings: DemoSettings,
    loss: dict[str, Any] | None = None,
    limit: int | None = None,
    lora: dict[str, Any] | None = None,
) -> Path:
    values: dict[str, Any] = {
        "model": {"name_or_path": model, **({"lora": lora} if lora else {})},
        "data": {
            "train": train,
            "eval": eval_file,
            "max_length": settings.max_length,
            "max_prompt_length": settings.max_prompt_length,
            "limit": limit,
        },
        "training": {
            "output_dir": str(out / "runs" / name),
            "seed": settings.seed,
            "save_strategy": "no",
            "report_to": "none",
            **training,
        },
    }
    if loss is not None:
        values["loss"] = loss
        values["reference"] = {"precompute": True, "cache_dir": str(out / "cache")}
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def _run_cli(command: str, config: Path) -> None:
    from dpolab.cli import main

    code = main([command, str(config)])
    if code != 0:
        from dpolab.errors import DpolabError

        raise DpolabError(f"the demo's `dpolab {command} {config}` failed (exit code {code})")


def stage_sft(
    out: Path, settings: DemoSettings, task: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    files = task["files"]
    train, eval_file = pairs_file(files, "train", "low", settings), pairs_file(files, "eval", "low", settings)
    config = _config(out, "sft", model["path"], train, eval_file, settings.sft, settings)
    _run_cli("sft", config)
    return {"path": str(out / "runs" / "sft"), "config": str(config)}


def checkpointed(settings: DemoSettings) -> dict[str, Any]:
    """The first run's training settings: evaluated and saved (the model only) every
    `checkpoint_every` steps, for the win rate at each checkpoint (nothing else in its training
    changes: evaluation and saving draw no random numbers)."""
    every = settings.checkpoint_every
    return {
        **settings.preference,
        "eval_steps": every,
        "save_strategy": "steps",
        "save_steps": every,
        "save_total_limit": None,  # every checkpoint kept: each is evaluated (the default keeps 2)
        "save_only_model": True,
    }


def _preference_config(out: Path, name: str, run, settings: DemoSettings, task, sft, training) -> Path:
    files = task["files"]
    return _config(
        out,
        name,
        sft["path"],
        pairs_file(files, "train", run.pairs, settings),
        pairs_file(files, "eval", run.pairs, settings),
        training,
        settings,
        loss=run.loss,
        limit=settings.preference_pairs,
        lora=settings.preference_lora,
    )


def stage_train(
    out: Path, settings: DemoSettings, task: dict[str, Any], sft: dict[str, Any]
) -> dict[str, Any]:
    runs = {}
    for n, run in enumerate(settings.runs, start=1):
        folder = out / "runs" / run.name
        training = checkpointed(settings) if n == 1 else settings.preference
        config = _preference_config(out, run.name, run, settings, task, sft, training)
        if (folder / "summary.json").exists():
            log.info("  %s already trained", run.name)
        else:
            log.info(
                "  run %d/%d: %s on %s-edit pairs (%s)",
                n,
                len(settings.runs),
                run.name,
                run.pairs,
                ", ".join(f"{k} {v}" for k, v in run.loss.items()),
            )
            _run_cli("train", config)
        runs[run.name] = {"path": str(folder), "config": str(config), "pairs": run.pairs}
    return {"runs": runs}


def stage_sweep(
    out: Path, settings: DemoSettings, task: dict[str, Any], sft: dict[str, Any], trained: dict[str, Any]
) -> dict[str, Any]:
    """The first run (DPO on low-edit pairs) at every β of `settings.betas` (the practitioner
    study's forgetting against β): its own β is that run, reused; the others are a `dpolab sweep`
    of `loss.beta` over a copy of its config (without its checkpoints) into runs/beta-sweep/, in
    this process as every other stage."""
    from dpolab.training.sweep import sweep

    first = settings.runs[0]
    own = float(first.loss["beta"])
    others = [b for b in settings.betas if b != own]
    folders = {own: trained["runs"][first.name]["path"]}
    if others:
        config = _preference_config(out, "beta-sweep", first, settings, task, sft, settings.preference)
        swept = sweep(
            str(config),
            [f"loss.beta={','.join(map(str, others))}"],
            out_dir=str(out / "runs" / "beta-sweep"),
            report=False,
            in_process=True,
        )
        folders.update({b: str(f) for b, f in zip(others, swept)})
    return {"run": first.name, "betas": {str(b): folders[b] for b in sorted(folders)}}


def run_demo(
    out: str | Path = "demo-out",
    *,
    quick: bool = False,
    seed: int = 0,
    force: bool = False,
    command: str = "dpolab demo",
    model: str | None = None,
) -> dict[str, Any]:
    """Run (or finish) the demo into `out`; returns the summary (also OUT/summary.json). `model`:
    a pretrained model (folder or GGUF file) instead of the tiny one the demo builds."""
    from dpolab.demo.evaluate import REFERENCE, evaluate_models
    from dpolab.demo.practice import evaluate_practice
    from dpolab.demo.report import write_demo_report

    out = Path(out)
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_for(quick=quick, seed=seed, real=model is not None)
    stages = Stages(out)
    previous = stages.done("settings")
    current = {"quick": quick, "seed": seed, **({"model": str(model)} if model is not None else {})}
    if previous is not None and previous != current:
        from dpolab.errors import DpolabError

        raise DpolabError(
            f"{out} holds a demo run with {previous}; this one asks for {current}: use another --out, "
            f"or --force to start again"
        )
    stages.mark("settings", current)
    timings = dict(stages.done("timings") or {})

    reused: list[str] = []

    def stage(n: int, name: str, fn, *args) -> dict[str, Any]:
        done = stages.done(name)
        if done is not None:
            _banner(n, name, "done before, reused")
            reused.append(name)
            return done
        _banner(n, name)
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - start
        stages.mark(name, result)
        stages.mark("timings", timings)
        return result

    task = stage(1, "task", stage_task, out, settings)
    base = stage(2, "model", stage_model, out, settings, task, model)
    settings = with_model_layers(settings, base.get("num_layers", settings.model.num_layers))
    sft = stage(3, "sft", stage_sft, out, settings, task, base)
    trained = stage(4, "train", stage_train, out, settings, task, sft)
    swept = stage(5, "sweep", stage_sweep, out, settings, task, sft, trained)

    run_dirs = {REFERENCE: Path(sft["path"]), **{k: Path(v["path"]) for k, v in trained["runs"].items()}}
    pairs_of = {REFERENCE: "low", **{k: v["pairs"] for k, v in trained["runs"].items()}}
    files = {k: Path(v) for k, v in task["files"].items()}

    def evaluate() -> dict[str, Any]:
        results = evaluate_models(out, run_dirs, files, settings, pairs_of)
        results["practice"] = evaluate_practice(
            out, run_dirs, files, settings, swept, base=Path(base["path"]) if model is not None else None
        )
        return results

    results = stage(6, "evaluate", evaluate)
    intermediate = next(
        (list(r.loss["intermediate"]["layers"]) for r in settings.runs if "intermediate" in r.loss), []
    )

    def report() -> dict[str, Any]:
        summary = write_demo_report(
            out,
            results,
            run_dirs=run_dirs,
            task=task,
            timings=timings,
            command=command,
            intermediate_layers=intermediate,
            quick=quick,
            reused=bool(reused),
            model=base if model is not None else None,
        )
        return {"findings": summary["findings"]}

    stage(7, "report", report)
    summary = json.loads((out / "summary.json").read_text())
    for finding in summary["findings"]:
        log.info("%s: %s", "shown" if finding["shown"] else "NOT shown", finding["text"])
    log.info("report: %s", out / "report.html")
    return summary
