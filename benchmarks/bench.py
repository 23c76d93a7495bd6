"""Speed and memory of spacy-unmasked: inference throughput against a plain
transformers forward pass, the cost of unmasking, training cost (LoRA vs full
fine-tuning, gradient checkpointing) and the num_layers speed-up.

Each case runs in a fresh subprocess so that its peak memory is its own.
Prints a table and writes JSON:

    python benchmarks/bench.py --model assets/smollm2-135m --output benchmarks/results-cpu.json
    python benchmarks/bench.py --model tiny            # a tiny random Llama built here
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def texts(n: int) -> list[str]:
    """Real tweets from the WNUT-16 corpus if converted, else varied synthetic sentences."""
    corpus = ROOT / "corpus" / "wnut16" / "test.spacy"
    if corpus.exists():
        import spacy
        from spacy.tokens import DocBin

        docs = DocBin().from_disk(corpus).get_docs(spacy.blank("en").vocab)
        return [doc.text for doc in docs][:n]
    words = "the new model from Paris labels every token of a tweet about Apple and Berlin".split()
    return [" ".join(words[: 5 + (i * 7) % len(words)]) for i in range(n)]


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_path(name: str) -> str:
    if name != "tiny":
        return name
    from tests.tiny import save_tiny_pretrained

    folder = Path(tempfile.mkdtemp()) / "tiny"
    save_tiny_pretrained(folder, "llama", num_hidden_layers=4)
    return str(folder)


def build_nlp(model: str, settings: dict, components=("ner",)):
    from tests.pipelines import make_nlp

    return make_nlp(model, components=components, **settings)


def case_infer(args) -> dict:
    """nlp.pipe words/s, and a plain forward pass over exactly the batches the
    pipeline fed to the model (recorded with a hook), so the ratio is the
    pipeline's own overhead: tokenization, alignment, pooling and the ner head."""
    import torch

    sample = texts(args.docs)
    nlp = build_nlp(
        args.model,
        {"unmask": args.unmask, "attn_implementation": args.attn, "freeze_base": True, "num_layers": args.num_layers},
    )
    nlp.initialize()
    shim = nlp.get_pipe("transformer").model.shims[0]
    model = shim._model
    n_words = sum(len(nlp.make_doc(t)) for t in sample)
    list(nlp.pipe(sample[:32], batch_size=args.batch_size))  # warm up
    recorded: list[dict] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: recorded.append(dict(kw)), with_kwargs=True)
    pipe_times, forward_times = [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        list(nlp.pipe(sample, batch_size=args.batch_size))
        pipe_times.append(time.perf_counter() - start)
        if repeat == 0:
            hook.remove()
            batches = list(recorded)
        start = time.perf_counter()
        with torch.no_grad():
            for kwargs in batches:
                model(**kwargs)
        forward_times.append(time.perf_counter() - start)
    pipe_s, forward_s = statistics.median(pipe_times), statistics.median(forward_times)
    return {
        "words_per_second": n_words / pipe_s,
        "forward_words_per_second": n_words / forward_s,
        "pipeline_vs_forward": forward_s / pipe_s,
        "peak_mb": peak_memory_mb(shim.device.type),
    }


def case_unmask_cost(args) -> dict:
    """Plain forward time with spec none / all / mixed on the same batch (ratios to none)."""
    import torch
    import transformers

    from spacy_unmasked import unmask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = (
        transformers.AutoModel.from_pretrained(model_path(args.model), attn_implementation=args.attn, torch_dtype=dtype)
        .to(device)
        .eval()
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path(args.model))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    batch = tokenizer(texts(args.batch_size), return_tensors="pt", padding=True).to(device)
    times: dict[str, list[float]] = {"none": [], "all": [], "0011": []}
    with torch.no_grad():
        for _ in range(args.repeats * 3):  # interleaved, so drift hits every spec alike
            for spec, spec_times in times.items():
                handle = unmask(model, spec)
                model(**batch)
                start = time.perf_counter()
                model(**batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                spec_times.append(time.perf_counter() - start)
                handle.remove()
    results = {spec: statistics.median(spec_times) for spec, spec_times in times.items()}
    return {f"{spec}_vs_none": results[spec] / results["none"] for spec in ("all", "0011")}


def case_train(args) -> dict:
    """Seconds per update and peak memory for one training setting."""
    import random

    from spacy.training import Example

    settings = {
        "unmask": args.unmask,
        "attn_implementation": args.attn,
        "num_layers": args.num_layers,
        "gradient_checkpointing": args.checkpointing,
    }
    if args.lora:
        settings["lora"] = {
            "@misc": "spacy-unmasked.LoRA.v1",
            "r": 8,
            "alpha": 16,
            "dropout": 0.1,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        }
    nlp = build_nlp(args.model, settings)
    sample = texts(max(args.batch_size * (args.steps + 1), 64))
    examples = []
    for text in sample:
        doc = nlp.make_doc(text)
        examples.append(Example.from_dict(doc, {"entities": ["O"] * (len(doc) - 1) + ["U-LOC"]}))
    optimizer = nlp.initialize(lambda: examples[:64])
    random.Random(0).shuffle(examples)
    times = []
    for step in range(args.steps + 1):
        batch = examples[step * args.batch_size : (step + 1) * args.batch_size]
        start = time.perf_counter()
        nlp.update(batch, sgd=optimizer)
        times.append(time.perf_counter() - start)
    device = nlp.get_pipe("transformer").model.shims[0].device.type
    return {"seconds_per_update": statistics.median(times[1:]), "peak_mb": peak_memory_mb(device)}


CASES = {"infer": case_infer, "unmask_cost": case_unmask_cost, "train": case_train}


def child_args(args, **overrides) -> list[str]:
    values = {**vars(args), **overrides}
    out = []
    for key in ("model", "docs", "batch_size", "repeats", "unmask", "attn", "num_layers", "steps"):
        if values[key] is not None:
            out += [f"--{key.replace('_', '-')}", str(values[key])]
    for flag in ("lora", "checkpointing"):
        if values[flag]:
            out.append(f"--{flag}")
    return out


def run_case(case: str, args, **overrides) -> dict:
    command = [sys.executable, __file__, "--case", case, *child_args(args, **overrides)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"case {case} {overrides} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def plan(args) -> list[tuple[str, str, dict]]:
    """(row label, case, overrides) of the full benchmark."""
    rows = [("inference, spec " + args.unmask, "infer", {})]
    for attn in ("eager", "sdpa"):
        rows.append((f"unmasking cost ({attn})", "unmask_cost", {"attn": attn}))
    for lora in (True, False):
        for checkpointing in (False, True):
            label = f"train {'LoRA' if lora else 'full'}{' + checkpointing' if checkpointing else ''}"
            rows.append((label, "train", {"lora": lora, "checkpointing": checkpointing}))
    if args.layers_cut:
        rows.append((f"inference, num_layers={args.layers_cut}", "infer", {"num_layers": args.layers_cut}))
        rows.append(
            (f"train LoRA, num_layers={args.layers_cut}", "train", {"lora": True, "num_layers": args.layers_cut})
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--model", default="tiny", help="model folder / hub id, or 'tiny'")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unmask", default="0011")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--layers-cut", type=int, help="also measure with only the first K blocks")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.case:
        args.model = model_path(args.model)
        print(json.dumps(CASES[args.case](args)))
        return
    import torch

    args.model = model_path(args.model)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "model": args.model,
        "batch_size": args.batch_size,
        "rows": {},
    }
    print(f"{'case':40} result")
    for label, case, overrides in plan(args):
        row = run_case(case, args, **overrides)
        results["rows"][label] = row
        print(f"{label:40} " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
