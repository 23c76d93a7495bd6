"""Build an installable wheel of a trained pipeline with `spacy package`, with a
model card in its meta (which `spacy package` renders into the wheel's README):
base model and licence, data sources and licence, unmasked layers, LoRA and
quantization, and the held-out test scores per label from evaluate.py's JSON."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import spacy
import typer
import yaml
from spacy.language import Language

from spacy_unmasked import embed_base, resolve_layers

UNMASKED_ARCHITECTURE = "spacy-unmasked.UnmaskedTransformer"
SOURCES_FILE = "sources.json"


def transformer_info(nlp: Language) -> dict[str, Any]:
    """What the unmasked transformer is: ``nlp.meta["unmasked"]`` (set when the
    pipeline loads), else read from the pipeline's config."""
    if nlp.meta.get("unmasked"):
        return dict(nlp.meta["unmasked"])
    for name in nlp.pipe_names:
        block = nlp.config["components"][name].get("model", {})
        if str(block.get("@architectures", "")).startswith(UNMASKED_ARCHITECTURE):
            break
    else:
        raise ValueError(
            f"The pipeline ({', '.join(nlp.pipe_names)}) has no component with a {UNMASKED_ARCHITECTURE} model: "
            "package it with `spacy package` directly."
        )
    num_layers = block.get("num_layers")
    if num_layers is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(block["name"], revision=block.get("revision"))
        num_layers = config.num_hidden_layers
    return {
        "base": {"name": block["name"], "revision": block.get("revision")},
        "unmask": block.get("unmask"),
        "layers": list(resolve_layers(num_layers, block.get("unmask"))),
        "num_layers": num_layers,
        "lora": _settings(block.get("lora")),
        "quantization": _settings(block.get("quantization")),
        "torch_dtype": block.get("torch_dtype"),
        "training": block.get("training") or ("frozen" if block.get("freeze_base") else None),
    }


def _settings(block: Any) -> dict[str, Any] | None:
    """A registered-function config block without its registry key."""
    return {k: v for k, v in block.items() if not k.startswith("@")} if isinstance(block, dict) else None


def read_front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a Hugging Face style model card (``---`` ... ``---``), or {}."""
    text = readme.read_text(encoding="utf8") if readme.is_file() else ""
    if not text.startswith("---"):
        return {}
    _, _, rest = text.partition("\n")
    head, found, _ = rest.partition("\n---")
    data = yaml.safe_load(head) if found else None
    return data if isinstance(data, dict) else {}


def base_card(name: str, revision: str | None = None) -> dict[str, Any]:
    """The base's own model card front matter (licence, upstream id, source): from the base
    folder's README.md, or the Hugging Face cache for a hub id; {} when there is none."""
    folder = Path(name)
    if folder.is_dir():
        return read_front_matter(folder / "README.md")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "README.md", revision=revision)
    except Exception:  # not a hub id, or no cache
        return {}
    return read_front_matter(Path(cached)) if isinstance(cached, str) else {}


def read_metrics(path: Path) -> dict[str, Any]:
    """evaluate.py's JSON, checked for the keys the card needs."""
    if not path.is_file():
        sys.exit(f"No metrics at {path}: run scripts/evaluate.py on the held-out test split first.")
    metrics = json.loads(path.read_text(encoding="utf8"))
    if "scores" not in metrics or metrics.get("main") not in metrics["scores"]:
        sys.exit(f"{path} has no 'scores'/'main' keys (an older evaluate.py wrote it): rerun scripts/evaluate.py.")
    return metrics


def read_sources(path: Path | None) -> list[dict[str, Any]]:
    """Data sources as spaCy's meta wants them: a JSON list of {name, url, author, license}."""
    if path is None or not path.is_file():
        return []
    sources = json.loads(path.read_text(encoding="utf8"))
    if not isinstance(sources, list) or not all(isinstance(s, dict) and s.get("name") for s in sources):
        sys.exit(f"{path} must hold a JSON list of objects with at least a 'name' (and url, author, license).")
    return sources


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``'0-2, 5'``."""
    out: list[str] = []
    for index in indices:
        if out and out[-1][1] == index - 1:
            out[-1][1] = index
        else:
            out.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def describe_training(info: dict[str, Any], *, short: bool = False) -> str:
    """LoRA, full fine-tuning or a frozen base, in words."""
    lora = info.get("lora")
    if lora:
        if short:
            return f"LoRA (r={lora.get('r')})"
        targets = ", ".join(lora.get("target_modules") or [])
        return f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout {lora.get('dropout')} on {targets}"
    if info.get("training") == "frozen":
        return "a frozen base" if short else "frozen base (only the task heads are trained)"
    return "full fine-tuning" if short else "full fine-tuning of the base weights"


def describe_quantization(info: dict[str, Any]) -> str:
    """The bitsandbytes settings in words, or 'none'."""
    q = info.get("quantization")
    if not q:
        return "none"
    if q.get("bits") == 4:
        extra = ", double quantization" if q.get("double_quant") else ""
        return f"4-bit {q.get('quant_type', 'nf4')} (bitsandbytes{extra}, compute {q.get('compute_dtype', 'n/a')})"
    return f"{q.get('bits')}-bit (bitsandbytes)"


def model_card(
    nlp: Language,
    info: dict[str, Any],
    metrics: dict[str, Any],
    *,
    base: dict[str, Any],
    sources: list[dict[str, Any]],
    embedded: bool,
    license: str | None = None,
) -> dict[str, Any]:
    """The meta entries of the card: description, license, sources, performance (held-out test), notes."""
    base_name = base.get("base_model") or info["base"]["name"]
    base_license = base.get("license") or "not stated (pass --base-license)"
    layers = info.get("layers") or []
    n = info.get("num_layers")
    task = metrics["main"]
    s = metrics["scores"][task]
    components = ", ".join(c for c in nlp.pipe_names if c != "doc_cleaner")
    data_name = sources[0]["name"] if sources else metrics["data"]
    description = (
        f"spaCy pipeline ({components}) on the decoder {base_name} with layers {_ranges(layers) or 'none'} "
        f"of {n} attending in both directions (unmask {info.get('unmask')!r}), trained with "
        f"{describe_training(info, short=True)} on {data_name}. Held-out test {task} F1 {_pct(s['f'])} "
        f"(P {_pct(s['p'])}, R {_pct(s['r'])}) on {metrics['docs']} docs."
    )
    revision = info["base"].get("revision")
    base_source = {
        "name": f"{base_name} (base model{', ' + base['source'] if base.get('source') else ''})",
        "license": base.get("license"),
    }
    if "/" in str(base_name) and not Path(str(base_name)).exists():
        base_source["url"] = f"https://huggingface.co/{base_name}"
    performance: dict[str, Any] = {}
    for name, scores in metrics["scores"].items():
        performance.update({f"{name}_p": scores["p"], f"{name}_r": scores["r"], f"{name}_f": scores["f"]})
        performance[f"{name}_per_type"] = {k: {m: v[m] for m in "prf"} for k, v in scores["per_type"].items()}
    performance["speed"] = metrics["words_per_second"]

    lines = [
        "### Model card",
        "",
        "| | |",
        "| --- | --- |",
        f"| **Base model** | `{base_name}`{f' (revision `{revision}`)' if revision else ''}, "
        f"loaded from `{info['base']['name']}` |",
        f"| **Base model licence** | {base_license} |",
        f"| **Base weights in this package** | {'yes (embedded)' if embedded else 'no: loaded from the name above'} |",
        f"| **Decoder layers used** | {n} |",
        f"| **Unmask spec** | `{info.get('unmask')}` |",
        f"| **Bidirectional layers** | {_ranges(layers) or 'none'} (0-based; the others stay causal) |",
        f"| **Fine-tuning** | {describe_training(info)} |",
        f"| **Quantization** | {describe_quantization(info)} |",
        f"| **Weights dtype** | {info.get('torch_dtype')} |",
    ]
    if base.get("source"):
        lines.append(f"| **Base weights from** | {base['source']} |")
    lines += ["", "### Data", ""]
    if sources:
        lines += ["| Source | Licence |", "| --- | --- |"]
        for source in sources:
            label = f"[{source['name']}]({source['url']})" if source.get("url") else source["name"]
            lines.append(f"| {label} | {source.get('license') or 'not stated'} |")
    else:
        lines.append(f"Evaluated on `{metrics['data']}`; no sources.json beside it states where the data comes from.")
    lines += [
        "",
        "### Held-out test scores",
        "",
        f"`{metrics['data']}` ({metrics['docs']} docs), a split used neither for training nor for choosing the "
        "checkpoint; spaCy's Scorer, strict span match (exact boundaries and label). The Accuracy table above "
        "shows the same test figures (not the dev scores seen in training).",
    ]
    for name, scores in metrics["scores"].items():
        lines += ["", f"`{name}`", "", "| Label | P | R | F1 | Gold spans |", "| --- | ---: | ---: | ---: | ---: |"]
        lines.append(f"| **all** | {_pct(scores['p'])} | {_pct(scores['r'])} | **{_pct(scores['f'])}** | "
                     f"{scores['support']} |")  # fmt: skip
        for label, t in scores["per_type"].items():
            lines.append(f"| {label} | {_pct(t['p'])} | {_pct(t['r'])} | {_pct(t['f'])} | {t['support']} |")
    return {
        "description": description,
        "license": license or base.get("license") or nlp.meta.get("license") or "",
        "sources": [base_source, *sources],
        "performance": performance,
        "evaluation": {"split": "test", "data": metrics["data"], "docs": metrics["docs"], "main": task},
        "unmasked": info,
        "notes": "\n".join(lines),
    }


def main(
    model: Path,
    output: Path,
    name: str = typer.Option(..., help="Package name without the language prefix, e.g. unmasked_smollm2"),
    version: str = typer.Option("0.1.0"),
    metrics: Path = typer.Option(..., help="evaluate.py's JSON for this pipeline on the held-out test split"),
    sources: Path | None = typer.Option(
        None, help=f"JSON list of data sources; default: {SOURCES_FILE} beside the data"
    ),
    base_license: str | None = typer.Option(None, help="Base model licence, when its README.md does not state it"),
    license: str | None = typer.Option(None, help="Licence of the packaged pipeline (default: the base's)"),
    embed: bool = typer.Option(False, "--embed-base", help="Store the base weights in the wheel"),
    keep_features: bool = typer.Option(False, "--keep-features", help="Keep doc._.trf_data in processed docs"),
):
    """Package MODEL into OUTPUT/<lang>_<name>-<version>/dist/*.whl with a model card, and print its size."""
    scores = read_metrics(metrics)
    if Path(scores["model"]).resolve() != model.resolve():
        print(f"Warning: {metrics} scores {scores['model']}, not {model}: the card quotes that pipeline's scores.")
    nlp = spacy.load(model)
    try:
        info = transformer_info(nlp)
    except ValueError as error:
        sys.exit(str(error))
    base = base_card(info["base"]["name"], info["base"].get("revision"))
    if base_license:
        base["license"] = base_license
    data_sources = read_sources(sources or Path(scores["data"]).parent / SOURCES_FILE)
    if embed:
        embed_base(nlp)
    if not keep_features and "doc_cleaner" not in nlp.pipe_names:
        nlp.add_pipe("doc_cleaner", last=True)  # clears doc._.trf_data and doc.tensor after the listeners
    nlp.meta.update(
        model_card(nlp, info, scores, base=base, sources=data_sources, embedded=embed, license=license),
        name=name,
        version=version,
    )
    if not nlp.meta.get("url"):
        nlp.meta.pop("url", None)  # spaCy's README would render an empty link as the author
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pipeline"
        nlp.to_disk(staged)
        command = [sys.executable, "-m", "spacy", "package", str(staged), str(output)]
        command += ["--name", name, "--version", version, "--build", "wheel", "--force"]
        subprocess.run(command, check=True)
    wheel = next((output / f"{nlp.lang}_{name}-{version}" / "dist").glob("*.whl"))
    size = wheel.stat().st_size / 2**20
    print(f"Built {wheel} ({size:.1f} MiB{', base embedded' if embed else ''})")


if __name__ == "__main__":
    typer.run(main)
