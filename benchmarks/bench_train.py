"""What spaCy's training loop costs around the model: one LoRA / QLoRA update of
the demo pipeline (``transformer`` + ``ner`` from ``configs/ner.cfg``) against a
plain PyTorch + PEFT loop over the same decoder and the same pieces.

* Arm ``spacy``: the pipeline as ``spacy train`` builds it (``load_config`` with
  the demo's overrides, ``load_model_from_config``, ``nlp.initialize`` on a few
  docs covering every label), timed around ``nlp.update(batch, sgd=optimizer,
  drop=0.1)`` and ``optimizer.step_schedules()``, as ``spacy train`` steps.
* Arm ``plain``: ``AutoModel.from_pretrained`` of the same base with the same
  dtype, quantization (NF4, double quantization, bfloat16 compute), layer count,
  attention backend and LoRA settings, unmasked with the same spec, fed the same
  input ids and attention mask (encoded once, before timing; both arms report a
  fingerprint of what reached the decoder and the two must agree), a
  ``Linear(hidden, n_labels)`` token head, cross-entropy on random labels,
  ``backward``, gradient clipping and ``AdamW``.

Every (mode, arm) runs in a process of its own, so that each peak RSS is its
own; the processes load side by side and then take turns, one update at a time
(the order alternates every round), so that load on a shared machine hits both
arms alike. Figures are medians over ``--updates`` updates after ``--warmup``.
Each process uses one torch thread (and one BLAS/OpenMP thread).

After timing, the spaCy arm runs ``--profile-updates`` more updates with
timers around the pieces of ``nlp.update`` (decoder forward and backward,
tokenization, finiteness checks, ner, thinc's optimizer, spaCy's example
copies, ...) and one update under cProfile; the plain arm splits its own
updates into forward, head + loss, backward and optimizer. From the two splits,
``overhead_ratio`` gives both arms the plain arm's decoder time and compares only
what each loop adds around the decoder: two processes on a shared machine run the
very same decoder work several percent apart, which the plain ratio includes.

    python benchmarks/bench_train.py --model assets/smollm2-135m --mode both --updates 5 --out /tmp/train.json
    python benchmarks/bench_train.py --model tiny --updates 2 --warmup 1    # seconds: a tiny random Llama
"""

import argparse
import contextlib
import cProfile
import hashlib
import itertools
import json
import os
import platform
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / "configs" / "ner.cfg"
QLORA_CONFIG = ROOT / "configs" / "ner_qlora.cfg"
DEFAULT_CORPUS = ROOT / "corpus" / "wnut16" / "train.spacy"
DEMO_NUM_LAYERS = 20  # project.yml vars.num_layers: the demo trains the first 20 of SmolLM2's 30 blocks
ARMS = ("spacy", "plain")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS")


# Shared by both arms -------------------------------------------------------------


def rss_mb() -> float:
    """Resident set size of this process now (Linux), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_config(args):
    """The demo's config (``--config``; by default configs/ner.cfg for LoRA and
    configs/ner_qlora.cfg, its 4-bit twin, for QLoRA) with the demo's overrides
    (base model, num_layers); LoRA drops any quantization block."""
    import spacy

    overrides = {
        "paths.base_model": args.model,
        "components.transformer.model.num_layers": args.num_layers,
    }
    if args.quant == "lora":
        overrides["components.transformer.model.quantization"] = None
    config = args.config or (QLORA_CONFIG if args.quant == "qlora" else DEFAULT_CONFIG)
    return spacy.util.load_config(config, overrides=overrides, interpolate=False)


def reference_docs(args, vocab) -> list:
    """The training docs (with entities) of ``--corpus``, or tests.helpers.TRAIN."""
    import spacy
    from spacy.tokens import DocBin

    if args.corpus != "builtin":
        return list(DocBin().from_disk(args.corpus).get_docs(vocab))
    from tests.helpers import TRAIN

    blank = spacy.blank("en", vocab=vocab)
    docs = []
    for text, entities in TRAIN:
        doc = blank.make_doc(text)
        doc.ents = [doc.char_span(start, end, label=label) for start, end, label in entities]
        docs.append(doc)
    return docs


def batch_of(docs: list, size: int) -> list:
    """The first ``size`` docs (cycled when the corpus is smaller): the one batch every update trains on."""
    return [docs[i % len(docs)] for i in range(size)]


def covering_subset(examples: list, size: int) -> list:
    """The first ``size`` examples (0: all) plus the first example of every entity
    label they miss: a few docs to initialize on that still give the ner every label."""
    if not size:
        return list(examples)
    chosen = list(examples[:size])
    seen = {ent.label_ for example in chosen for ent in example.reference.ents}
    for example in examples[size:]:
        labels = {ent.label_ for ent in example.reference.ents}
        if labels - seen:
            chosen.append(example)
            seen |= labels
    return chosen


def row_pieces(input_ids, attention_mask) -> list[tuple[int, ...]]:
    """The real (unpadded) piece ids of every row of a decoder call."""
    ids = input_ids.detach().cpu().numpy().astype("int64")
    mask = attention_mask.detach().cpu().numpy() > 0
    return [tuple(int(i) for i in row[keep]) for row, keep in zip(ids, mask, strict=True)]


def fingerprint(rows: list[tuple[int, ...]]) -> str:
    """Row count and a hash of the rows' real piece ids, in any order: both arms must feed the same
    rows, in one padded call (plain) or in length-ordered calls (spaCy, ``order_by_length``)."""
    digest = hashlib.sha1(repr(sorted(rows)).encode()).hexdigest()[:16]
    return f"{len(rows)} rows:{digest}"


def preload(args) -> None:
    """Import, before either arm takes its memory baseline, everything that loading
    and training import lazily (peft, bitsandbytes, the model's class), so that
    neither arm's peak counts modules that the other imported beforehand."""
    import importlib

    import peft  # noqa: F401
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    import spacy_unmasked.build
    import spacy_unmasked.pieces  # noqa: F401

    for name in ("bitsandbytes", "transformers.integrations.bitsandbytes", "peft.tuners.lora.bnb"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    MODEL_MAPPING[type(transformers.AutoConfig.from_pretrained(args.model))]


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_threads() -> None:
    import torch

    torch.set_num_threads(1)


# Arm A: the spaCy pipeline -------------------------------------------------------


class SpacyArm:
    """The demo pipeline and a fixed batch of examples."""

    def __init__(self, args):
        import spacy
        from spacy.training import Example

        spacy.util.fix_random_seed(0)
        config = load_config(args)
        self.nlp = nlp = spacy.util.load_model_from_config(config, auto_fill=True)
        references = reference_docs(args, nlp.vocab)
        # as spacy.Corpus.v1 reads a corpus (gold_preproc = false): the text retokenized by the pipeline
        examples = [Example(nlp.make_doc(doc.text), doc) for doc in references]
        self.batch = batch_of(examples, args.batch_size)
        init_examples = covering_subset(examples, args.init_examples)
        preload(args)
        self.rss_before = rss_mb()
        self.max_rss_before = max_rss_mb()
        start = time.perf_counter()
        self.optimizer = nlp.initialize(lambda: init_examples)
        self.setup_seconds = time.perf_counter() - start
        self.max_rss_loaded = max_rss_mb()
        self.transformer = nlp.get_pipe("transformer")
        self.decoder = self.transformer.model.transformer
        self.fingerprint: str | None = None
        self.calls_per_update: int | None = None
        self._rows: list[tuple[int, ...]] = []
        self._calls = 0
        self._hook = self.decoder.register_forward_pre_hook(self._record, with_kwargs=True)
        self.drop = args.drop

    def _record(self, module, args, kwargs):
        self._rows += row_pieces(kwargs["input_ids"], kwargs["attention_mask"])
        self._calls += 1

    def info(self) -> dict:
        ner = self.nlp.get_pipe("ner")
        lora = sum(p.numel() for p in self.decoder.parameters() if p.requires_grad)
        return {
            "embedding_dtype": str(self.decoder.get_input_embeddings().weight.dtype).removeprefix("torch."),
            "trainable_decoder_params": lora,
            "num_layers": len(find_layers(self.decoder)),
            "n_labels": len(ner.move_names),
            "torch_threads": torch_threads(),
            "unmasked": self.nlp.meta.get("unmasked", {}).get("layers"),
            "quantization": self.nlp.meta.get("unmasked", {}).get("quantization"),
        }

    def step(self) -> dict:
        losses: dict[str, float] = {}
        start = time.perf_counter()
        self.nlp.update(self.batch, sgd=self.optimizer, drop=self.drop, losses=losses)
        self.optimizer.step_schedules()  # as spacy train does after every update (learn-rate warm-up)
        seconds = time.perf_counter() - start
        if self.fingerprint is None:  # the first update's decoder calls
            self._hook.remove()
            self.fingerprint, self.calls_per_update = fingerprint(self._rows), self._calls
        loss = losses.get("ner")
        return {
            "seconds": seconds,
            "loss": None if loss is None else float(loss),
            "fingerprint": self.fingerprint,
            "decoder_calls": self.calls_per_update,
        }

    def profile(self, updates: int) -> dict:
        """Timers around the pieces of nlp.update over ``updates`` updates, then one update under cProfile."""
        timers = Timers()
        with instrument_pipeline(self.nlp, timers):
            totals = []
            for _ in range(updates):
                totals.append(self.step()["seconds"])
        breakdown = spacy_breakdown(timers, totals)
        profiler = cProfile.Profile()
        profiler.enable()
        seconds = self.step()["seconds"]
        profiler.disable()
        return {"breakdown": breakdown, "cprofile": cprofile_summary(profiler, seconds)}


def find_layers(model):
    from spacy_unmasked.families import find_decoder

    return find_decoder(model).layers


class Timers:
    """Wall-clock seconds per label, summed over calls."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, label, function):
        """``function`` timed under ``label`` (a string, or a function of the call's arguments giving one)."""

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                name = label(*args, **kwargs) if callable(label) else label
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


class TimedComponent:
    """A pipeline component whose ``update`` and ``finish_update`` are timed (spaCy's
    Cython components take no instance attributes, so the pipeline holds this
    stand-in while profiling)."""

    def __init__(self, component, name: str, timers: Timers):
        self._component = component
        self.update = timers.wrap(f"{name}.update", component.update)
        self.finish_update = timers.wrap(f"{name}.finish_update", component.finish_update)
        self.model = component.model
        self.is_trainable = component.is_trainable

    def __getattr__(self, attribute):
        return getattr(self._component, attribute)


@contextlib.contextmanager
def instrument_pipeline(nlp, timers: Timers):
    """Wrap the parts of one nlp.update of transformer + ner in timers; undone on exit."""
    import spacy.language
    import torch

    import spacy_unmasked.layers.model as layer_module

    transformer = nlp.get_pipe("transformer")
    shim, decoder = transformer.model.shim, transformer.model.transformer
    listener = transformer.listeners[-1]
    patches = [
        (layer_module, "encode_spans", "encode_spans"),
        (layer_module, "_check_finite", lambda tensor, what: f"_check_finite[{what.split()[1]}]"),
        (torch.autograd, "backward", "torch.autograd.backward"),
        (spacy.language, "_copy_examples", "_copy_examples"),
        (shim, "finish_update", "shim.finish_update"),
    ]
    # (owner, attribute, original, whether the owner itself held it rather than its class)
    originals = [(owner, name, getattr(owner, name), name in vars(owner)) for owner, name, _ in patches]
    for owner, attribute, label in patches:
        setattr(owner, attribute, timers.wrap(label, getattr(owner, attribute)))
    components = list(nlp._components)
    nlp._components[:] = [(name, TimedComponent(proc, name, timers)) for name, proc in components]
    receive = listener.receive

    def timed_receive(batch_id, outputs, backprop):
        return receive(batch_id, outputs, timers.wrap("transformer backprop", backprop))

    listener.receive = timed_receive
    started: list[float] = []

    def before(module, args, kwargs):
        started.append(time.perf_counter())

    def after(module, args, kwargs, output):
        timers.seconds["decoder forward"] += time.perf_counter() - started.pop()
        timers.calls["decoder forward"] += 1

    hooks = [
        decoder.register_forward_pre_hook(before, with_kwargs=True),
        decoder.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield timers
    finally:
        for hook in hooks:
            hook.remove()
        del listener.receive
        nlp._components[:] = components
        for owner, attribute, original, own in reversed(originals):
            if own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)  # back to the class's method


def spacy_breakdown(timers: Timers, totals: list[float]) -> dict:
    """Exclusive seconds per update of each part of nlp.update, and its share of the update."""
    n = len(totals)
    t = {key: value / n for key, value in timers.seconds.items()}
    total = sum(totals) / n
    forward, backward = t.get("decoder forward", 0.0), t.get("torch.autograd.backward", 0.0)
    finite_out, finite_grad = t.get("_check_finite[transformer's]", 0.0), t.get("_check_finite[gradient]", 0.0)
    encode = t.get("encode_spans", 0.0)
    trf_update, trf_backprop = t.get("transformer.update", 0.0), t.get("transformer backprop", 0.0)
    ner_update = t.get("ner.update", 0.0)
    optimizer = t.get("shim.finish_update", 0.0)
    parts = {
        "decoder forward (peft model call)": forward,
        "decoder backward (torch.autograd.backward)": backward,
        "tokenize + align (pieces.encode_spans)": encode,
        "finiteness check of outputs (layers/model.py _check_finite)": finite_out,
        "finiteness check of gradient (layers/model.py _check_finite)": finite_grad,
        "transformer forward glue (spans, tensors, FullTransformerBatch, split_by_doc)": trf_update
        - forward
        - encode
        - finite_out,
        "transformer backprop glue (unsplit_by_doc, xp2torch, shim param scan)": trf_backprop - backward - finite_grad,
        "ner (parser forward/backward, oracle, listener pooling)": ner_update - trf_backprop,
        "thinc optimizer on the LoRA weights (PyTorchShim.finish_update)": optimizer,
        "transformer.finish_update other": t.get("transformer.finish_update", 0.0) - optimizer,
        "ner optimizer (ner.finish_update)": t.get("ner.finish_update", 0.0),
        "spaCy copies the examples (language._copy_examples)": t.get("_copy_examples", 0.0),
    }
    parts["other (Language.update)"] = total - sum(parts.values())
    rows = {
        name: {"seconds": seconds, "percent": 100.0 * seconds / total if total else 0.0}
        for name, seconds in parts.items()
    }
    outside = total - forward - backward
    return {
        "updates": n,
        "seconds_per_update": total,
        "outside_decoder_seconds": outside,
        "outside_decoder_percent": 100.0 * outside / total if total else 0.0,
        "parts": rows,
        "calls_per_update": {key: value / n for key, value in timers.calls.items()},
    }


def cprofile_summary(profiler: cProfile.Profile, seconds: float, top: int = 25) -> dict:
    """The functions with the most own time in one profiled update."""
    stats = pstats.Stats(profiler).stats
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.items():
        where = filename
        for marker in ("site-packages/", str(ROOT) + "/"):
            if marker in where:
                where = where.split(marker, 1)[1]
        rows.append(
            {"function": function, "where": f"{where}:{line}", "calls": calls, "own_s": own, "cumulative_s": cumulative}
        )
    rows.sort(key=lambda row: -row["own_s"])
    return {"profiled_update_seconds": seconds, "top_own_time": rows[:top]}


# Arm B: plain PyTorch + PEFT ------------------------------------------------------


class PlainArm:
    """The same decoder with LoRA, unmasked, a linear token head and AdamW."""

    def __init__(self, args):
        import spacy
        import torch
        import transformers
        from peft import LoraConfig, get_peft_model
        from spacy_transformers.span_getters import get_strided_spans

        from spacy_unmasked import unmask
        from spacy_unmasked.hub import load_tokenizer, native_bfloat16, truncate_config
        from spacy_unmasked.pieces import encode_spans
        from spacy_unmasked.quantization import compute_dtype
        from spacy_unmasked.settings import QuantizationSettings

        torch.manual_seed(0)
        config = load_config(args)
        block = config["components"]["transformer"]["model"]
        nlp = spacy.blank(config["nlp"]["lang"])  # the demo's tokenizer (spacy.Tokenizer.v1)
        references = reference_docs(args, nlp.vocab)
        labels = {ent.label_ for doc in references for ent in doc.ents}
        self.n_labels = 4 * len(labels) + 1  # BILUO tags
        # the pieces the pipeline feeds its decoder, encoded once: the pipeline's own encoder on its own spans
        tokenizer = load_tokenizer(args.model, **block.get("tokenizer_config", {}))
        docs = [nlp.make_doc(doc.text) for doc in batch_of(references, args.batch_size)]
        spans = get_strided_spans(docs, window=block["get_spans"]["window"], stride=block["get_spans"]["stride"])
        encoded = encode_spans(
            tokenizer, spans, max_length=block["max_length"], add_bos=block["add_bos"], repeat=block.get("repeat", 0)
        )
        self.input_ids = torch.from_numpy(encoded.wordpieces.input_ids)
        self.attention_mask = torch.from_numpy(encoded.wordpieces.attention_mask)
        preload(args)
        self.rss_before = rss_mb()
        self.max_rss_before = max_rss_mb()
        start = time.perf_counter()
        hf_config = transformers.AutoConfig.from_pretrained(args.model)
        if args.num_layers is not None:
            truncate_config(hf_config, args.num_layers)
        hf_config.use_cache = False
        if block["torch_dtype"] == "auto":
            dtype = torch.bfloat16 if native_bfloat16(torch.device("cpu")) else torch.float32
        else:
            dtype = getattr(torch, block["torch_dtype"])
        kwargs = {"config": hf_config, "torch_dtype": dtype, "attn_implementation": block["attn_implementation"]}
        quantization = block.get("quantization")
        if quantization:
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=quantization["quant_type"],
                bnb_4bit_use_double_quant=quantization["double_quant"],
                bnb_4bit_compute_dtype=compute_dtype(
                    QuantizationSettings(**{k: v for k, v in quantization.items() if not k.startswith("@")}),
                    native_bfloat16=native_bfloat16(torch.device("cpu")),
                ),
            )
            kwargs["device_map"] = {"": "cpu"}
        model = transformers.AutoModel.from_pretrained(args.model, **kwargs)
        for module in model.modules():  # as spacy_unmasked.quantization.keep_4bit_layout: one 4-bit layout
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        lora = block["lora"]
        lora_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
            bias="none",
        )
        self.model = get_peft_model(model, lora_config)
        self.handle = unmask(self.model, block["unmask"])
        self.model.train()
        hidden = hf_config.hidden_size
        self.head = torch.nn.Linear(hidden, self.n_labels)
        targets = torch.randint(0, self.n_labels, self.input_ids.shape)
        self.targets = targets.masked_fill(self.attention_mask == 0, -100)
        self.params = [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-3, weight_decay=0.0)
        self.setup_seconds = time.perf_counter() - start
        self.max_rss_loaded = max_rss_mb()
        self.phases: dict[str, list[float]] = defaultdict(list)

    def info(self) -> dict:
        return {
            "embedding_dtype": str(self.model.get_input_embeddings().weight.dtype).removeprefix("torch."),
            "trainable_decoder_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "num_layers": len(find_layers(self.model)),
            "n_labels": self.n_labels,
            "torch_threads": torch_threads(),
            "unmasked": list(self.handle.layers),
            "fingerprint": fingerprint(row_pieces(self.input_ids, self.attention_mask)),
        }

    def step(self) -> dict:
        import torch

        clock = [time.perf_counter()]
        output = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False)
        clock.append(time.perf_counter())
        logits = self.head(output.last_hidden_state.float())
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, self.n_labels), self.targets.view(-1), ignore_index=-100
        )
        clock.append(time.perf_counter())
        loss.backward()
        clock.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clock.append(time.perf_counter())
        names = ("decoder forward", "head + loss", "decoder backward", "clip + AdamW + zero_grad")
        phases = dict(zip(names, (b - a for a, b in itertools.pairwise(clock)), strict=True))
        for name, seconds in phases.items():
            self.phases[name].append(seconds)
        return {"seconds": clock[-1] - clock[0], "loss": float(loss.detach())}

    def profile(self, updates: int) -> dict:
        """The split of the plain update (median seconds over the timed updates)."""
        self.phases.clear()
        totals = [self.step()["seconds"] for _ in range(updates)]
        total = statistics.median(totals)
        parts = {name: statistics.median(values) for name, values in self.phases.items()}
        outside = total - parts["decoder forward"] - parts["decoder backward"]
        return {
            "breakdown": {
                "updates": updates,
                "seconds_per_update": total,
                "outside_decoder_seconds": outside,
                "outside_decoder_percent": 100.0 * outside / total if total else 0.0,
                "parts": {
                    name: {"seconds": seconds, "percent": 100.0 * seconds / total if total else 0.0}
                    for name, seconds in parts.items()
                },
            }
        }


# The child process: one arm, driven over a pipe -----------------------------------


def serve(args) -> None:
    """Build one arm, then answer the parent's commands (``step``, ``profile N``,
    ``finish``) with one JSON line each on the original stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to the log, not into the protocol
    set_threads()
    random.seed(0)
    arm = (SpacyArm if args.arm == "spacy" else PlainArm)(args)
    protocol.write(json.dumps({"event": "ready", "info": arm.info(), "setup_seconds": arm.setup_seconds}) + "\n")
    peak = None
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "step":
            reply = arm.step()
        elif command == "profile":
            peak = peak if peak is not None else max_rss_mb()
            reply = arm.profile(int(rest[0]))
        elif command == "finish":
            peak = peak if peak is not None else max_rss_mb()
            reply = {
                "rss_before_mb": arm.rss_before,
                "max_rss_before_mb": arm.max_rss_before,
                "max_rss_loaded_mb": arm.max_rss_loaded,
                "peak_rss_mb": peak,
                "peak_increase_mb": peak - arm.rss_before,
                "max_rss_end_mb": max_rss_mb(),
            }
            protocol.write(json.dumps(reply) + "\n")
            return
        else:
            raise ValueError(f"unknown command {line!r}")
        protocol.write(json.dumps(reply) + "\n")


class Child:
    """A child process running one arm."""

    def __init__(self, args, mode: str, arm: str, log_dir: Path):
        self.name = f"{mode}/{arm}"
        self.log_path = log_dir / f"{mode}-{arm}.log"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--arm",
            arm,
            "--quant",
            mode,
            "--model",
            args.model,
            *(["--config", str(args.config)] if args.config else []),
            "--corpus",
            str(args.corpus),
            "--batch-size",
            str(args.batch_size),
            "--init-examples",
            str(args.init_examples),
            "--drop",
            str(args.drop),
            "--num-layers",
            "null" if args.num_layers is None else str(args.num_layers),
        ]
        env = {**os.environ, **dict.fromkeys(THREAD_ENV, "1"), "TOKENIZERS_PARALLELISM": "false"}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT
            )

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            tail = self.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.send(command)
        return self.receive()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run(args) -> dict:
    """Start every (mode, arm) process, interleave their updates, collect the figures."""
    modes = ("lora", "qlora") if args.mode == "both" else (args.mode,)
    keys = [(mode, arm) for mode in modes for arm in ARMS]
    log_dir = Path(tempfile.mkdtemp(prefix="bench_train_logs_"))
    children = {key: Child(args, *key, log_dir) for key in keys}
    load = [os.getloadavg()[0]]
    try:
        ready = {key: child.receive() for key, child in children.items()}
        log("ready: " + ", ".join(f"{m}/{a} {r['setup_seconds']:.1f}s" for (m, a), r in ready.items()))
        seconds: dict[tuple, list[float]] = defaultdict(list)
        losses: dict[tuple, list] = defaultdict(list)
        fingerprints: dict[tuple, str | None] = {}
        decoder_calls: dict[tuple, int] = {}
        for round_ in range(args.warmup + args.updates):
            order = keys if round_ % 2 == 0 else keys[::-1]
            last = {}
            for key in order:
                reply = last[key] = children[key].ask("step")
                if round_ >= args.warmup:
                    seconds[key].append(reply["seconds"])
                losses[key].append(reply["loss"])
                if reply.get("fingerprint"):
                    fingerprints[key] = reply["fingerprint"]
                if reply.get("decoder_calls"):
                    decoder_calls[key] = reply["decoder_calls"]
            load.append(os.getloadavg()[0])
            done = f"round {round_ + 1}/{args.warmup + args.updates}"
            log(f"{done}: " + ", ".join(f"{m}/{a} {last[(m, a)]['seconds']:.3f}s" for m, a in keys))
        profiles = {}
        if args.profile_updates:
            for key in keys:
                profiles[key] = children[key].ask(f"profile {args.profile_updates}")
        memory = {key: children[key].ask("finish") for key in keys}
        for child in children.values():
            child.process.wait(timeout=60)
    finally:
        for child in children.values():
            child.kill()
    shutil.rmtree(log_dir, ignore_errors=True)
    results: dict = {}
    for mode in modes:
        row: dict = {}
        for arm in ARMS:
            key = (mode, arm)
            row[arm] = {
                "seconds": seconds[key],
                "median_s": statistics.median(seconds[key]),
                "losses": losses[key],
                **memory[key],
                **ready[key]["info"],
                "setup_seconds": ready[key]["setup_seconds"],
                **profiles.get(key, {}),
            }
        row["spacy"]["fingerprint"] = fingerprints.get((mode, "spacy"))
        row["spacy"]["decoder_calls_per_update"] = decoder_calls.get((mode, "spacy"))  # length ordering
        row["same_inputs"] = row["spacy"]["fingerprint"] == row["plain"]["fingerprint"]
        row["time_ratio"] = row["spacy"]["median_s"] / row["plain"]["median_s"]
        row["memory_ratio"] = row["spacy"]["peak_increase_mb"] / row["plain"]["peak_increase_mb"]
        row["peak_rss_ratio"] = row["spacy"]["peak_rss_mb"] / row["plain"]["peak_rss_mb"]
        if "breakdown" in row["spacy"] and "breakdown" in row["plain"]:
            # The same decoder work costs the same in both arms (same model, same pieces), but two
            # processes on a shared machine run it at different speeds; this ratio takes the decoder
            # time from the plain arm for both and compares only what each loop adds around it.
            plain, spacy_ = row["plain"]["breakdown"], row["spacy"]["breakdown"]
            decoder = plain["seconds_per_update"] - plain["outside_decoder_seconds"]
            row["overhead_ratio"] = (decoder + spacy_["outside_decoder_seconds"]) / plain["seconds_per_update"]
        results[mode] = row
    return {
        "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": 1,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average": {"start": load[0], "end": load[-1], "median": statistics.median(load)},
        },
        "settings": {
            "model": args.model_label,
            "num_layers": args.num_layers,
            "batch_size": args.batch_size,
            "updates": args.updates,
            "warmup": args.warmup,
            "corpus": str(args.corpus),
            "config": str(args.config or f"{DEFAULT_CONFIG} (LoRA), {QLORA_CONFIG} (QLoRA)"),
        },
        "modes": results,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Output --------------------------------------------------------------------------


def print_table(results: dict) -> None:
    settings, machine = results["settings"], results["machine"]
    print(
        f"\nOne update of transformer + ner, batch {settings['batch_size']}, {settings['model']}, "
        f"num_layers {settings['num_layers']}; median of {settings['updates']} after {settings['warmup']} warm-up; "
        f"{machine['cpus']} CPU cores, 1 torch thread, load {machine['load_average']['median']:.1f}"
    )
    header = f"{'mode':6} {'arm':6} {'s/update':>9} {'peak RSS MiB':>13} {'peak +MiB':>10} {'outside decoder':>16}"
    print(header)
    print("-" * len(header))
    for mode, row in results["modes"].items():
        for arm in ARMS:
            data = row[arm]
            outside = data.get("breakdown", {})
            share = f"{outside['outside_decoder_percent']:.1f}%" if outside else "-"
            print(
                f"{mode:6} {arm:6} {data['median_s']:9.3f} {data['peak_rss_mb']:13.0f} "
                f"{data['peak_increase_mb']:10.0f} {share:>16}"
            )
        print(
            f"{mode:6} {'A/B':6} {row['time_ratio']:9.2f}x {row['peak_rss_ratio']:12.2f}x {row['memory_ratio']:9.2f}x"
            f"   same inputs: {row['same_inputs']}"
        )
        if "overhead_ratio" in row:
            print(
                f"{mode:6} {'A/B':6} {row['overhead_ratio']:9.3f}x  same decoder time, only the costs around it differ"
            )
    for mode, row in results["modes"].items():
        breakdown = row["spacy"].get("breakdown")
        if not breakdown:
            continue
        print(
            f"\n{mode}: spaCy update split ({breakdown['updates']} instrumented updates, "
            f"{breakdown['seconds_per_update']:.3f} s each)"
        )
        for name, part in sorted(breakdown["parts"].items(), key=lambda item: -item[1]["seconds"]):
            print(f"  {part['seconds']:8.4f} s {part['percent']:6.1f}%  {name}")
        plain = row["plain"].get("breakdown")
        if plain:
            print(f"{mode}: plain update split ({plain['seconds_per_update']:.3f} s)")
            for name, part in plain["parts"].items():
                print(f"  {part['seconds']:8.4f} s {part['percent']:6.1f}%  {name}")
        top = row["spacy"].get("cprofile", {}).get("top_own_time", [])[:12]
        if top:
            print(f"{mode}: cProfile, own time in one update")
            for entry in top:
                print(f"  {entry['own_s']:8.4f} s {entry['calls']:6d}x  {entry['function']}  {entry['where']}")


# Command line --------------------------------------------------------------------


def optional_int(value: str) -> int | None:
    return None if value.lower() in ("null", "none", "") else int(value)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help='a Hugging Face folder, or "tiny" (a tiny random Llama)')
    parser.add_argument("--corpus", default=None, help='a .spacy file of training docs, or "builtin" (tests.helpers)')
    parser.add_argument("--config", type=Path, default=None, help="default: configs/ner.cfg, ner_qlora.cfg for QLoRA")
    parser.add_argument("--mode", choices=("lora", "qlora", "both"), default="both")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--num-layers", type=optional_int, default=DEMO_NUM_LAYERS, help='decoder blocks kept ("null": all)'
    )
    parser.add_argument("--profile-updates", type=int, default=2, help="instrumented updates after timing (0: none)")
    parser.add_argument(
        "--init-examples",
        type=int,
        default=32,
        help="initialize on this many docs, plus one per missing label (0: all)",
    )
    parser.add_argument("--drop", type=float, default=0.1, help="dropout of nlp.update (training.dropout)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quant", choices=("lora", "qlora"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.corpus is None:
        args.corpus = str(DEFAULT_CORPUS) if DEFAULT_CORPUS.exists() else "builtin"
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.arm is not None:
        serve(args)
        return None
    args.model_label = args.model
    tiny_dir = None
    if args.model == "tiny":
        from tests.helpers import save_tiny_pretrained

        tiny_dir = Path(tempfile.mkdtemp(prefix="bench_train_tiny_"))
        args.model = str(save_tiny_pretrained(tiny_dir / "tiny", "llama", num_hidden_layers=4))
        if args.num_layers is not None and args.num_layers > 4:
            args.num_layers = None  # the tiny model has 4 blocks: keep them all
    try:
        results = run(args)
    finally:
        if tiny_dir is not None:
            shutil.rmtree(tiny_dir, ignore_errors=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return results


if __name__ == "__main__":
    main()
