"""GPU check of the paper's recipe: unmasking semantics on CUDA, QLoRA training
steps through a spaCy pipeline, bf16 and NF4 inference, flash-attention 2.

Models are random-weight decoders built on the machine from a config (no hub),
with the tiny BPE tokenizer of tests/helpers.py, saved to a local folder and loaded
through the pipeline's own loading path (configs/paper_ner.cfg with ``name`` set
to that folder):

    python benchmarks/gpu_check.py --shape tiny            # seconds
    python benchmarks/gpu_check.py --shape 7b              # Mistral-7B shape (1b: Llama-3.2-1B shape)
    python benchmarks/gpu_check.py --model PATH            # an existing Hugging Face folder
    python benchmarks/gpu_check.py --allow-cpu --shape tiny   # smoke test of the script itself

Parts (each guarded: a failure is recorded and the rest still runs):
  a  padded batch == each sequence alone, spec "none" == stock model, spec "all"
     == the stock model given a padding-only 4-D mask; eager and sdpa, fp32 and bf16
  b  QLoRA training steps (paper config: NF4, double quant, bf16 compute, LoRA r=64
     alpha 16 on q_proj/v_proj, batch 16 docs, max_length 128), gradient
     checkpointing off and on: s/update, pieces/s, peak GPU memory, loss falls
  c  inference words/s and peak memory: bf16 base, and NF4 (the QLoRA pipeline)
  d  flash-attention 2 when `flash_attn` imports (semantics + inference)
Results go to OUT/gpu_check_<shape>.json (OUT: --out, else $OUT, else a temp folder),
rewritten after every part; the last stdout line is a one-line JSON headline.
"""

import argparse
import copy
import gc
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAPER_CONFIG = ROOT / "configs" / "paper_ner.cfg"

# Model shapes. vocab_size None: the tiny tokenizer's size.
SHAPES = {
    "tiny": dict(
        family="mistral",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=None,
        sliding_window=None,
    ),
    "1b": dict(  # Llama-3.2-1B
        family="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "7b": dict(  # Mistral-7B-v0.1
        family="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        sliding_window=4096,
        rope_theta=10000.0,
        max_position_embeddings=32768,
    ),
}

# Relative error (max |a - b| / max |b|) allowed between two computations that are
# equal in exact arithmetic but run different kernels (padded batch vs alone,
# hook-installed mask vs a caller's 4-D mask). The stock causal model's own
# padded-vs-alone error measures that kernel noise on the same model and backend,
# so the limit is max(TOLERANCE, 3 x stock noise). fp32: rounding ~1e-7 per op; a
# few layers stay near 1e-6, 1e-4 leaves room for re-tiled GEMMs. bf16: unit
# roundoff 2^-8 = 3.9e-3; different tilings of the same sums differ by a few
# roundoffs per layer (measured on CPU: 4-layer Mistral-7B shape, stock model 1.9e-2
# in bf16 sdpa): 3e-2. A padding leak moves outputs by O(1) relative (the leak
# control below measures it on the same model: ~1.0 at the 7B shape, ~1.3 tiny),
# and a check only counts as conclusive when that control exceeds 5x the limit.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}
STOCK_NOISE_FACTOR = 3
# spec "none" must be the stock model itself: exact, bar one ulp of the largest value.
NONE_TOLERANCE = {"float32": 1e-6, "bfloat16": 2**-7}
SEMANTICS_MAX_LAYERS = 4

PEOPLE = ["Jane Smith", "Barack Obama", "Angela Merkel", "Ada Lovelace", "Kofi Annan", "Marie Curie"]
PLACES = ["Berlin", "Paris", "Cupertino", "New York", "Zürich", "São Paulo", "Kraków", "Nairobi"]
ORGS = ["Apple Inc.", "Mistral AI", "the Boston Red Sox", "Siemens", "the United Nations", "Netflix"]
FILLER = "after a long week of meetings about budgets plans and the new office near the station".split()
TEMPLATES = [
    "{PER} visited {LOC} last May and met the team of {ORG} there .",
    "Yesterday {ORG} hired {PER} to open an office in {LOC} .",
    "In {LOC} , {PER} said that {ORG} will grow {FILL} .",
    "{ORG} and {ORG2} signed a deal in {LOC} {FILL} , according to {PER} .",
]


def sentences(n: int, seed: int = 0) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """``n`` synthetic sentences with PER/LOC/ORG entities as character spans."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        template = rng.choice(TEMPLATES)
        values = {
            "PER": rng.choice(PEOPLE),
            "LOC": rng.choice(PLACES),
            "ORG": rng.choice(ORGS),
            "ORG2": rng.choice(ORGS),
            "FILL": " ".join(FILLER[: rng.randint(2, len(FILLER))]),
        }
        text, spans = "", []
        for piece in template.replace("}", "{").split("{"):
            if piece in values:
                value = values[piece]
                if piece != "FILL":
                    spans.append((len(text), len(text) + len(value), piece[:3]))
                text += value
            else:
                text += piece
        out.append((text, spans))
    return out


class Clock:
    """Wall-clock deadline shared by all parts."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()


# --------------------------------------------------------------------------- models


def model_config(shape: str, tokenizer):
    """A transformers config of ``shape`` with the tokenizer's special ids."""
    import transformers

    dims = dict(SHAPES[shape])
    family = dims.pop("family")
    dims["vocab_size"] = max(dims["vocab_size"] or 0, len(tokenizer))
    dims.update(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=False,
    )
    config_cls = {"mistral": transformers.MistralConfig, "llama": transformers.LlamaConfig}[family]
    return config_cls(**dims)


def scratch_dir(bytes_needed: int) -> Path:
    """A folder for the model: /dev/shm when it has room (RAM-speed writes), else the temp dir."""
    for base in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(base) and shutil.disk_usage(base).free > 1.2 * bytes_needed + 2**30:
            return Path(tempfile.mkdtemp(prefix="spacy-unmasked-gpu-check-", dir=base))
    raise OSError(f"No folder has {bytes_needed / 2**30:.1f} GiB free for the random model.")


def build_model_folder(shape: str, device: str) -> dict:
    """Create random weights of ``shape`` on ``device`` (bf16 on CUDA, fp32 on CPU),
    save them with the tiny tokenizer; returns the folder, size and timings."""
    import torch
    import transformers

    from tests.helpers import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = model_config(shape, tokenizer)
    dtype = torch.bfloat16 if device == "cuda" and shape != "tiny" else torch.float32
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModel.from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    if device == "cuda":
        torch.cuda.synchronize()
    created = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    folder = scratch_dir(n_params * dtype.itemsize)
    start = time.perf_counter()
    model.save_pretrained(str(folder), max_shard_size="4GB")
    tokenizer.save_pretrained(str(folder))
    saved = time.perf_counter() - start
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    info = {
        "folder": str(folder),
        "parameters": n_params,
        "saved_dtype": str(dtype).replace("torch.", ""),
        "create_seconds": round(created, 2),
        "save_seconds": round(saved, 2),
        "folder_gib": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**30, 3),
    }
    return info


# --------------------------------------------------------------------------- part a


def _rel(a, b) -> float:
    """max |a - b| / max |b| in float32."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def semantics(config, device: str, dtype_name: str, attn: str, tokenizer) -> dict:
    """Unmasking semantics of one backend and dtype on a random model of ``config``'s
    shape (at most SEMANTICS_MAX_LAYERS layers, built in memory)."""
    import torch
    import transformers

    from spacy_unmasked import resolve_layers, unmask

    dtype = getattr(torch, dtype_name)
    config = copy.deepcopy(config)
    config.num_hidden_layers = min(config.num_hidden_layers, SEMANTICS_MAX_LAYERS)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModel.from_config(config, torch_dtype=dtype, attn_implementation=attn).eval()
    texts = [text for text, _ in sentences(4, seed=1)]
    texts[1] = texts[1][:12]  # lengths differ, so the batch is padded
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1).tolist()
    n_layers = config.num_hidden_layers

    def run(attention_mask):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=attention_mask).last_hidden_state

    def alone(i):
        with torch.no_grad():
            length = lengths[i]
            return model(input_ids=ids[i : i + 1, :length], attention_mask=mask[i : i + 1, :length]).last_hidden_state[
                0
            ]

    def valid(out, i):
        return out[i, : lengths[i]]

    def batch_err(out, refs):
        return max(_rel(valid(out, i), refs[i]) for i in range(len(texts)))

    result: dict = {"layers": n_layers, "piece_lengths": lengths}
    stock = run(mask)
    stock_alone = [alone(i) for i in range(len(texts))]
    handle = unmask(model, "none")
    none_out = run(mask)
    handle.remove()
    result["none_vs_stock"] = _rel(none_out, stock)
    errors = {"none": batch_err(stock, stock_alone)}
    outputs = {}
    for spec in ("0011", "all"):
        handle = unmask(model, spec)
        outputs[spec] = run(mask)
        refs = [alone(i) for i in range(len(texts))]
        errors[spec] = batch_err(outputs[spec], refs)
        if spec == "all":
            all_alone = refs
        handle.remove()
    try:
        result["unmasked_layers_0011"] = list(resolve_layers(model, "0011"))
    except Exception as error:
        result["unmasked_layers_0011"] = f"{type(error).__name__}: {error}"
    result["padded_vs_alone"] = errors
    limit = max(TOLERANCE[dtype_name], STOCK_NOISE_FACTOR * errors["none"])
    result["limit"] = limit
    if attn != "flash_attention_2":
        # independent oracle: the stock model given a padding-only 4-D mask (0 = visible)
        hidden = torch.finfo(dtype).min
        four_d = torch.zeros(len(texts), 1, ids.shape[1], ids.shape[1], dtype=dtype, device=device)
        four_d.masked_fill_(~mask.bool()[:, None, None, :], hidden)
        oracle = run(four_d)
        result["all_vs_oracle"] = max(_rel(valid(outputs["all"], i), valid(oracle, i)) for i in range(len(texts)))
        # leak control: what attending the padding keys would do (all keys visible)
        leaky = run(torch.zeros_like(four_d))
        result["leak_control"] = batch_err(leaky, all_alone)
    result["unmask_effect"] = max(_rel(valid(outputs["all"], i), valid(stock, i)) for i in range(len(texts)))
    checks = {
        "none_equals_stock": result["none_vs_stock"] <= NONE_TOLERANCE[dtype_name],
        "padded_equals_alone": errors["0011"] <= limit and errors["all"] <= limit,
        "unmasking_changes_outputs": result["unmask_effect"] > 5 * limit,
    }
    if "all_vs_oracle" in result:
        checks["all_equals_oracle"] = result["all_vs_oracle"] <= limit
        checks["conclusive"] = result["leak_control"] > 5 * limit
    result["checks"] = checks
    result["pass"] = all(checks.values())
    return result


def part_semantics(config, device: str, tokenizer, backends) -> dict:
    out = {}
    for dtype_name in ("float32", "bfloat16"):
        for attn in backends:
            if attn == "flash_attention_2" and dtype_name == "float32":
                continue
            key = f"{attn}/{dtype_name}"
            try:
                out[key] = semantics(config, device, dtype_name, attn, tokenizer)
            except Exception as error:  # recorded, the rest still runs
                out[key] = failure(error)
            free_memory(device)
    return out


# --------------------------------------------------------------------------- parts b, c


def paper_nlp(folder: Path, *, quantize: bool, lora: bool, checkpointing: bool, attn: str = "sdpa"):
    """The pipeline of configs/paper_ner.cfg on ``folder``, with the given changes."""
    import spacy

    config = spacy.util.load_config(PAPER_CONFIG)
    config["paths"]["base_model"] = str(folder)
    block = config["components"]["transformer"]["model"]
    block["gradient_checkpointing"] = checkpointing
    block["attn_implementation"] = attn
    block["torch_dtype"] = "bfloat16"
    if not quantize:
        block["quantization"] = None
    if not lora:
        block["lora"] = None
        block["freeze_base"] = True
    spacy.util.fix_random_seed(0)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    recipe = {
        "quantization": block["quantization"],
        "lora": block["lora"],
        "unmask": block["unmask"],
        "max_length": block["max_length"],
        "torch_dtype": block["torch_dtype"],
        "attn_implementation": attn,
        "gradient_checkpointing": checkpointing,
        "batch_size": config["nlp"]["batch_size"],
        "learn_rate": config["training"]["optimizer"]["learn_rate"],
        "dropout": config["training"]["dropout"],
    }
    return nlp, recipe


def torch_model(nlp):
    """The Hugging Face model inside the pipeline's transformer (public ``model`` property)."""
    return getattr(nlp.get_pipe("transformer").model.shims[0], "model", None)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def memory(device: str, what: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    fn = torch.cuda.max_memory_allocated if what == "peak" else torch.cuda.memory_allocated
    return round(fn() / 2**20, 1)


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def pieces_of(docs) -> int:
    """Word pieces the transformer ran over for ``docs`` (BOS included, padding not)."""
    return int(sum(sum(doc._.trf_data.wordpieces.lengths) for doc in docs))


def finite(docs) -> bool:
    import numpy
    from thinc.api import get_current_ops

    ops = get_current_ops()
    return all(bool(numpy.isfinite(ops.to_numpy(d._.trf_data.model_output.last_hidden_state)).all()) for d in docs)


def inference(nlp, texts: list[str], device: str, batch_size: int = 64) -> dict:
    """words/s and pieces/s of nlp.pipe over ``texts``, and peak memory."""
    list(nlp.pipe(texts[:32], batch_size=batch_size))  # warm up
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    docs = list(nlp.pipe(texts, batch_size=batch_size))
    sync(device)
    seconds = time.perf_counter() - start
    words = sum(len(doc) for doc in docs)
    pieces = pieces_of(docs)
    return {
        "docs": len(docs),
        "words_per_second": round(words / seconds, 1),
        "pieces_per_second": round(pieces / seconds, 1),
        "pieces_per_word": round(pieces / words, 2),
        "peak_gpu_mb": memory(device, "peak"),
        "finite_features": finite(docs),
    }


def training(folder: Path, device: str, *, checkpointing: bool, steps: int, infer_docs: int) -> dict:
    """QLoRA steps with the paper's recipe; with ``infer_docs``, NF4 inference afterwards."""
    from spacy.training import Example

    result: dict = {}
    start = time.perf_counter()
    nlp, recipe = paper_nlp(folder, quantize=True, lora=True, checkpointing=checkpointing)
    result["recipe"] = recipe
    batch_size = recipe["batch_size"]
    n_batches = max(1, min(4, steps // 2))
    data = sentences(batch_size * n_batches, seed=2)
    examples = [Example.from_dict(nlp.make_doc(t), {"entities": spans}) for t, spans in data]
    try:
        optimizer = nlp.initialize(lambda: examples)
    except Exception as error:
        if device == "cpu" and ("CUDA" in str(error) or "quantiz" in str(error).lower()):
            print(f"  QLoRA REFUSED on CPU by this library version: {error}", flush=True)
            print("  -> training with the same recipe minus quantization (bf16 LoRA) instead", flush=True)
            result["qlora_refused_on_cpu"] = str(error)
            nlp, recipe = paper_nlp(folder, quantize=False, lora=True, checkpointing=checkpointing)
            result["recipe"] = recipe
            examples = [Example.from_dict(nlp.make_doc(t), {"entities": spans}) for t, spans in data]
            optimizer = nlp.initialize(lambda: examples)
        else:
            raise
    sync(device)
    result["load_seconds"] = round(time.perf_counter() - start, 2)
    result["model_gpu_mb"] = memory(device, "current")
    model = torch_model(nlp)
    if model is not None:
        base = next(p for n, p in model.named_parameters() if "lora_" not in n)
        trained = [p for p in model.parameters() if p.requires_grad]
        result["base_weight_class"] = type(base).__name__
        result["base_dtype"] = str(base.dtype)
        result["lora_dtype"] = str(trained[0].dtype) if trained else None
        result["trainable_parameters"] = sum(p.numel() for p in trained)
        result["quantized_linear"] = any("Linear4bit" in type(m).__name__ for m in model.modules())
    batches = [examples[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
    drop = recipe["dropout"]
    nlp.update(batches[0], sgd=optimizer, drop=drop)  # warm up (allocations, kernels)
    sync(device)
    reset_peak(device)
    times, losses = [], []
    for step in range(steps):
        step_losses: dict = {}
        begin = time.perf_counter()
        nlp.update(batches[step % n_batches], sgd=optimizer, drop=drop, losses=step_losses)
        sync(device)
        times.append(time.perf_counter() - begin)
        losses.append(round(float(step_losses["ner"]), 4))
    result["peak_gpu_mb"] = memory(device, "peak")
    pieces = [pieces_of(nlp.pipe([e.reference.text for e in b], batch_size=batch_size)) for b in batches]
    seconds = statistics.median(times)
    result.update(
        steps=steps,
        seconds_per_update=round(seconds, 4),
        pieces_per_batch=round(statistics.mean(pieces), 1),
        pieces_per_second=round(statistics.mean(pieces) / seconds, 1),
        ner_losses=losses,
    )
    cycles = [losses[i : i + n_batches] for i in range(0, len(losses) - n_batches + 1, n_batches)]
    result["loss_falls"] = bool(len(cycles) >= 2 and sum(cycles[-1]) < sum(cycles[0]))
    if infer_docs:
        texts = [t for t, _ in sentences(infer_docs, seed=3)]
        result["nf4_inference" if "qlora_refused_on_cpu" not in result else "bf16_lora_inference"] = inference(
            nlp, texts, device
        )
    del nlp, model, optimizer
    free_memory(device)
    return result


def bf16_inference(folder: Path, device: str, n_docs: int, attn: str = "sdpa") -> dict:
    """Inference of the paper pipeline on a frozen bf16 base (no quantization, no LoRA)."""
    start = time.perf_counter()
    from spacy.training import Example

    nlp, _ = paper_nlp(folder, quantize=False, lora=False, checkpointing=False, attn=attn)
    examples = [Example.from_dict(nlp.make_doc(t), {"entities": spans}) for t, spans in sentences(16, seed=2)]
    nlp.initialize(lambda: examples)
    sync(device)
    result = {"load_seconds": round(time.perf_counter() - start, 2), "model_gpu_mb": memory(device, "current")}
    texts = [t for t, _ in sentences(n_docs, seed=3)]
    result.update(inference(nlp, texts, device))
    del nlp
    free_memory(device)
    return result


# --------------------------------------------------------------------------- driver


def failure(error: BaseException) -> dict:
    return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}


def environment(device: str) -> dict:
    import importlib.metadata

    import torch

    env = {"python": platform.python_version(), "device": device, "torch_threads": torch.get_num_threads()}
    for name in (
        "torch",
        "transformers",
        "tokenizers",
        "huggingface-hub",
        "peft",
        "bitsandbytes",
        "accelerate",
        "spacy",
        "spacy-transformers",
        "thinc",
        "numpy",
        "cupy-cuda13x",
        "flash-attn",
    ):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            cuda=torch.version.cuda,
        )
    return env


def summarize(results: dict) -> list[str]:
    """Compact human-readable lines of the results."""
    lines = []
    for key, row in results.get("semantics", {}).items():
        if "error" in row:
            lines.append(f"[a] {key}: ERROR {row['error'][:200]}")
            continue
        e = row["padded_vs_alone"]
        lines.append(
            f"[a] {key}: {'PASS' if row['pass'] else 'FAIL'} none==stock {row['none_vs_stock']:.1e} | padded==alone "
            f"0011 {e['0011']:.1e} all {e['all']:.1e} (stock {e['none']:.1e}, limit {row['limit']:.1e})"
            + (
                f" | all==oracle {row['all_vs_oracle']:.1e} | leak control {row['leak_control']:.2f}"
                if "all_vs_oracle" in row
                else ""
            )
            + f" | unmask effect {row['unmask_effect']:.2f}"
        )
    for key in ("train_checkpointing_off", "train_checkpointing_on"):
        row = results.get(key)
        if row is None:
            continue
        if "error" in row or "skipped" in row:
            lines.append(f"[b] {key}: {row.get('error', row.get('skipped'))[:300]}")
            continue
        mode = "bf16 LoRA (QLoRA refused on CPU)" if "qlora_refused_on_cpu" in row else "QLoRA"
        lines.append(
            f"[b] {key}: {mode} {row['seconds_per_update']:.3f} s/update, {row['pieces_per_second']:.0f} pieces/s, "
            f"model {row['model_gpu_mb']} MB, peak {row['peak_gpu_mb']} MB, load {row['load_seconds']} s, "
            f"loss {row['ner_losses'][0]:.1f} -> {row['ner_losses'][-1]:.1f} falls={row['loss_falls']}"
        )
        for name in ("nf4_inference", "bf16_lora_inference"):
            if name in row:
                r = row[name]
                lines.append(f"[c] {name}: {r['words_per_second']:.0f} words/s, peak {r['peak_gpu_mb']} MB")
    for key in ("bf16_inference", "flash_attention_2"):
        row = results.get(key)
        if row is None:
            continue
        if "error" in row or "skipped" in row or "status" in row:
            lines.append(
                f"[{'c' if key.startswith('bf16') else 'd'}] {key}: "
                f"{row.get('error', row.get('skipped', row.get('status')))[:300]}"
            )
            continue
        if key == "bf16_inference":
            lines.append(
                f"[c] bf16_inference: {row['words_per_second']:.0f} words/s, "
                f"{row['pieces_per_second']:.0f} pieces/s, peak {row['peak_gpu_mb']} MB"
            )
        else:
            lines.append(f"[d] flash_attention_2: {json.dumps(row)[:300]}")
    return lines


def headline(results: dict) -> dict:
    train = results.get("train_checkpointing_off", {})
    infer = results.get("bf16_inference", {})
    semantic = [row.get("pass", False) for row in results.get("semantics", {}).values()]
    return {
        "shape": results["shape"],
        "device": results["environment"].get("gpu", results["environment"]["device"]),
        "quantized": bool(train.get("quantized_linear")),
        "lora_dtype": train.get("lora_dtype"),
        "seconds_per_update": train.get("seconds_per_update"),
        "words_per_second": infer.get("words_per_second"),
        "finite_features": infer.get("finite_features"),
        "peak_gpu_mb": train.get("peak_gpu_mb"),
        "semantics_pass": bool(semantic) and all(semantic),
        "loss_falls": train.get("loss_falls"),
        "errors": results["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--model", help="a Hugging Face folder instead of a random model ('tiny': --shape tiny)")
    parser.add_argument("--steps", type=int, help="timed training steps (default: 12 on CUDA, 2 on CPU)")
    parser.add_argument("--infer-docs", type=int, help="docs for inference (default: 512 on CUDA, 32 on CPU)")
    parser.add_argument("--parts", default="abcd", help="which parts to run (letters a-d)")
    parser.add_argument("--out", type=Path, help="results folder (default: $OUT, else a temporary folder)")
    parser.add_argument("--deadline", type=float, help="unix time by which to stop starting new parts")
    parser.add_argument("--keep-model", action="store_true", help="keep the random model folder")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test only)")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="torch threads on CPU (default 1: a smoke test must not fight over shared cores)",
    )
    args = parser.parse_args()
    if args.model == "tiny":
        args.shape, args.model = "tiny", None

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("No CUDA GPU found: this check is for the CUDA path (use --allow-cpu for a smoke test).")
    import spacy
    from thinc.api import set_gpu_allocator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.cpu_threads)
    spacy_on_gpu: str | None = None  # why spaCy cannot run the pipeline on the GPU, if it cannot
    if device == "cuda":
        try:
            spacy.require_gpu()  # thinc's CupyOps: the pipeline's torch device follows them
            set_gpu_allocator("pytorch")  # cupy allocates through torch: one pool, one peak counter
        except Exception as error:  # part a needs no spaCy, so it still runs
            spacy_on_gpu = f"spacy.require_gpu() failed: {type(error).__name__}: {error}"
            print(spacy_on_gpu, flush=True)
    steps = args.steps or (12 if device == "cuda" else 2)
    infer_docs = args.infer_docs or (512 if device == "cuda" else 32)
    out_dir = args.out or Path(os.environ.get("OUT") or Path(tempfile.gettempdir()) / "spacy-unmasked-gpu-check")
    out_dir.mkdir(parents=True, exist_ok=True)
    label = args.shape if args.model is None else Path(args.model).name
    out_file = out_dir / f"gpu_check_{label}.json"
    clock = Clock(args.deadline)
    started = time.time()
    results: dict = {
        "shape": label,
        "environment": environment(device),
        "errors": [],
        "skipped": [],
        "part_seconds": {},
    }
    if spacy_on_gpu:
        results["errors"].append(spacy_on_gpu)
        args.parts = args.parts.replace("b", "").replace("c", "").replace("d", "")
        for name in ("train_checkpointing_off", "bf16_inference", "train_checkpointing_on"):
            results[name] = {"skipped": spacy_on_gpu}

    def save() -> None:
        out_file.write_text(json.dumps(results, indent=1, default=str))

    def guarded(name: str, fn, need: float = 0.0):
        if clock.left() < need:
            results[name] = {"skipped": f"deadline: {clock.left():.0f} s left, about {need:.0f} s needed"}
            results["skipped"].append(name)
            print(f"[{name}] skipped: deadline", flush=True)
            save()
            return None
        print(f"[{name}] ... (t={time.time() - started:.0f} s)", flush=True)
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as error:  # recorded, the rest still runs
            value = failure(error)
            results["errors"].append(f"{name}: {value['error'][:300]}")
            print(f"[{name}] ERROR {value['error'][:500]}", flush=True)
        results["part_seconds"][name] = round(time.perf_counter() - start, 1)
        print(f"[{name}] done in {results['part_seconds'][name]} s", flush=True)
        results[name] = value
        save()
        free_memory(device)
        return value

    print(json.dumps(results["environment"]), flush=True)
    from tests.helpers import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    folder = None
    if args.model is not None:
        folder = Path(args.model)
        import transformers

        semantics_config = transformers.AutoConfig.from_pretrained(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = "right"
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    else:
        semantics_config = model_config(args.shape, tokenizer)
    big = args.shape != "tiny" or args.model is not None
    backends = ["eager", "sdpa"]
    flash = importlib.util.find_spec("flash_attn") is not None
    if "a" in args.parts:
        guarded("semantics", lambda: part_semantics(semantics_config, device, tokenizer, backends), need=10)
    if folder is None and ({"b", "c", "d"} & set(args.parts)):
        made = guarded("model", lambda: build_model_folder(args.shape, device), need=60 if big else 5)
        if made and "folder" in made:
            folder = Path(made["folder"])
    if folder is not None:
        load_need = 60 if big else 5

        def need() -> float:
            loads = [
                results[k]["load_seconds"]
                for k in ("train_checkpointing_off", "bf16_inference")
                if isinstance(results.get(k), dict) and "load_seconds" in results[k]
            ]
            return 1.5 * max(loads) + 20 if loads else load_need

        if "b" in args.parts:
            guarded(
                "train_checkpointing_off",
                lambda: training(
                    folder, device, checkpointing=False, steps=steps, infer_docs=infer_docs if "c" in args.parts else 0
                ),
                need=need(),
            )
        if "c" in args.parts:
            guarded("bf16_inference", lambda: bf16_inference(folder, device, infer_docs), need=need())
        if "b" in args.parts:
            guarded(
                "train_checkpointing_on",
                lambda: training(folder, device, checkpointing=True, steps=steps, infer_docs=0),
                need=need(),
            )
        if "d" in args.parts:
            if not flash:
                results["flash_attention_2"] = {"status": "not installed (flash_attn does not import)"}
                save()
            elif device != "cuda":
                results["flash_attention_2"] = {"status": "needs CUDA"}
            else:
                guarded(
                    "flash_attention_2",
                    lambda: {
                        "semantics": part_semantics(semantics_config, device, tokenizer, ["flash_attention_2"]),
                        "bf16_inference": bf16_inference(folder, device, infer_docs, attn="flash_attention_2"),
                    },
                    need=need(),
                )
        if args.model is None and not args.keep_model:
            shutil.rmtree(folder, ignore_errors=True)
    results["complete"] = not results["skipped"]
    save()
    for line in summarize(results):
        print(line, flush=True)
    print(f"wrote {out_file}", flush=True)
    head = headline(results)
    print(json.dumps(head), flush=True)
    failed = head["errors"] or head["semantics_pass"] is False or head["loss_falls"] is False
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
