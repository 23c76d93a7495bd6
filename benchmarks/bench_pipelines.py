"""Inference speed of saved pipelines on one corpus, as users load them (``spacy.load``).

Each pipeline runs in a fresh process with the same torch thread count; the cases run
interleaved (A B C ... A B C ...) for ``--rounds`` rounds, so that drift in a shared
machine's load hits every pipeline alike, and each figure is the median over rounds.
The study's report takes words/s from evaluation runs that shared the machine with
training; this script gives the figures to compare, e.g. the study's run shapes
(unmasked, repeated input, fewer blocks) and its baselines:

    python benchmarks/bench_pipelines.py corpus/wnut16/test.spacy \\
        --pipeline 0011=training/study/0011.seed0/model-best \\
        --pipeline 0011+r1=training/study/0011+r1.seed0/model-best \\
        --threads 1 --rounds 3 --output benchmarks/results-study-inference-cpu.json
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_pipeline(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; PATH must be a saved pipeline (it has config.cfg)."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        example = "0011=training/0011/model-best"
        raise argparse.ArgumentTypeError(f"--pipeline takes NAME=PATH (e.g. {example}), not {value!r}")
    folder = Path(path)
    if not (folder / "config.cfg").is_file():
        raise argparse.ArgumentTypeError(
            f"{folder} is not a saved pipeline (no config.cfg): give a folder written by nlp.to_disk or spacy train"
        )
    return name.strip(), folder


def corpus_texts(data: Path) -> list[str]:
    """The texts of the docs in DATA, a .spacy DocBin."""
    import spacy
    from spacy.tokens import DocBin

    return [doc.text for doc in DocBin().from_disk(data).get_docs(spacy.blank("en").vocab)]


def measure(pipeline: Path, data: Path, *, batch_size: int, repeats: int) -> dict:
    """nlp.pipe words/s of PIPELINE over DATA (median of REPEATS passes after a warm-up batch),
    its load time and this process's peak RSS."""
    import spacy

    begin = time.perf_counter()
    nlp = spacy.load(pipeline)
    load_seconds = time.perf_counter() - begin
    texts = corpus_texts(data)
    words = sum(len(nlp.make_doc(text)) for text in texts)
    list(nlp.pipe(texts[:batch_size], batch_size=batch_size))
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        list(nlp.pipe(texts, batch_size=batch_size))
        times.append(time.perf_counter() - begin)
    return {
        "words_per_second": words / statistics.median(times),
        "docs": len(texts),
        "words": words,
        "load_seconds": load_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_case(pipeline: Path, args) -> dict:
    """:func:`measure` in a fresh Python process with ``args.threads`` torch threads."""
    command = [sys.executable, __file__, str(args.data), "--case", str(pipeline), "--threads", str(args.threads)]
    command += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {pipeline} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and whether it has AVX512-BF16."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf8")
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    bf16 = "with" if "avx512_bf16" in info else "without"
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores, {bf16} AVX512-BF16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a .spacy DocBin, e.g. corpus/wnut16/test.spacy")
    parser.add_argument("--pipeline", type=parse_pipeline, action="append", default=[], help="NAME=PATH, repeatable")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per pipeline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over DATA per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if not args.data.is_file():
        parser.error(f"{args.data} does not exist: give a .spacy file, e.g. corpus/wnut16/test.spacy")
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.case, args.data, batch_size=args.batch_size, repeats=args.repeats)))
        return
    if not args.pipeline:
        parser.error("no --pipeline given: add --pipeline NAME=PATH for each saved pipeline to measure")
    rounds: dict[str, list[dict]] = {name: [] for name, _ in args.pipeline}
    load_average = []
    for index in range(args.rounds):
        load_average.append([round(x, 2) for x in os.getloadavg()])
        for name, path in args.pipeline:
            rounds[name].append(run_case(path, args))
            print(f"round {index + 1} {name:24} {rounds[name][-1]['words_per_second']:8,.0f} words/s", flush=True)
    load_average.append([round(x, 2) for x in os.getloadavg()])
    rows = {}
    for name, path in args.pipeline:
        values = [row["words_per_second"] for row in rounds[name]]
        rows[name] = {
            "pipeline": str(path),
            "words_per_second": statistics.median(values),
            "rounds": values,
            "load_seconds": statistics.median(row["load_seconds"] for row in rounds[name]),
            "peak_rss_mb": max(row["peak_rss_mb"] for row in rounds[name]),
            "docs": rounds[name][0]["docs"],
            "words": rounds[name][0]["words"],
        }
        print(f"{name:24} {rows[name]['words_per_second']:8,.0f} words/s (median of {len(values)})")
    results = {
        "machine": cpu_name(),
        "threads": args.threads,
        "data": str(args.data),
        "batch_size": args.batch_size,
        "load_average": load_average,
        "rows": rows,
    }
    if args.output:
        args.output.write_text(json.dumps(results, indent=2), encoding="utf8")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
