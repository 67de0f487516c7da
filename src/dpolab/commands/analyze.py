"""`dpolab analyze layers|tokens`: the layer-wise DPO likelihood and the token-level log-probs
around the first differing token, each as a table, a result JSON and a PNG plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpolab.commands import add_model_options, positive_int
from dpolab.data.pairs import FLAG_SKIP_HINT
from dpolab.errors import DpolabError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="a trained model (repeat for several; NAME labels it, default: the directory name)",
    )
    p.add_argument("--reference", required=True, help="the reference model (the SFT model)")
    p.add_argument("--reference-name", default="reference")
    p.add_argument("--pairs", required=True, help="preference file (any format `dpolab train` reads)")
    p.add_argument("--output", required=True, help="result JSON")
    p.add_argument("--plot", help="PNG plot (default: OUTPUT with .png)")
    p.add_argument("--limit", type=positive_int, help="use the first N pairs")
    p.add_argument("--max-length", type=int, help="truncate as training does (prompt + completion tokens)")
    p.add_argument("--max-prompt-length", type=int)
    p.add_argument("--on-bad-rows", choices=("error", "skip"), default="error")
    p.add_argument("--batch-size", type=int, default=8)
    add_model_options(p)


def register(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="layer-wise DPO likelihood; token-level log-probs")
    sub = parser.add_subparsers(dest="analyze_command", metavar="WHAT")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    layers = sub.add_parser(
        "layers", help="DPO likelihood of every layer, per model (Intermediate DPO, Fig. 3)"
    )
    _common(layers)
    layers.add_argument("--beta", type=float, required=True, help="β of the DPO likelihood")
    layers.add_argument("--layers", help="comma-separated layer numbers 1..L (default: all)")
    layers.add_argument(
        "--no-final-norm", action="store_true", help="skip the final norm on intermediate layers"
    )
    layers.set_defaults(func=run_layers)
    tokens = sub.add_parser(
        "tokens", help="per-token log-probs before/from the first differing token (Smaug, Fig. 3)"
    )
    _common(tokens)
    tokens.set_defaults(func=run_tokens)


def parse_models(items: list[str]) -> dict[str, str]:
    """`NAME=PATH` or `PATH` (named after its directory) -> {name: path}."""
    models: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item.rstrip("/")).name or item, item
        if not name or not path:
            raise DpolabError(f"--model {item!r}: write NAME=PATH or PATH")
        if name in models:
            raise DpolabError(f"two models are named {name!r}; name them with NAME=PATH")
        models[name] = path
    return models


def _load(args: argparse.Namespace):
    from dpolab.analysis.pairs import load_tokenized_pairs
    from dpolab.modeling.loading import load_for_inference

    reference, tokenizer = load_for_inference(args.reference, device=args.device, dtype=args.dtype)
    models = {}
    for name, path in parse_models(args.model).items():
        model, model_tokenizer = load_for_inference(path, device=args.device, dtype=args.dtype)
        if model_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise DpolabError(
                f"{path}: its tokenizer differs from the reference's; the analyses compare log-probs "
                f"of the same tokens"
            )
        models[name] = model
    pairs = load_tokenized_pairs(
        args.pairs,
        tokenizer,
        limit=args.limit,
        max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
        on_bad_rows=args.on_bad_rows,
        skip_hint=FLAG_SKIP_HINT,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return models, reference, pairs, pad


def _finish(args, result, table: str, plot) -> int:
    from dpolab.evaluation.results import write_result

    output = Path(args.output)
    plot_path = Path(args.plot) if args.plot else output.with_suffix(".png")
    result["plot"] = plot_path.name if plot_path.parent == output.parent else str(plot_path)
    write_result(output, result)
    plot(result, plot_path)
    print(table)
    print(f"result: {output}; plot: {plot_path}")
    return 0


def run_layers(args: argparse.Namespace) -> int:
    from dpolab.analysis.layers import analyze_layers, layers_table
    from dpolab.analysis.plots import plot_layers

    layers = None
    if args.layers:
        try:
            layers = sorted({int(k) for k in args.layers.split(",") if k.strip()})  # each once, in order
        except ValueError:
            raise DpolabError(f"--layers {args.layers!r}: write layer numbers like 8,16,24") from None
    models, reference, pairs, pad = _load(args)
    try:
        result = analyze_layers(
            models,
            reference,
            pairs,
            beta=args.beta,
            layers=layers,
            final_norm=not args.no_final_norm,
            batch_size=args.batch_size,
            pad_token_id=pad,
            reference_name=args.reference_name,
            pairs_source=args.pairs,
        )
    except ValueError as err:  # a layer outside 1..L
        raise DpolabError(f"--layers: {err}") from None
    return _finish(args, result, layers_table(result), plot_layers)


def run_tokens(args: argparse.Namespace) -> int:
    from dpolab.analysis.plots import plot_tokens
    from dpolab.analysis.tokens import token_analysis, tokens_table

    models, reference, pairs, pad = _load(args)
    result = token_analysis(
        models,
        reference,
        pairs,
        reference_name=args.reference_name,
        batch_size=args.batch_size,
        pad_token_id=pad,
        pairs_source=args.pairs,
    )
    return _finish(args, result, tokens_table(result), plot_tokens)
