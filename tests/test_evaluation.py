"""scripts/evaluate.py: spaCy's Scorer for ents and spans, checked against seqeval
(strict IOB2) as an independent oracle, and its JSON, table and displaCy outputs."""

import json
import re

import pytest
import spacy
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from .helpers import TRAIN, lora, make_nlp, train
from .scripts import load_script

GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC", "O"],
    ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
    ["O", "O", "B-LOC", "I-LOC", "O"],
    ["B-MISC", "O", "B-PER", "I-PER", "I-PER"],
    ["B-LOC", "O", "O", "O", "B-ORG"],
]
PRED = [
    ["B-PER", "I-PER", "O", "B-ORG", "O"],  # one right, one wrong label
    ["B-ORG", "I-ORG", "O", "O", "B-PER"],  # boundary error, one right
    ["O", "O", "I-LOC", "I-LOC", "O"],  # invalid I- start: no span in strict mode
    ["B-MISC", "O", "B-PER", "I-PER", "I-LOC"],  # type switch ends the span
    ["O", "O", "B-MISC", "O", "B-ORG"],  # a label the gold of this doc lacks; MISC right elsewhere
]
STRICT = {"mode": "strict", "scheme": IOB2, "output_dict": True, "zero_division": 0}


@pytest.fixture(scope="module")
def evaluate():
    return load_script("evaluate")


def valid_iob2(tags: list[str]) -> list[str]:
    """Drop I- tags that do not continue a span of their type (spaCy docs hold valid spans only)."""
    out: list[str] = []
    for tag in tags:
        keep = not tag.startswith("I-") or (out and out[-1] != "O" and out[-1][2:] == tag[2:])
        out.append(tag if keep else "O")
    return out


def iob2_tags(spans, length: int) -> list[str]:
    """IOB2 tags from (start, end, label) spans: the oracle's view of a doc."""
    tags = ["O"] * length
    for start, end, label in spans:
        tags[start:end] = [f"B-{label}"] + [f"I-{label}"] * (end - start - 1)
    return tags


def tag_examples(key: str | None) -> list[Example]:
    """GOLD/PRED as docs: entities, or the span group KEY."""
    vocab = spacy.blank("en").vocab
    examples = []
    for gold, pred in zip(GOLD, PRED):
        words = [f"w{i}" for i in range(len(gold))]
        gold_doc = Doc(vocab, words=words, ents=gold)
        pred_doc = Doc(vocab, words=words, ents=valid_iob2(pred))
        if key is not None:
            for doc in (gold_doc, pred_doc):
                doc.spans[key] = list(doc.ents)
                doc.ents = []
        examples.append(Example(pred_doc, gold_doc))
    return examples


def assert_equals_seqeval(scores: dict, gold: list[list[str]], pred: list[list[str]]) -> None:
    """Overall (micro) and per-label P, R, F1 and support equal seqeval's strict IOB2 figures."""
    report = classification_report(gold, pred, **STRICT)
    assert scores["p"] == pytest.approx(report["micro avg"]["precision"])
    assert scores["r"] == pytest.approx(report["micro avg"]["recall"])
    assert scores["f"] == pytest.approx(report["micro avg"]["f1-score"])
    assert scores["support"] == report["micro avg"]["support"]
    labels = {k for k in report if not k.endswith("avg")}
    assert labels <= set(scores["per_type"])
    for label, figures in scores["per_type"].items():
        expected = report.get(label, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        assert figures["p"] == pytest.approx(expected["precision"]), label
        assert figures["r"] == pytest.approx(expected["recall"]), label
        assert figures["f"] == pytest.approx(expected["f1-score"]), label
        assert figures["support"] == expected["support"], label


def test_ents_scores_equal_seqeval_strict_on_fixed_examples(evaluate):
    nlp = spacy.blank("en")
    nlp.add_pipe("ner")
    scores = evaluate.score(nlp, tag_examples(None), ["ents"])["ents"]
    assert_equals_seqeval(scores, GOLD, PRED)  # seqeval reads the raw tags, invalid I- starts included
    assert scores["f"] == pytest.approx(2 * (4 / 8) * (4 / 9) / (4 / 8 + 4 / 9))  # 4 right of 8 predicted, 9 gold
    assert scores["per_type"]["MISC"]["predicted"] == 2 and scores["per_type"]["MISC"]["support"] == 1


def test_spancat_scores_equal_seqeval_strict_on_fixed_examples(evaluate):
    nlp = spacy.blank("en")
    nlp.add_pipe("spancat", config={"spans_key": "sc"})
    scores = evaluate.score(nlp, tag_examples("sc"), ["spans_sc"])["spans_sc"]
    assert_equals_seqeval(scores, GOLD, PRED)


def test_scores_without_gold_annotation_raise(evaluate):
    nlp = spacy.blank("en")
    nlp.add_pipe("spancat", config={"spans_key": "sc"})
    examples = tag_examples(None)  # entities only: no span group "sc" in the gold
    with pytest.raises(ValueError, match="no spans_sc_f: the gold docs carry no spans_sc annotation"):
        evaluate.score(nlp, examples, ["spans_sc"])


def gold_file(nlp, path, *, spans_key: str | None = "sc"):
    """TRAIN as gold docs (entities, and the same spans under SPANS_KEY)."""
    gold = DocBin()
    for text, ents in TRAIN:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(s, e, label=label) for s, e, label in ents]
        if spans_key:
            doc.spans[spans_key] = list(doc.ents)
        gold.add(doc)
    gold.to_disk(path)
    return path


def trained(tiny_llama_dir, path, component: str):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=(component,))
    train(nlp, steps=25, lr=3e-3)
    nlp.to_disk(path)
    return path


def predictions(model, gold_path, key: str | None):
    """The pipeline's own predictions on the gold texts, as (start, end, label) sets per doc, with the gold ones."""
    nlp = spacy.load(model)
    gold_docs = list(DocBin().from_disk(gold_path).get_docs(nlp.vocab))
    docs = nlp.pipe(
        [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in gold_docs]
    )

    def spans(doc):
        group = doc.ents if key is None else doc.spans[key]
        return {(s.start, s.end, s.label_) for s in group}

    return [(spans(g), spans(p), len(g)) for g, p in zip(gold_docs, docs)]


@pytest.fixture(scope="module")
def ner_run(tiny_llama_dir, tmp_path_factory, evaluate):
    tmp = tmp_path_factory.mktemp("ner-eval")
    model = trained(tiny_llama_dir, tmp / "model", "ner")
    data = gold_file(spacy.blank("en"), tmp / "gold.spacy")
    evaluate.main(model, data, tmp / "metrics" / "tiny.json", name="tiny", seed=7, sample=30, batch_size=2)
    return model, data, tmp / "metrics"


def test_evaluate_script_ents_equal_seqeval_on_the_pipeline_predictions(ner_run):
    model, data, out = ner_run
    metrics = json.loads((out / "tiny.json").read_text())
    assert {k: metrics[k] for k in ("name", "model", "data", "docs", "seed", "main")} == {
        "name": "tiny",
        "model": str(model),
        "data": str(data),
        "docs": len(TRAIN),
        "seed": 7,
        "main": "ents",
    }
    assert metrics["words_per_second"] > 0
    assert set(metrics["scores"]) == {"ents"}
    scores = metrics["scores"]["ents"]
    assert scores["f"] > 0.2  # trained on these very sentences
    docs = predictions(model, data, None)
    gold = [iob2_tags(g, n) for g, _, n in docs]
    pred = [iob2_tags(p, n) for _, p, n in docs]
    assert_equals_seqeval(scores, gold, pred)
    assert scores["predicted"] == sum(len(p) for _, p, _ in docs)


def test_evaluate_script_writes_label_table_and_displacy_page(ner_run):
    model, data, out = ner_run
    metrics = json.loads((out / "tiny.json").read_text())
    assert metrics["outputs"] == {"table": "tiny.md", "displacy": "tiny.html"}
    table = (out / "tiny.md").read_text()
    s = metrics["scores"]["ents"]
    assert f"| **all** | {100 * s['p']:.1f} | {100 * s['r']:.1f} | **{100 * s['f']:.1f}** | {s['support']} |" in table
    for label, t in s["per_type"].items():
        cells = [label, *(f"{100 * t[k]:.1f}" for k in "prf"), str(t["support"]), str(t["predicted"])]
        assert "| " + " | ".join(cells) + " |" in table

    page = (out / "tiny.html").read_text()
    docs = predictions(model, data, None)
    marks = re.findall(r"<mark.*?</mark>", page, flags=re.S)
    # every doc has gold entities, so all four are shown: one mark per gold and per predicted entity
    assert len(marks) == sum(len(g) + len(p) for g, p, _ in docs)
    wrong = sum(len(g - p) + len(p - g) for g, p, _ in docs)
    assert sum('class="wrong"' in mark for mark in marks) == wrong
    assert page.count("<section><h2>doc ") == len(TRAIN)
    assert "Barack Obama" in page and "</html>" in page


def test_evaluate_script_scores_a_spancat_pipeline(tiny_llama_dir, tmp_path, evaluate):
    model = trained(tiny_llama_dir, tmp_path / "model", "spancat")
    data = gold_file(spacy.blank("en"), tmp_path / "gold.spacy")
    evaluate.main(model, data, tmp_path / "sc.json", name="sc", seed=None, sample=2, batch_size=32)
    metrics = json.loads((tmp_path / "sc.json").read_text())
    assert metrics["main"] == "spans_sc" and set(metrics["scores"]) == {"spans_sc"}
    assert metrics["seed"] is None
    scores = metrics["scores"]["spans_sc"]
    docs = predictions(model, data, "sc")
    true_pos = sum(len(g & p) for g, p, _ in docs)
    n_pred, n_gold = sum(len(p) for _, p, _ in docs), sum(len(g) for g, _, _ in docs)
    assert true_pos > 0  # a real score, not the 0 of reading doc.ents
    assert scores["p"] == pytest.approx(true_pos / n_pred)
    assert scores["r"] == pytest.approx(true_pos / n_gold)
    for label, t in scores["per_type"].items():
        tp = sum(sum(1 for s in g & p if s[2] == label) for g, p, _ in docs)
        gold_n = sum(sum(1 for s in g if s[2] == label) for g, _, _ in docs)
        assert t["r"] == pytest.approx(tp / gold_n if gold_n else 0.0), label
    page = (tmp_path / "sc.html").read_text()
    assert page.count("<section><h2>doc ") == 2  # the sample size
    assert 'class="spans"' in page

    # gold docs without the "sc" span group: spancat is scored against their entities (same annotation)
    bare = gold_file(spacy.blank("en"), tmp_path / "bare.spacy", spans_key=None)
    evaluate.main(model, bare, tmp_path / "bare.json", name="sc", seed=None, sample=2, batch_size=32)
    assert json.loads((tmp_path / "bare.json").read_text())["scores"] == metrics["scores"]


def test_evaluate_rejects_pipelines_without_span_predictions(tiny_llama_dir, tmp_path, evaluate):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.to_disk(tmp_path / "model")
    data = gold_file(nlp, tmp_path / "gold.spacy")
    with pytest.raises(ValueError, match=r"has no ner or spancat component"):
        evaluate.evaluate(tmp_path / "model", data)
    with pytest.raises(SystemExit, match=r"must end in \.json"):
        evaluate.main(tmp_path / "model", data, tmp_path / "metrics.txt", name="", seed=None, sample=1, batch_size=1)
