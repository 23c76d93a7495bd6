"""Span-level strict F1 as the paper reports it (seqeval, mode="strict",
scheme IOB2): a span counts only if its boundaries and label match exactly,
and an ``I-`` tag that does not continue a span of its type starts none."""

from collections import Counter
from collections.abc import Iterable, Sequence

from spacy.tokens import Doc


def iob2_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """Strict IOB2 spans ``(start, end, label)`` of one tag sequence."""
    spans, start, label = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        continues = prefix == "I" and label == kind and start is not None
        if not continues and start is not None:
            spans.add((start, i, label))
            start, label = None, None
        if prefix == "B":
            start, label = i, kind
    return spans


def doc_iob2_tags(doc: Doc) -> list[str]:
    """IOB2 tags of ``doc.ents``."""
    return [f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else "O" for t in doc]


def strict_span_scores(gold: Iterable[Sequence[str]], predicted: Iterable[Sequence[str]]) -> dict:
    """Micro precision, recall and F1 (0-1) over strict IOB2 spans, plus per label."""
    true_pos, n_gold, n_pred = Counter(), Counter(), Counter()
    for gold_tags, pred_tags in zip(gold, predicted, strict=True):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(
                f"Gold and predicted tag sequences differ in length: {len(gold_tags)} vs {len(pred_tags)}."
            )
        gold_spans, pred_spans = iob2_spans(gold_tags), iob2_spans(pred_tags)
        true_pos.update(label for _, _, label in gold_spans & pred_spans)
        n_gold.update(label for _, _, label in gold_spans)
        n_pred.update(label for _, _, label in pred_spans)
    per_type = {
        label: _prf(true_pos[label], n_pred[label], n_gold[label]) for label in sorted(set(n_gold) | set(n_pred))
    }
    return {**_prf(sum(true_pos.values()), sum(n_pred.values()), sum(n_gold.values())), "per_type": per_type}


def _prf(true_pos: int, n_pred: int, n_gold: int) -> dict:
    precision = true_pos / n_pred if n_pred else 0.0
    recall = true_pos / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"p": precision, "r": recall, "f": f1, "support": n_gold}
