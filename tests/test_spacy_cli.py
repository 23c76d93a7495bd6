"""spaCy's own CLI on a trained tiny pipeline: each command's output is checked
against what the pipeline does in-process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.scorer import Scorer
from spacy.tokens import DocBin
from spacy.training import Example

from .helpers import TRAIN, lora, make_nlp, train
from .test_configs import CONFIGS, make_corpus, overrides


def spacy_cli(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "spacy", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0 or not check, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    """A trained transformer + ner + spancat pipeline on disk, and its corpus."""
    root = tmp_path_factory.mktemp("cli")
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner", "spancat"))
    train(nlp, steps=40, lr=3e-3)
    nlp.to_disk(root / "pipeline")
    return root / "pipeline", make_corpus(root / "corpus")


def in_process_scores(pipeline: Path, corpus: Path) -> dict:
    nlp = spacy.load(pipeline)
    gold = list(DocBin().from_disk(corpus).get_docs(nlp.vocab))
    predicted = nlp.pipe([nlp.make_doc(d.text) for d in gold])
    return Scorer(nlp).score([Example(p, g) for p, g in zip(predicted, gold, strict=True)])


@pytest.mark.parametrize("command", [["evaluate"], ["benchmark", "accuracy"]])
def test_evaluate_and_benchmark_accuracy_match_in_process_scores(trained, tmp_path, command):
    pipeline, corpus = trained
    spacy_cli(*command, pipeline, corpus, "--output", tmp_path / "m.json")
    reported = srsly.read_json(tmp_path / "m.json")
    expected = in_process_scores(pipeline, corpus)
    assert reported["ents_f"] == pytest.approx(expected["ents_f"]) and reported["ents_f"] > 0.1
    assert reported["spans_sc_f"] == pytest.approx(expected["spans_sc_f"]) and reported["spans_sc_f"] > 0.05
    assert reported["ents_per_type"].keys() == expected["ents_per_type"].keys() == {"ORG", "PER", "LOC"}


def test_benchmark_speed_reports_words_per_second(trained):
    pipeline, corpus = trained
    out = spacy_cli("benchmark", "speed", pipeline, corpus, "--batches", 30, "--batch-size", 4, "--warmup", 1).stdout
    line = next(line for line in out.splitlines() if "words/s" in line)
    assert float(line.split("words/s")[0].split()[-1].replace(",", "")) > 0, line


def test_apply_jsonl_to_docbin_equals_nlp_pipe(trained, tmp_path):
    pipeline, _ = trained
    texts = [text for text, _ in TRAIN] + ["Angela Merkel met Jane Smith in Paris."]
    srsly.write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    spacy_cli("apply", pipeline, tmp_path / "in.jsonl", tmp_path / "out.spacy", "--text-key", "text")
    nlp = spacy.load(pipeline)
    docs = list(DocBin().from_disk(tmp_path / "out.spacy").get_docs(nlp.vocab))
    expected = list(nlp.pipe(texts))
    assert [d.text for d in docs] == texts
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in docs] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in expected
    ]
    assert any(d.ents for d in docs)


def test_assemble_with_a_sourced_ner_that_replaces_its_listener(trained, tiny_llama_dir, tmp_path):
    """spaCy's documented way to reuse a trained component: source it with
    replace_listeners; the assembled pipeline predicts what the original does."""
    pipeline, _ = trained
    config = f"""
[paths]
source = "{pipeline}"

[nlp]
lang = "en"
pipeline = ["sentencizer", "ner"]

[components]

[components.sentencizer]
factory = "sentencizer"

[components.ner]
source = ${{paths.source}}
replace_listeners = ["model.tok2vec"]
"""
    (tmp_path / "assemble.cfg").write_text(config)
    spacy_cli("assemble", tmp_path / "assemble.cfg", tmp_path / "assembled")
    assembled = spacy.load(tmp_path / "assembled")
    original = spacy.load(pipeline)
    texts = [text for text, _ in TRAIN]
    assert "transformer" not in assembled.pipe_names
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in assembled.pipe(texts)] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in original.pipe(texts)
    ]


def test_debug_data_reads_the_shipped_config(trained, tiny_llama_dir):
    _, corpus = trained
    # it exits 1 here only for the data's own sake: 8 training docs are too few for spaCy's taste
    result = spacy_cli("debug", "data", CONFIGS / "ner.cfg", *overrides(corpus, tiny_llama_dir), check=False)
    out = result.stdout
    assert "Pipeline can be initialized with data" in out and "Corpus is loadable" in out, out + result.stderr[-2000:]
    assert "Training pipeline: transformer, ner" in out and f"{2 * len(TRAIN)} training docs" in out
    assert "Low number of examples to train a new pipeline" in out and "1 error" in out
    assert "3 label(s)" in out


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.cfg")))
def test_init_fill_config_keeps_the_settings_and_is_idempotent(config, tmp_path):
    spacy_cli("init", "fill-config", CONFIGS / config, tmp_path / "once.cfg")
    spacy_cli("init", "fill-config", tmp_path / "once.cfg", tmp_path / "twice.cfg")
    once = spacy.util.load_config(tmp_path / "once.cfg", interpolate=False)
    assert once == spacy.util.load_config(tmp_path / "twice.cfg", interpolate=False)
    original = spacy.util.load_config(CONFIGS / config, interpolate=False)
    for section in ("transformer", "ner", "spancat"):
        block = original["components"].get(section, {}).get("model", {})
        for key, value in block.items():
            if not isinstance(value, dict):
                assert once["components"][section]["model"][key] == value, (section, key)
    if "transformer" in original["components"]:
        arch = once["components"]["transformer"]["model"]["@architectures"]
        assert arch == original["components"]["transformer"]["model"]["@architectures"]
        assert json.dumps(once["components"]["transformer"]["model"].get("lora"))  # LoRA block survives filling
