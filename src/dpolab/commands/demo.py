"""`dpolab demo [--model PATH] [--out DIR] [--quick] [--seed N] [--force]`."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole pipeline on a laptop CPU in minutes, with the papers' findings in miniature",
        description="Generates an arithmetic task, builds a tokenizer and a tiny Llama (or takes a pretrained model, "
        "--model), runs SFT, then DPO, DPOP and intermediate DPO, evaluates every model and writes OUT/report.html, "
        "report.md and summary.json. Finished stages are reused when run again into the same folder.",
    )
    parser.add_argument(
        "--model",
        help="a pretrained chat model instead of the tiny one: a Hugging Face folder or a .gguf file "
        "(docs/real-model.md; `make demo-real` fetches SmolLM2-135M-Instruct and runs this)",
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a reduced run (for tests): under two minutes on the tiny model, ten with --model",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the task, the model and the runs")
    parser.add_argument("--force", action="store_true", help="start again, discarding what OUT holds")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    import os

    # OpenMP threads that spin while waiting make a 2-core machine crawl as soon as anything else
    # runs beside the demo (6-20x slower steps, seen on the 2-core machine it is timed on)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from dpolab.demo.pipeline import run_demo

    command = (
        "dpolab demo"
        + (f" --model {args.model}" if args.model else "")
        + (f" --out {args.out}" if args.out != "demo-out" else "")
        + (" --quick" if args.quick else "")
        + (f" --seed {args.seed}" if args.seed else "")
    )
    run_demo(args.out, quick=args.quick, seed=args.seed, force=args.force, command=command, model=args.model)
    print(f"dpolab demo: report in {args.out}/report.html")
    return 0
