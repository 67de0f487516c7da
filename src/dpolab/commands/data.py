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
from pathlib import Path

from dpolab.data.pairs import FLAG_SKIP_HINT, ON_BAD_ROWS, BadRowReport, row_count
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
    stats.add_argument(
        "--split",
        default=None,
        help="the split of a hub dataset or saved DatasetDict (default train); a single file has none",
    )
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
    stats.add_argument(
        "--num-proc",
        type=int,
        default=None,
        help="processes reading and measuring the pairs (default: the CPUs available, at most 8)",
    )
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=run_stats)


def _io_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, help="a .jsonl/.json/.parquet file, a saved dataset folder or a hub id"
    )
    parser.add_argument(
        "--split",
        default=None,
        help="the split of a hub dataset or saved DatasetDict (default train); a single file has none",
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
    # "rows", not "bad rows": metamath's rows with nothing to corrupt are valid rows
    lines = [f"{report.source}: skipped {row_count(len(report))} ({report.counts()})"]
    for reason in report.by_reason():
        rows = [
            s.row for s in report.skipped if (f"{s.field}: {s.reason}" if s.field else s.reason) == reason
        ]
        shown = ", ".join(map(str, rows[:ROWS_SHOWN])) + (", ..." if len(rows) > ROWS_SHOWN else "")
        lines.append(f"  {reason}: rows {shown}")
    return lines


def check_split(source: str, split: str | None) -> None:
    """`--split` names a split of a hub dataset or of a saved DatasetDict folder; a single local
    file is one split already, so a `--split` with it is refused rather than ignored."""
    path = Path(source).expanduser()
    if split is not None and path.exists() and not path.is_dir():
        raise DpolabError(
            f"{source}: --split {split} given, but a single file has no splits; drop --split "
            f"(it picks a split of a hub dataset or of a folder saved with save_to_disk)"
        )


def _write(output: str, examples: Iterable, report: BadRowReport) -> int:
    """Write the examples atomically; no pairs at all is an error (and leaves no file) that says
    why: the rows skipped, by reason, or an input without rows."""
    from dpolab.data.convert import example_record
    from dpolab.data.io import write_jsonl_atomic

    def records() -> Iterator[dict]:
        count = 0
        for example in examples:
            count += 1
            yield example_record(example)
        if count == 0:
            why = (
                f"skipped {row_count(len(report))}: {report.counts()}" if report.skipped else "it has no rows"
            )
            raise DpolabError(f"{report.source}: no pairs to write ({why})")

    return write_jsonl_atomic(output, records())


def _finish(args, report: BadRowReport, written: int) -> int:
    print(f"wrote {written} pair{'' if written == 1 else 's'} to {args.output}")
    for line in report_lines(report):
        print(line)
    return 0


def unescape(text: str | None) -> str | None:
    """`\\n` and `\\t` typed on a command line as a newline and a tab."""
    return None if text is None else text.replace("\\n", "\n").replace("\\t", "\t")


def run_build(args) -> int:
    from dpolab.data.builders import builder_fn, iter_examples
    from dpolab.data.pairs import BadRowPolicy

    check_split(args.input, args.split)
    policy = BadRowPolicy(args.input, args.on_bad_rows, skip_hint=FLAG_SKIP_HINT)
    fn = builder_fn(
        args.builder, seed=args.seed, template=unescape(args.template), delimiter=unescape(args.delimiter)
    )
    written = _write(args.output, iter_examples(args.input, fn, policy, split=args.split), policy.report)
    return _finish(args, policy.report, written)


def run_convert(args) -> int:
    from dpolab.data.builders import iter_examples
    from dpolab.data.convert import converter_fn
    from dpolab.data.pairs import BadRowPolicy

    check_split(args.input, args.split)
    policy = BadRowPolicy(args.input, args.on_bad_rows, skip_hint=FLAG_SKIP_HINT)
    fn = converter_fn(args.kind, delimiter=unescape(args.delimiter))
    written = _write(args.output, iter_examples(args.input, fn, policy, split=args.split), policy.report)
    return _finish(args, policy.report, written)


def run_stats(args) -> int:
    from dpolab.data.stats import format_stats, source_stats
    from dpolab.modeling.loading import load_tokenizer

    if args.bins < 1:
        raise DpolabError(f"--bins must be at least 1, not {args.bins}")
    if args.num_proc is not None and args.num_proc < 1:
        raise DpolabError(f"--num-proc must be at least 1, not {args.num_proc}")
    check_split(args.file, args.split)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    stats, report = source_stats(
        args.file,
        split=args.split,
        fmt=args.fmt,
        on_bad_rows=args.on_bad_rows,
        tokenizer=tokenizer,
        bins=args.bins,
        level=args.level,
        num_proc=args.num_proc,
        skip_hint=FLAG_SKIP_HINT,
    )
    if args.json:
        print(json.dumps({"source": args.file, **stats, "skipped": report.to_dict()}, indent=2))
    else:
        print(format_stats(stats, source=args.file))
        for line in report_lines(report):
            print(line)
    return 0
