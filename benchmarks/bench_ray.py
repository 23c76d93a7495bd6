"""Documents per second of `spacy apply` against `spacy ray-apply` with 1 and 2 actors,
on this machine, each run as the CLI in a fresh process (wall time includes start-up).

    python benchmarks/bench_ray.py --model tiny --docs 300
    python benchmarks/bench_ray.py --model /path/to/smollm2-135m --docs 300   # from scripts/convert_gguf.py
    python benchmarks/bench_ray.py --pipeline training/unmasked_smollm2/model-best

With --model a pipeline is built from configs/ner.cfg (20 blocks, "0011", LoRA) and
initialized, not trained: the cost per document does not depend on the weights' values.
`spacy apply`'s start-up is measured by a run on one document; ray-apply reports its own.
Entities are compared with `spacy apply` at the same torch thread count: a different
thread count changes float rounding, which can flip near-tie decisions of an untrained head.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = (
    "the new model from Paris labels every token of a tweet about Apple Berlin Jane Smith and "
    "New York on Sunday night while Barack Obama visits Cupertino with Angela Merkel"
).split()
SUMMARY = re.compile(r"([\d.]+) docs/s after ([\d.]+) s of start")  # on the CLI's summary line


def texts(n: int) -> list[str]:
    """Tweets of the project's WNUT-16 test split when converted, else varied synthetic sentences."""
    corpus = ROOT / "corpus" / "wnut16" / "test.spacy"
    if corpus.exists():
        import spacy
        from spacy.tokens import DocBin

        tweets = [d.text for d in DocBin().from_disk(corpus).get_docs(spacy.blank("en").vocab)]
        return [tweets[i % len(tweets)] for i in range(n)]
    return [" ".join(WORDS[(i * 5) % 11 : (i * 5) % 11 + 8 + i % 17]) + "." for i in range(n)]


def build_pipeline(model: str, folder: Path) -> Path:
    """An initialized ner pipeline on ``model`` ("tiny": a tiny random Llama built here)."""
    import spacy

    from tests.helpers import examples, make_nlp

    if model == "tiny":
        from tests.helpers import save_tiny_pretrained

        nlp = make_nlp(save_tiny_pretrained(folder / "tiny-llama", "llama"))
    else:
        overrides = {"paths.base_model": model, "components.transformer.model.num_layers": 20}
        config = spacy.util.load_config(ROOT / "configs" / "ner.cfg", overrides=overrides, interpolate=True)
        nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    nlp.initialize(lambda: examples(nlp))
    nlp.to_disk(folder / "pipeline")
    return folder / "pipeline"


def timed(command: list[str], *, threads: int | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of a command (with OMP_NUM_THREADS=threads when given)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def entities(path: Path) -> list:
    import spacy
    from spacy.tokens import DocBin

    files = sorted(path.glob("*.spacy")) if path.is_dir() else [path]
    vocab = spacy.blank("en").vocab
    docs = [d for f in files for d in DocBin().from_disk(f).get_docs(vocab)]
    return [[(e.start, e.end, e.label_) for e in d.ents] for d in docs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help='"tiny" or a Hugging Face folder to build a pipeline on')
    parser.add_argument("--pipeline", help="an existing pipeline (name or path) instead of --model")
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    pipeline = args.pipeline or str(build_pipeline(args.model, work))
    data, one = work / "docs.jsonl", work / "one.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(args.docs)), encoding="utf8")
    one.write_text(json.dumps({"text": texts(1)[0]}) + "\n", encoding="utf8")
    spacy_cli = [sys.executable, "-m", "spacy"]
    batch = ["--batch-size", str(args.batch_size)]
    load_avg = os.getloadavg()[0]
    rows = []
    startup, _ = timed([*spacy_cli, "apply", pipeline, str(one), str(work / "one.spacy"), *batch])
    reference: dict[int, list] = {}
    for threads in (2, 1):
        out = work / f"apply{threads}.spacy"
        wall, _ = timed([*spacy_cli, "apply", pipeline, str(data), str(out), *batch], threads=threads)
        reference[threads] = entities(out)
        label = f"spacy apply, 1 process x {threads} torch thread{'s' if threads > 1 else ''}"
        rows.append((label, wall, startup, args.docs / max(wall - startup, 1e-9)))
    for actors, cpus in ((1, 2), (2, 1)):
        out = work / f"ray{actors}"
        ray_options = ["--num-actors", str(actors), "--cpus-per-actor", str(cpus), "--num-cpus", "2"]
        wall, stdout = timed([*spacy_cli, "ray-apply", pipeline, str(data), str(out), *batch, *ray_options])
        match = SUMMARY.search(" ".join(stdout.split()))  # wasabi wraps long lines
        steady, ray_startup = (float(match.group(1)), float(match.group(2))) if match else (float("nan"),) * 2
        same = sum(a == b for a, b in zip(entities(out), reference[cpus], strict=True))
        plural = "s" if actors > 1 else ""
        label = f"ray-apply, {actors} actor{plural} x {cpus} CPU ({same}/{args.docs} docs as apply x {cpus})"
        rows.append((label, wall, ray_startup, steady))
    print(f"\n{args.docs} docs, batch {args.batch_size}, pipeline {args.pipeline or args.model}, ")
    print(
        f"{os.cpu_count()} CPUs, 1-min load average {load_avg:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| run | wall s | docs/s (wall) | start-up s | docs/s after start-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, wall, start, steady in rows:
        print(f"| {label} | {wall:.1f} | {args.docs / wall:.1f} | {start:.1f} | {steady:.1f} |")


if __name__ == "__main__":
    main()
