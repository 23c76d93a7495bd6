import json
from pathlib import Path

import pytest

from .scripts import load_script


@pytest.fixture(scope="module")
def sweep():
    return load_script("sweep")


def test_bits_expand_to_every_configuration(sweep):
    specs = sweep.expand_specs("bits:4")
    assert len(specs) == 16 and specs[0] == "0000" and specs[-1] == "1111"
    assert sweep.expand_specs("none, 0011,bits:2,0011") == ["none", "0011", "00", "01", "10", "11"]


def test_finished_specs_are_skipped_so_a_sweep_resumes(sweep, tmp_path, monkeypatch, capsys):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for spec in ("0000", "0011"):
        (metrics / f"{spec}.json").write_text(json.dumps({"strict_span": {"f": 0.5}}))
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda command, check: calls.append(command))
    sweep.main(
        Path("c.cfg"),
        Path("corpus"),
        tmp_path / "training",
        metrics,
        specs="0000,0011,1111",
        base_model="m",
        max_steps=5,
        eval_frequency=5,
        num_layers="null",
        seed=0,
        gpu_id=-1,
        test_split="test.spacy",
    )
    assert "0000: metrics exist, skipped" in capsys.readouterr().out
    trained = [c for c in calls if "train" in c]
    assert len(trained) == 1 and '--components.transformer.model.unmask="1111"' in trained[0]
    assert any(str(metrics / "1111.json") in c for c in calls)
