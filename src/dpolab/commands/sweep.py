"""`dpolab sweep CONFIG key=v1,v2 [key2=...]`: a grid of training runs, then one report."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of training configs, one process each, then report on them",
        description="Runs `dpolab train CONFIG` once per combination of the given values, each in its own "
        "folder named by the values that vary. A run whose folder holds summary.json and the same resolved "
        "config.yaml is skipped, so a re-run continues; a folder holding a run made with another config "
        "stops the sweep before anything runs (sweep into another --out).",
        epilog="Example: dpolab sweep dpo.yaml loss.beta=0.1,0.3,0.5 loss.intermediate.layers=[],[11,22]",
    )
    parser.add_argument("config", help="YAML config file")
    parser.add_argument(
        "axes", nargs="+", metavar="section.key=v1,v2", help="values to sweep (one value: fixed)"
    )
    parser.add_argument("--out", help="folder for the runs (default: training.output_dir of the config)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from dpolab.training.sweep import sweep

    folders = sweep(args.config, args.axes, out_dir=args.out, report=not args.no_report)
    print(f"dpolab sweep: {len(folders)} runs in {folders[0].parent}")
    return 0
