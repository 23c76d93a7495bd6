"""`spacy package` output installs into an isolated target and loads by name."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .pipelines import lora, make_nlp, train

SCRIPTS = Path(__file__).parent.parent / "scripts"
TEXTS = ["Jane Smith visited Berlin.", "Apple Inc hired Barack Obama in Paris last May."]

LOAD_AND_PREDICT = """
import json, sys, spacy
nlp = spacy.load("en_tiny_pkg_test")
docs = list(nlp.pipe(sys.argv[1:]))
print(json.dumps({"path": str(nlp.path), "ents": [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs],
                  "features": [d._.trf_data.model_output.last_hidden_state.sum().item() for d in docs]}))
"""


@pytest.mark.slow
def test_wheel_with_embedded_base_loads_by_name_without_the_base(tiny_llama_dir, tmp_path):
    base = shutil.copytree(tiny_llama_dir, tmp_path / "base")
    nlp = make_nlp(base, lora=lora(), components=("ner",))
    train(nlp, steps=8)
    nlp.to_disk(tmp_path / "trained")
    docs = list(nlp.pipe(TEXTS))
    expected_ents = [[[e.start_char, e.end_char, e.label_] for e in d.ents] for d in docs]
    expected_features = [float(d._.trf_data.model_output.last_hidden_state.sum()) for d in docs]

    subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "package.py"),
            str(tmp_path / "trained"),
            str(tmp_path / "packages"),
            "--name",
            "tiny_pkg_test",
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
    assert "Requires-Dist: spacy-unmasked" in metadata
    assert any(name.endswith("transformer/model/adapter.safetensors") for name in names)
    assert any(name.endswith("transformer/model/weights/model.safetensors") for name in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    shutil.rmtree(base)
    shutil.rmtree(tmp_path / "trained")
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
