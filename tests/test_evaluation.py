import pytest
import spacy
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example

from spacy_unmasked.evaluation import doc_iob2_tags, iob2_spans, strict_span_scores

GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC", "O"],
    ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
    ["O", "O", "B-LOC", "I-LOC", "O"],
    ["B-MISC", "O", "B-PER", "I-PER", "I-PER"],
]
PRED = [
    ["B-PER", "I-PER", "O", "B-ORG", "O"],  # one right, one wrong label
    ["B-ORG", "I-ORG", "O", "O", "B-PER"],  # boundary error, one right
    ["O", "O", "I-LOC", "I-LOC", "O"],  # invalid I- start: no span in strict mode
    ["B-MISC", "O", "B-PER", "I-PER", "I-LOC"],  # type switch ends the span
]


def test_strict_scores_match_seqeval():
    ours = strict_span_scores(GOLD, PRED)
    kwargs = dict(mode="strict", scheme=IOB2)
    assert ours["p"] == pytest.approx(precision_score(GOLD, PRED, **kwargs))
    assert ours["r"] == pytest.approx(recall_score(GOLD, PRED, **kwargs))
    assert ours["f"] == pytest.approx(f1_score(GOLD, PRED, **kwargs))
    report = classification_report(GOLD, PRED, output_dict=True, **kwargs)
    for label, scores in ours["per_type"].items():
        assert scores["f"] == pytest.approx(report[label]["f1-score"])
        assert scores["support"] == report[label]["support"]
    assert iob2_spans(["I-LOC", "I-LOC"]) == set()


def test_strict_scores_match_spacy_scorer_on_docs():
    vocab = spacy.blank("en").vocab
    examples, gold_tags, pred_tags = [], [], []
    for gold, pred in zip(GOLD, PRED, strict=True):
        words = [f"w{i}" for i in range(len(gold))]
        # spaCy docs only hold valid spans; make the prediction valid IOB2 first
        pred_valid = [
            t if not t.startswith("I-") or (i and pred[i - 1][2:] == t[2:]) else "O" for i, t in enumerate(pred)
        ]
        gold_doc = Doc(vocab, words=words, ents=gold)
        pred_doc = Doc(vocab, words=words, ents=pred_valid)
        examples.append(Example(pred_doc, gold_doc))
        gold_tags.append(doc_iob2_tags(gold_doc))
        pred_tags.append(doc_iob2_tags(pred_doc))
    assert gold_tags == GOLD
    spacy_scores = Scorer.score_spans(examples, "ents")
    ours = strict_span_scores(gold_tags, pred_tags)
    assert ours["f"] == pytest.approx(spacy_scores["ents_f"])
    assert ours["p"] == pytest.approx(spacy_scores["ents_p"])
    for label, scores in spacy_scores["ents_per_type"].items():
        assert ours["per_type"][label]["f"] == pytest.approx(scores["f"])


def test_evaluate_script_scores_the_pipeline_predictions(tiny_llama_dir, tmp_path):
    import json

    from spacy.tokens import DocBin

    from .pipelines import TRAIN, lora, make_nlp, train
    from .scripts import load_script

    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner",))
    train(nlp, steps=25, lr=3e-3)
    nlp.to_disk(tmp_path / "model")
    gold = DocBin()
    for text, ents in TRAIN:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(s, e, label=label) for s, e, label in ents]
        gold.add(doc)
    gold.to_disk(tmp_path / "gold.spacy")
    load_script("evaluate").main(tmp_path / "model", tmp_path / "gold.spacy", tmp_path / "metrics.json", name="tiny")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["strict_span"]["f"] > 0.2  # trained on these very sentences
    assert metrics["strict_span"]["f"] == pytest.approx(metrics["spacy"]["ents_f"])
    assert metrics["strict_span"]["p"] == pytest.approx(metrics["spacy"]["ents_p"])
