"""`dpolab eval winrate|tasks|forgetting`: judge two answer sets, score downstream tasks, measure
forgetting. Each writes one result JSON (suggested place: RUN_DIR/eval/NAME.json, where
`dpolab report` finds it) and prints a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpolab.commands import add_model_options, positive_int
from dpolab.errors import DpolabError


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="win rates with a judge, downstream tasks, forgetting")
    sub = parser.add_subparsers(dest="eval_command", metavar="WHAT")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    w = sub.add_parser(
        "winrate",
        help="pairwise win rate of answer set A against B, judged in both orders",
        description="Judges every prompt's two answers twice (A first, then B first); a win or "
        "loss counts only when both orders agree, else a tie. Judgements are cached.",
    )
    w.add_argument("--a", required=True, help="answer file A (JSONL with prompt, completion)")
    w.add_argument(
        "--b", required=True, help="answer file B, or a preference file whose chosen responses are B"
    )
    w.add_argument("--judge", required=True, help="openai:MODEL, hf:PATH_OR_ID, rm:PATH_OR_ID or exact:")
    w.add_argument("--output", required=True, help="result JSON")
    w.add_argument("--name-a", help="name of A in tables (default: file stem)")
    w.add_argument("--name-b", help="name of B in tables (default: file stem)")
    w.add_argument("--cache", help="judgement cache (JSONL; default: OUTPUT with .judgements.jsonl)")
    w.add_argument("--judge-prompt", help="judge prompt template with {question}, {answer_a}, {answer_b}")
    w.add_argument("--limit", type=positive_int, help="judge only the first N prompts")
    w.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% interval")
    w.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    w.add_argument(
        "--retry-unparsed", action="store_true", help="ask again where a cached reply had no verdict"
    )
    w.add_argument("--threshold", type=float, default=0.0, help="hf:/rm: a score margin ≤ this is a tie")
    w.add_argument(
        "--base-url", help="openai: endpoint (default: $OPENAI_BASE_URL or https://api.openai.com/v1)"
    )
    w.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable with the key"
    )
    w.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight")
    w.add_argument("--timeout", type=float, default=60.0, help="openai: seconds to wait for a reply")
    w.add_argument("--max-retries", type=int, default=5, help="openai: retries on 408/409/429/5xx/timeouts")
    w.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="openai: first back-off in seconds (doubles, jittered up to 1.5x)",
    )
    w.add_argument("--max-tokens", type=int, help="openai: max tokens of a reply")
    add_model_options(w)
    w.set_defaults(func=run_winrate)

    t = sub.add_parser("tasks", help="downstream accuracy (ARC, HellaSwag: acc/acc_norm; GSM8K: exact match)")
    t.add_argument("--model", required=True, help="model directory or hub id")
    t.add_argument("--tasks", required=True, help="comma-separated: arc, hellaswag, gsm8k")
    t.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TASK=FILE",
        help="local data file of a task, in the dataset's own schema (repeat per task)",
    )
    t.add_argument("--output", required=True, help="result JSON")
    t.add_argument("--limit", type=positive_int, help="first N documents of each task")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--max-new-tokens", type=int, default=256, help="gsm8k generation length")
    t.add_argument(
        "--add-bos-token", action="store_true", help="prepend BOS to contexts (lm-eval's add_bos_token)"
    )
    t.add_argument(
        "--harness",
        action="store_true",
        help="run the tasks with lm-evaluation-harness instead: with --data, its own task configs on "
        "the local files; without, lm-eval's task names and its own data",
    )
    add_model_options(t)
    t.set_defaults(func=run_tasks)

    f = sub.add_parser(
        "forgetting", help="token loss and perplexity of a model and its reference on held-out text"
    )
    f.add_argument("--model", required=True, help="the trained model")
    f.add_argument("--reference", required=True, help="the model before preference training (SFT)")
    f.add_argument(
        "--text", required=True, help=".txt (one document) or .jsonl/.json/.parquet with a text field"
    )
    f.add_argument("--output", required=True, help="result JSON")
    f.add_argument("--text-field", default="text")
    f.add_argument(
        "--context", type=int, help="tokens per chunk (default: the model's context length, at most 2048)"
    )
    f.add_argument("--max-tokens", type=int, help="use only the first N tokens of the text")
    f.add_argument("--batch-size", type=int, default=4)
    add_model_options(f)
    f.set_defaults(func=run_forgetting)


def run_winrate(args: argparse.Namespace) -> int:
    from dpolab.evaluation.answer_files import load_answers
    from dpolab.evaluation.judges import JUDGES, build_judge
    from dpolab.evaluation.results import write_result
    from dpolab.evaluation.winrate import print_progress, winrate, winrate_table

    a = load_answers(args.a, limit=args.limit)
    b = load_answers(args.b, limit=args.limit)
    # the options only this kind of judge takes (for openai:, --base-url, --concurrency, ...)
    kind = JUDGES.get(args.judge.partition(":")[0])
    kind_options = {
        name: getattr(args, name) for name in sorted(kind.options if kind else ()) if name in args
    }
    judge = build_judge(
        args.judge,
        judge_prompt=args.judge_prompt,
        threshold=args.threshold,
        device=args.device,
        dtype=args.dtype,
        **kind_options,
    )
    output = Path(args.output)
    cache = args.cache or output.with_name(output.stem + ".judgements.jsonl")
    result = winrate(
        a,
        b,
        judge,
        cache=cache,
        samples=args.bootstrap,
        seed=args.seed,
        retry_unparsed=args.retry_unparsed,
        names=(args.name_a or Path(args.a).stem, args.name_b or Path(args.b).stem),
        sources=(args.a, args.b),
        on_progress=print_progress if sys.stderr.isatty() else None,
    )
    write_result(output, result)
    print(winrate_table(result))
    j = result["judgements"]
    print(
        f"{j['new']} new judgement(s), {j['from_cache']} from the cache ({result['cache']}); result: {output}"
    )
    return 0


def _parse_data(items: list[str]) -> dict[str, str]:
    data = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise DpolabError(f"--data {item!r}: write TASK=FILE, e.g. --data arc=arc_challenge_test.jsonl")
        data[task.strip()] = path.strip()
    return data


def run_tasks(args: argparse.Namespace) -> int:
    from dpolab.evaluation.harness import run_harness
    from dpolab.evaluation.results import write_result
    from dpolab.evaluation.tasks import evaluate_tasks, tasks_table

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.harness:
        result = run_harness(
            args.model,
            tasks,
            data=_parse_data(args.data) if args.data else None,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
            add_bos_token=args.add_bos_token,
        )
    else:
        from dpolab.modeling.loading import load_for_inference

        data = _parse_data(args.data)
        model, tokenizer = load_for_inference(args.model, device=args.device, dtype=args.dtype)
        result = evaluate_tasks(
            model,
            tokenizer,
            tasks,
            data,
            limit=args.limit,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            add_bos_token=args.add_bos_token,
            model_name=args.model,
        )
    write_result(args.output, result)
    print(tasks_table(result))
    print(f"result: {args.output}")
    return 0


def run_forgetting(args: argparse.Namespace) -> int:
    from dpolab.evaluation.forgetting import forgetting, forgetting_table, load_text
    from dpolab.evaluation.results import write_result
    from dpolab.modeling.loading import load_for_inference

    documents = load_text(args.text, field=args.text_field)
    model, tokenizer = load_for_inference(args.model, device=args.device, dtype=args.dtype)
    reference, ref_tokenizer = load_for_inference(args.reference, device=args.device, dtype=args.dtype)
    result = forgetting(
        model,
        reference,
        tokenizer,
        documents,
        context=args.context,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        reference_tokenizer=ref_tokenizer,
        names=(args.model, args.reference),
        text_source=args.text,
    )
    write_result(args.output, result)
    print(forgetting_table(result))
    print(f"result: {args.output}")
    return 0
