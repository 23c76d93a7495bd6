"""Evaluate a pipeline on a .spacy file: spaCy's scores and the paper's strict
span F1 (seqeval-equivalent), overall and per label, written as JSON."""

import json
import time
from pathlib import Path

import spacy
import typer
from spacy.scorer import Scorer
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from spacy_unmasked.evaluation import doc_iob2_tags, strict_span_scores


def main(model: Path, data: Path, output: Path, name: str = typer.Option("", help="Label of this run in reports")):
    """Score MODEL on DATA and write metrics JSON to OUTPUT."""
    nlp = spacy.load(model)
    gold_docs = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    # Keep the gold tokenization so that strict span scores compare tag for tag.
    unlabelled = [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in gold_docs]
    start = time.perf_counter()
    predicted = list(nlp.pipe(unlabelled, batch_size=32))
    seconds = time.perf_counter() - start
    scores = Scorer(nlp).score([Example(p, g) for p, g in zip(predicted, gold_docs, strict=True)])
    strict = strict_span_scores([doc_iob2_tags(d) for d in gold_docs], [doc_iob2_tags(d) for d in predicted])
    metrics = {
        "name": name or model.parent.name,
        "model": str(model),
        "data": str(data),
        "docs": len(gold_docs),
        "words_per_second": sum(len(d) for d in gold_docs) / seconds,
        "strict_span": strict,
        "spacy": {k: v for k, v in scores.items() if k.startswith(("ents", "spans"))},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2), encoding="utf8")
    print(
        f"{metrics['name']}: strict span F1 {100 * strict['f']:.1f} (P {100 * strict['p']:.1f}, "
        f"R {100 * strict['r']:.1f}) on {len(gold_docs)} docs"
    )
    for label, s in strict["per_type"].items():
        print(f"  {label:14} P {100 * s['p']:5.1f}  R {100 * s['r']:5.1f}  F {100 * s['f']:5.1f}  n={s['support']}")


if __name__ == "__main__":
    typer.run(main)
