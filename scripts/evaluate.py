"""Evaluate a pipeline on a .spacy file with spaCy's Scorer: `ents_*` for `ner`,
`spans_<key>_*` for `spancat` (strict span match: exact boundaries and label),
overall and per label. Writes the metrics JSON, a per-label markdown table
(same name, .md) and a displaCy page of gold vs predicted spans (same name, .html)."""

import html
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import spacy
import typer
from spacy import displacy
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example

WRONG = " ✗"
PALETTE = [
    "#7aecec", "#feca74", "#aa9cfc", "#bfeeb7", "#ff9561", "#c887fb", "#9cc9cc", "#e4e7d2",
    "#ffeb80", "#ff8197", "#f0d0ff", "#bfe1d9", "#e4e7ff", "#fdd1a1", "#c5f2ff", "#d9fe74",
]  # fmt: skip


def tasks_of(nlp: Language) -> list[str]:
    """The span tasks the pipeline predicts: ``ents`` (ner) and ``spans_<key>`` (spancat)."""
    tasks = []
    for name, component in nlp.pipeline:
        factory = nlp.get_pipe_meta(name).factory
        if factory in ("ner", "beam_ner") and "ents" not in tasks:
            tasks.append("ents")
        elif factory.startswith("spancat"):
            tasks.append(f"spans_{component.key}")
    if not tasks:
        raise ValueError(
            f"The pipeline ({', '.join(nlp.pipe_names) or 'no components'}) has no ner or spancat component: "
            "evaluate.py scores entity or span predictions only."
        )
    return tasks


def main_task(nlp: Language, tasks: list[str]) -> str:
    """The task whose F1 weighs most in the training config's score weights (the first task otherwise)."""
    weights = nlp.config.get("training", {}).get("score_weights", {}) or {}
    weighted = [(weights.get(f"{task}_f") or 0.0, -i, task) for i, task in enumerate(tasks)]
    return max(weighted)[2]


def spans_of(doc: Doc, task: str) -> list[Span]:
    """The doc's spans for TASK: ``doc.ents`` or ``doc.spans[key]``."""
    if task == "ents":
        return list(doc.ents)
    key = task.removeprefix("spans_")
    return list(doc.spans[key]) if key in doc.spans else []


def add_gold_span_groups(gold_docs: list[Doc], tasks: list[str]) -> None:
    """Give gold docs that lack a spancat key their entities as that span group (the same annotation)."""
    for task in tasks:
        key = task.removeprefix("spans_")
        if task == "ents" or any(key in doc.spans for doc in gold_docs):
            continue
        if not any(doc.ents for doc in gold_docs):
            raise ValueError(f"The gold docs have neither doc.spans[{key!r}] nor entities to score spancat against.")
        print(f"Gold docs have no doc.spans[{key!r}]: scoring spancat against their entities.")
        for doc in gold_docs:
            doc.spans[key] = list(doc.ents)


def score(nlp: Language, examples: list[Example], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """spaCy's Scorer results per task: p, r, f, gold and predicted counts, and the same per label."""
    raw = Scorer(nlp).score(examples)
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        if raw.get(f"{task}_f") is None:
            raise ValueError(f"spaCy's Scorer returned no {task}_f: the gold docs carry no {task} annotation.")
        gold = Counter(span.label_ for eg in examples for span in spans_of(eg.reference, task))
        pred = Counter(span.label_ for eg in examples for span in spans_of(eg.predicted, task))
        per_label = raw.get(f"{task}_per_type") or {}
        labels = sorted(set(per_label) | set(gold) | set(pred))
        out[task] = {
            "p": raw[f"{task}_p"],
            "r": raw[f"{task}_r"],
            "f": raw[f"{task}_f"],
            "support": sum(gold.values()),
            "predicted": sum(pred.values()),
            "per_type": {
                label: {
                    **{k: per_label.get(label, {}).get(k, 0.0) for k in ("p", "r", "f")},
                    "support": gold[label],
                    "predicted": pred[label],
                }
                for label in labels
            },
        }
    return out


def pct(value: float) -> str:
    """A 0..1 score as a percentage with one decimal."""
    return f"{100 * value:.1f}"


def label_table(metrics: dict[str, Any]) -> str:
    """Markdown: one table per task, overall row first, then one row per label."""
    lines = [
        f"# {metrics['name']}: scores per label",
        "",
        f"`{metrics['model']}` on `{metrics['data']}` ({metrics['docs']} docs). spaCy's Scorer, strict span match "
        "(a span counts only with exact boundaries and label); P, R and F1 in %.",
    ]
    for task, s in metrics["scores"].items():
        title = f"`{task}`" + (" (main score)" if task == metrics["main"] else "")
        lines += ["", f"## {title}", "", "| Label | P | R | F1 | Gold | Predicted |", "|---|---:|---:|---:|---:|---:|"]
        lines.append(
            f"| **all** | {pct(s['p'])} | {pct(s['r'])} | **{pct(s['f'])}** | {s['support']} | {s['predicted']} |"
        )
        for label, t in s["per_type"].items():
            lines.append(
                f"| {label} | {pct(t['p'])} | {pct(t['r'])} | {pct(t['f'])} | {t['support']} | {t['predicted']} |"
            )
    return "\n".join(lines) + "\n"


def manual_record(doc: Doc, spans: list[Span], wrong: set[tuple[int, int, str]], style: str) -> dict[str, Any]:
    """displaCy's manual format for DOC with SPANS; spans in WRONG get a ✗ after their label."""

    def label(span: Span) -> str:
        return span.label_ + (WRONG if (span.start, span.end, span.label_) in wrong else "")

    if style == "ent":
        ents = [{"start": s.start_char, "end": s.end_char, "label": label(s)} for s in spans]
        return {"text": doc.text, "ents": ents, "title": None}
    tokens = [t.text for t in doc]
    items = [{"start_token": s.start, "end_token": s.end, "label": label(s)} for s in spans]
    return {"text": doc.text, "tokens": tokens, "spans": items, "title": None}


def displacy_page(metrics: dict[str, Any], predicted: list[Doc], gold: list[Doc], *, sample: int, seed: int = 0) -> str:
    """An HTML page: for a sample of docs with gold or predicted spans, gold (left) and predicted (right)."""
    task = metrics["main"]
    style = "ent" if task == "ents" else "span"
    with_spans = [
        i for i, (p, g) in enumerate(zip(predicted, gold, strict=True)) if spans_of(p, task) or spans_of(g, task)
    ]
    chosen = sorted(random.Random(seed).sample(with_spans, min(sample, len(with_spans))))
    labels = sorted({s.label_ for i in chosen for doc in (predicted[i], gold[i]) for s in spans_of(doc, task)})
    colors = {}
    for i, label in enumerate(labels):
        colors[label] = colors[label + WRONG] = PALETTE[i % len(PALETTE)]
    options = {"colors": colors}
    s = metrics["scores"][task]
    rows = []
    for i in chosen:
        gold_spans, pred_spans = spans_of(gold[i], task), spans_of(predicted[i], task)
        gold_set = {(x.start, x.end, x.label_) for x in gold_spans}
        pred_set = {(x.start, x.end, x.label_) for x in pred_spans}
        cells = []
        for side, doc, spans, wrong in (
            ("gold", gold[i], gold_spans, gold_set - pred_set),
            ("predicted", predicted[i], pred_spans, pred_set - gold_set),
        ):
            record = manual_record(doc, spans, wrong, style)
            markup = displacy.render(record, style=style, manual=True, options=options, page=False, jupyter=False)
            markup = markup.replace(WRONG.strip(), '<span class="wrong">✗</span>')
            note = f"{len(spans)} span{'s' if len(spans) != 1 else ''}" + (
                f', {len(wrong)} <span class="wrong">✗</span>' if wrong else ""
            )
            cells.append(f'<div class="side"><h3>{side} <small>{note}</small></h3>{markup}</div>')
        rows.append(f'<section><h2>doc {i}</h2><div class="pair">{"".join(cells)}</div></section>')
    title = html.escape(f"{metrics['name']}: gold vs predicted ({task})")
    summary = html.escape(
        f"{metrics['model']} on {metrics['data']}: F1 {pct(s['f'])} (P {pct(s['p'])}, R {pct(s['r'])}) over "
        f"{metrics['docs']} docs. {len(chosen)} of the {len(with_spans)} docs with gold or predicted spans, "
        f"sampled with seed {seed}."
    )
    x = '<span class="wrong">✗</span>'
    legend = (
        f"{x} on a gold span: the model did not predict it exactly; {x} on a predicted span: it is not in the gold."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }} p.summary {{ margin-top: 0; color: #444; }}
section {{ border-top: 1px solid #ddd; padding: 0.3em 0; }}
section h2 {{ font-size: 0.8em; color: #888; margin: 0.2em 0; font-weight: normal; }}
.pair {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }}
.side h3 {{ font-size: 0.85em; margin: 0; text-transform: uppercase; color: #555; }}
.side h3 small {{ text-transform: none; color: #999; font-weight: normal; }}
.wrong {{ color: #c0142b; font-weight: bold; }}
.side .entities, .side .spans {{ line-height: 2.4 !important; padding: 0.2em 0 !important; }}
</style></head>
<body><h1>{title}</h1><p class="summary">{summary}<br>{legend}</p>
{chr(10).join(rows)}
</body></html>
"""


def evaluate(
    model: Path, data: Path, *, name: str = "", seed: int | None = None, batch_size: int = 32
) -> tuple[dict[str, Any], list[Doc], list[Doc]]:
    """Run MODEL over the texts of DATA (gold tokenization) and score it; returns metrics, predicted and gold docs."""
    nlp = spacy.load(model)
    tasks = tasks_of(nlp)
    gold_docs = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    if not gold_docs:
        raise ValueError(f"{data} holds no docs.")
    add_gold_span_groups(gold_docs, tasks)
    # Keep the gold tokenization so that spans compare token for token.
    unlabelled = [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in gold_docs]
    start = time.perf_counter()
    predicted = list(nlp.pipe(unlabelled, batch_size=batch_size))
    seconds = time.perf_counter() - start
    examples = [Example(p, g) for p, g in zip(predicted, gold_docs, strict=True)]
    metrics = {
        "name": name or model.parent.name,
        "model": str(model),
        "data": str(data),
        "docs": len(gold_docs),
        "seed": seed,
        "words_per_second": sum(len(d) for d in gold_docs) / seconds,
        "main": main_task(nlp, tasks),
        "scores": score(nlp, examples, tasks),
    }
    return metrics, predicted, gold_docs


def main(
    model: Path,
    data: Path,
    output: Path,
    name: str = typer.Option("", help="Label of this run in reports"),
    seed: int | None = typer.Option(None, help="Training seed of this pipeline, recorded in the JSON"),
    sample: int = typer.Option(30, help="Docs shown on the displaCy page"),
    batch_size: int = typer.Option(32, help="Docs per nlp.pipe batch"),
):
    """Score MODEL on DATA; write OUTPUT (JSON), OUTPUT.md (per label) and OUTPUT.html (displaCy)."""
    if output.suffix != ".json":
        sys.exit(f"The output {output} must end in .json (the table and the displaCy page are written beside it).")
    try:
        metrics, predicted, gold = evaluate(model, data, name=name, seed=seed, batch_size=batch_size)
    except ValueError as error:
        sys.exit(str(error))
    table, page = output.with_suffix(".md"), output.with_suffix(".html")
    metrics["outputs"] = {"table": table.name, "displacy": page.name}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2), encoding="utf8")
    table.write_text(label_table(metrics), encoding="utf8")
    page.write_text(displacy_page(metrics, predicted, gold, sample=sample), encoding="utf8")
    s = metrics["scores"][metrics["main"]]
    print(
        f"{metrics['name']}: {metrics['main']} F1 {pct(s['f'])} (P {pct(s['p'])}, R {pct(s['r'])}) on "
        f"{metrics['docs']} docs, {metrics['words_per_second']:,.0f} words/s -> {output}, {table.name}, {page.name}"
    )
    for label, t in s["per_type"].items():
        print(f"  {label:14} P {pct(t['p']):>5}  R {pct(t['r']):>5}  F {pct(t['f']):>5}  n={t['support']}")


if __name__ == "__main__":
    typer.run(main)
