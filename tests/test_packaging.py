"""scripts/package.py: the model card in nlp.meta (held-out test scores, base and data
licences, unmasked layers, LoRA), doc_cleaner, and a `spacy package` wheel that installs
into an isolated target, loads by name and carries the card in its README and meta."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import spacy
from spacy.cli.package import generate_readme
from spacy.tokens import DocBin
from transformers import AutoConfig

from spacy_unmasked import resolve_layers

from .helpers import TRAIN, lora, make_nlp, train
from .scripts import load_script

SCRIPTS = Path(__file__).parent.parent / "scripts"
TEXTS = ["Jane Smith visited Berlin.", "Apple Inc hired Barack Obama in Paris last May."]
BASE_CARD = {
    "license": "apache-2.0",
    "base_model": "TinyOrg/tiny-llama",
    "source": "a tiny random Llama built by the tests",
    "gguf": {},
}
SOURCES = [{"name": "Four test sentences", "url": "https://example.org/data", "license": "CC0-1.0"}]

LOAD_AND_PREDICT = """
import json, sys, spacy
nlp = spacy.load("en_tiny_pkg_test")
docs = list(nlp.pipe(sys.argv[1:]))
print(json.dumps({"path": str(nlp.path), "ents": [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs],
                  "features": [d._.trf_data.model_output.last_hidden_state.sum().item() for d in docs]}))
"""


@pytest.fixture(scope="module")
def package():
    return load_script("package")


def trained_with_metrics(tiny_llama_dir, tmp: Path, *, steps: int) -> tuple[Path, Path, Path]:
    """A copied base with a converter-style README, a trained pipeline, its metrics on a test file with sources."""
    base = shutil.copytree(tiny_llama_dir, tmp / "base")
    load_script("convert_gguf").write_readme(base, BASE_CARD)
    nlp = make_nlp(base, lora=lora(), components=("ner",))
    train(nlp, steps=steps, lr=3e-3)
    nlp.to_disk(tmp / "trained")
    data = tmp / "corpus"
    data.mkdir()
    gold = DocBin()
    for text, ents in TRAIN:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(s, e, label=label) for s, e, label in ents]
        gold.add(doc)
    gold.to_disk(data / "test.spacy")
    (data / "sources.json").write_text(json.dumps(SOURCES))
    metrics = tmp / "metrics" / "tiny.json"
    load_script("evaluate").main(
        tmp / "trained", data / "test.spacy", metrics, name="tiny", seed=0, sample=4, batch_size=8
    )
    return base, tmp / "trained", metrics


def expected_layers(base: Path) -> list[int]:
    """The layers "0011" unmasks, from the base's own config (not from the pipeline)."""
    return list(resolve_layers(AutoConfig.from_pretrained(base).num_hidden_layers, "0011"))


def test_model_card_holds_test_scores_licences_and_unmasked_layers(tiny_llama_dir, tmp_path, package):
    base, model, metrics_path = trained_with_metrics(tiny_llama_dir, tmp_path, steps=15)
    metrics = json.loads(metrics_path.read_text())
    nlp = spacy.load(model)
    dev_scores = dict(nlp.meta.get("performance", {}))
    info = package.transformer_info(nlp)
    assert info["layers"] == expected_layers(base) and info["unmask"] == "0011"
    sources = package.read_sources(Path(metrics["data"]).parent / "sources.json")
    assert sources == SOURCES
    card = package.model_card(nlp, info, metrics, base=package.base_card(str(base)), sources=sources, embedded=True)
    ents = metrics["scores"]["ents"]
    assert card["performance"]["ents_f"] == ents["f"] and card["performance"]["ents_p"] == ents["p"]
    assert card["performance"]["ents_per_type"] == {k: {m: v[m] for m in "prf"} for k, v in ents["per_type"].items()}
    assert card["performance"] != dev_scores
    assert card["evaluation"] == {"split": "test", "data": metrics["data"], "docs": len(TRAIN), "main": "ents"}
    assert card["license"] == "apache-2.0"
    assert card["sources"][0]["name"].startswith("TinyOrg/tiny-llama (base model, a tiny random Llama")
    assert card["sources"][0]["license"] == "apache-2.0" and card["sources"][1:] == SOURCES

    readme = generate_readme({**nlp.meta, **card, "name": "tiny", "version": "0.1.0"})
    first, last = expected_layers(base)[0], expected_layers(base)[-1]
    assert f"with layers {first}-{last} of 4 attending in both directions (unmask '0011')" in card["description"]
    assert f"Held-out test ents F1 {100 * ents['f']:.1f}" in card["description"]
    for row in (
        "| **Base model licence** | apache-2.0 |",
        f"| **Bidirectional layers** | {first}-{last} (0-based; the others stay causal) |",
        "| **Fine-tuning** | LoRA r=4, alpha=8, dropout 0.0 on q_proj, v_proj |",
        "| **Quantization** | none |",
        "| [Four test sentences](https://example.org/data) | CC0-1.0 |",
        f"| **all** | {100 * ents['p']:.1f} | {100 * ents['r']:.1f} | **{100 * ents['f']:.1f}** | {ents['support']} |",
    ):
        assert row in readme, row
    for label, t in ents["per_type"].items():
        assert f"| {label} | {100 * t['p']:.1f} | {100 * t['r']:.1f} | {100 * t['f']:.1f} | {t['support']} |" in readme
    # spaCy's Accuracy table shows the test figures
    assert f"| `ENTS_F` | {100 * ents['f']:.2f} |" in readme

    # without meta["unmasked"] the same facts come from the config
    nlp.meta.pop("unmasked")
    fallback = package.transformer_info(nlp)
    assert (fallback["layers"], fallback["unmask"], fallback["num_layers"]) == (expected_layers(base), "0011", 4)
    assert fallback["lora"]["r"] == info["lora"]["r"] == 4


def test_doc_cleaner_clears_features_and_keeps_annotations(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner",))
    train(nlp, steps=10, lr=3e-3)
    before = [nlp(text) for text in TEXTS]
    assert all(doc._.trf_data.model_output.last_hidden_state.size for doc in before)
    nlp.add_pipe("doc_cleaner", last=True)  # what package.py adds without --keep-features
    after = [nlp(text) for text in TEXTS]
    assert [d._.trf_data for d in after] == [None, None]
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in after] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in before
    ]


def test_metrics_errors_name_the_fix(tmp_path, package):
    with pytest.raises(SystemExit, match=r"No metrics at .*run scripts/evaluate\.py"):
        package.read_metrics(tmp_path / "missing.json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"name": "x", "strict_span": {"f": 0.5}}))
    with pytest.raises(SystemExit, match=r"an older evaluate\.py wrote it.*rerun scripts/evaluate\.py"):
        package.read_metrics(old)
    bad = tmp_path / "sources.json"
    bad.write_text(json.dumps({"name": "not a list"}))
    with pytest.raises(SystemExit, match="must hold a JSON list of objects"):
        package.read_sources(bad)


@pytest.mark.slow
def test_wheel_with_embedded_base_loads_by_name_without_the_base(tiny_llama_dir, tmp_path):
    base, model, metrics_path = trained_with_metrics(tiny_llama_dir, tmp_path, steps=8)
    metrics = json.loads(metrics_path.read_text())
    nlp = spacy.load(model)
    docs = list(nlp.pipe(TEXTS))
    expected_ents = [[[e.start_char, e.end_char, e.label_] for e in d.ents] for d in docs]
    expected_features = [float(d._.trf_data.model_output.last_hidden_state.sum()) for d in docs]

    subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "package.py"),
            str(model),
            str(tmp_path / "packages"),
            "--name",
            "tiny_pkg_test",
            "--metrics",
            str(metrics_path),
            "--embed-base",
            "--keep-features",
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "packages").rglob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read("en_tiny_pkg_test-0.1.0.dist-info/METADATA").decode()
        names = archive.namelist()
        (meta_name,) = [n for n in names if n.endswith("en_tiny_pkg_test-0.1.0/meta.json")]
        meta = json.loads(archive.read(meta_name))
    assert "Requires-Dist: spacy-unmasked" in metadata
    assert any(name.endswith("transformer/model/adapter.safetensors") for name in names)
    assert any(name.endswith("transformer/model/weights/model.safetensors") for name in names)
    # the card: README (the wheel's long description) and meta.json
    ents = metrics["scores"]["ents"]
    first, last = expected_layers(base)[0], expected_layers(base)[-1]
    for text in (
        "### Held-out test scores",
        "| **Base model licence** | apache-2.0 |",
        f"| **Bidirectional layers** | {first}-{last} (0-based; the others stay causal) |",
        "| **Base weights in this package** | yes (embedded) |",
        f"| **all** | {100 * ents['p']:.1f} | {100 * ents['r']:.1f} | **{100 * ents['f']:.1f}** | {ents['support']} |",
        "| [Four test sentences](https://example.org/data) | CC0-1.0 |",
    ):
        assert text in metadata, text
    assert meta["performance"]["ents_f"] == ents["f"]
    assert meta["unmasked"]["layers"] == expected_layers(base)
    assert meta["license"] == "apache-2.0" and meta["sources"][1:] == SOURCES
    assert meta["description"].startswith("spaCy pipeline (transformer, ner) on the decoder TinyOrg/tiny-llama")
    assert meta["pipeline"] == ["transformer", "ner"]  # --keep-features: no doc_cleaner

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    shutil.rmtree(base)
    shutil.rmtree(model)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, *TEXTS],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["path"].startswith(str(target))
    assert loaded["ents"] == expected_ents
    assert loaded["features"] == pytest.approx(expected_features, rel=1e-5)
