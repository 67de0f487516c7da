"""`dpolab data build|convert|stats`: make preference files from the datasets people have, and
describe them.

    dpolab data build metamath --input MetaMathQA-395K.json --output metamath_dpo.jsonl --seed 0
    dpolab data build arc --input allenai/ai2_arc:ARC-Challenge --split train --output arc_dpo.jsonl
    dpolab data convert hh --input hh_train.jsonl --output hh.jsonl
    dpolab data stats metamath_dpo.jsonl --tokenizer ./my-model --json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator

from dpolab.data.pairs import ON_BAD_ROWS, BadRowReport
from dpolab.errors import DpolabError

ROWS_SHOWN = 20


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="build, convert and describe preference datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="data_command", metavar="{build,convert,stats}", required=True)

    from dpolab.data.builders import BUILDER_NAMES, DELIMITERS, TEMPLATES
    from dpolab.data.convert import CONVERTER_NAMES

    build = commands.add_parser(
        "build",
        help="make the Smaug paper's pairs from MetaMathQA, ARC or HellaSwag rows",
        description="metamath: one intermediate result of the response corrupted; arc, hellaswag: one pair "
        "per wrong choice. Prompt templates: "
        + "; ".join(f"{k} {v!r} + {DELIMITERS[k]!r}" for k, v in TEMPLATES.items()),
    )
    build.add_argument("builder", choices=BUILDER_NAMES)
    _io_arguments(build)
    build.add_argument("--seed", type=int, default=0, help="seeds MetaMath's corruption (default 0)")
    build.add_argument(
        "--template",
        default=None,
        help="the prompt, with {field} for the row's fields and \\n for a newline (e.g. 'Question: {query}\\nAnswer:')",
    )
    build.add_argument(
        "--delimiter",
        default=None,
        help="text put before each completion (\\n and \\t are a newline and a tab)",
    )
    build.set_defaults(func=run_build)

    convert = commands.add_parser("convert", help="convert Anthropic HH, UltraFeedback-binarized or SHP rows")
    convert.add_argument("kind", choices=CONVERTER_NAMES)
    _io_arguments(convert)
    convert.add_argument(
        "--delimiter", default=None, help="shp: text put before each completion (default '\\n\\n')"
    )
    convert.set_defaults(func=run_convert)

    stats = commands.add_parser(
        "stats", help="rows, length percentiles and the normalised edit distance of pairs"
    )
    stats.add_argument("file", help="a preference file (.jsonl, .json, .parquet, a saved dataset) or hub id")
    stats.add_argument("--split", default=None)
    stats.add_argument("--tokenizer", default=None, help="count tokens with this tokenizer (else characters)")
    stats.add_argument(
        "--format", dest="fmt", default="auto", choices=("auto", "standard", "conversational", "implicit")
    )
    stats.add_argument("--on-bad-rows", default="error", choices=ON_BAD_ROWS)
    stats.add_argument("--bins", type=int, default=10, help="histogram bins over [0, 1] (default 10)")
    stats.add_argument(
        "--level",
        choices=("token", "char"),
        default="token",
        help="edit distance over tokens (the tokenizer's, else words; default) or characters",
    )
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=run_stats)


def _io_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, help="a .jsonl/.json/.parquet file, a saved dataset folder or a hub id"
    )
    parser.add_argument(
        "--split", default=None, help="the split of a hub dataset or saved DatasetDict (default train)"
    )
    parser.add_argument("--output", required=True, help="the .jsonl file to write (atomically)")
    parser.add_argument(
        "--on-bad-rows",
        default="error",
        choices=ON_BAD_ROWS,
        help="error: stop at the first bad row (default); skip: skip bad rows and count them",
    )


def report_lines(report: BadRowReport) -> list[str]:
    """The skipped rows by reason, with their row numbers (the first ROWS_SHOWN of each reason)."""
    if not report.skipped:
        return []
    reasons = "; ".join(f"{n} × {reason}" for reason, n in report.by_reason().items())
    lines = [f"{report.source}: skipped {len(report)} rows ({reasons})"]  # not all bad: see metamath
    for reason in report.by_reason():
        rows = [
            s.row for s in report.skipped if (f"{s.field}: {s.reason}" if s.field else s.reason) == reason
        ]
        shown = ", ".join(map(str, rows[:ROWS_SHOWN])) + (", ..." if len(rows) > ROWS_SHOWN else "")
        lines.append(f"  {reason}: rows {shown}")
    return lines


def _write(output: str, examples: Iterable, source: str) -> int:
    """Write the examples atomically; no pairs at all is an error (and leaves no file)."""
    from dpolab.data.convert import example_record
    from dpolab.data.io import write_jsonl_atomic

    def records() -> Iterator[dict]:
        count = 0
        for example in examples:
            count += 1
            yield example_record(example)
        if count == 0:
            raise DpolabError(f"{source}: no pairs to write")

    return write_jsonl_atomic(output, records())


def _finish(args, report: BadRowReport, written: int) -> int:
    print(f"wrote {written} pairs to {args.output}")
    for line in report_lines(report):
        print(line)
    return 0


def unescape(text: str | None) -> str | None:
    """`\\n` and `\\t` typed on a command line as a newline and a tab."""
    return None if text is None else text.replace("\\n", "\n").replace("\\t", "\t")


def run_build(args) -> int:
    from dpolab.data.builders import builder_fn, iter_examples
    from dpolab.data.pairs import BadRowPolicy

    policy = BadRowPolicy(args.input, args.on_bad_rows)
    fn = builder_fn(
        args.builder, seed=args.seed, template=unescape(args.template), delimiter=unescape(args.delimiter)
    )
    written = _write(args.output, iter_examples(args.input, fn, policy, split=args.split), args.input)
    return _finish(args, policy.report, written)


def run_convert(args) -> int:
    from dpolab.data.builders import iter_examples
    from dpolab.data.convert import converter_fn
    from dpolab.data.pairs import BadRowPolicy

    policy = BadRowPolicy(args.input, args.on_bad_rows)
    fn = converter_fn(args.kind, delimiter=unescape(args.delimiter))
    written = _write(args.output, iter_examples(args.input, fn, policy, split=args.split), args.input)
    return _finish(args, policy.report, written)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise DpolabError(f"{path}: cannot load a tokenizer ({type(err).__name__}: {err})") from None


def run_stats(args) -> int:
    from dpolab.data.pairs import load_pairs
    from dpolab.data.stats import dataset_stats, format_stats

    if args.bins < 1:
        raise DpolabError(f"--bins must be at least 1, not {args.bins}")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    examples, report = load_pairs(args.file, split=args.split, fmt=args.fmt, on_bad_rows=args.on_bad_rows)
    stats = dataset_stats(examples, tokenizer=tokenizer, bins=args.bins, level=args.level)
    if args.json:
        print(json.dumps({"source": args.file, **stats, "skipped": report.to_dict()}, indent=2))
    else:
        print(format_stats(stats, source=args.file))
        for line in report_lines(report):
            print(line)
    return 0
