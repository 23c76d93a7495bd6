import json
import os
from pathlib import Path

import pytest
import typer

from .helpers import write_ner_corpus
from .scripts import load_script

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def sweep():
    return load_script("sweep")


def test_bits_expand_to_every_configuration(sweep):
    specs = sweep.expand_specs("bits:4")
    assert len(specs) == 16 and specs[0] == "0000" and specs[-1] == "1111"
    assert sweep.expand_specs("none, 0011,bits:2,0011") == ["none", "0011", "00", "01", "10", "11"]


def test_seeds(sweep):
    assert sweep.parse_seeds(None, 7) == [7]
    assert sweep.parse_seeds("0, 1,2,1", 7) == [0, 1, 2]
    with pytest.raises(typer.BadParameter, match="--seeds takes comma-separated integers such as 0,1,2, not '0,x'"):
        sweep.parse_seeds("0,x", 0)


def fake_runs(sweep, monkeypatch):
    """Replace the subprocesses: record the commands, and let "evaluate" write evaluate.py-like JSON."""
    calls = []

    def run(command, check):
        calls.append(command)
        if command[1].endswith("evaluate.py"):
            Path(command[4]).parent.mkdir(parents=True, exist_ok=True)  # as evaluate.py does
            Path(command[4]).write_text(json.dumps({"name": command[6], "seed": None, "scores": {"f": 0.5}}))

    monkeypatch.setattr(sweep.subprocess, "run", run)
    return calls


def test_finished_runs_are_skipped_so_a_sweep_resumes(sweep, tmp_path, monkeypatch, capsys):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name in ("0000.seed0", "0011.seed0", "0011.seed1"):
        spec, seed = name.split(".seed")
        (metrics / f"{name}.json").write_text(json.dumps({"name": spec, "spec": spec, "seed": int(seed)}))
    # a run killed after evaluate.py wrote its file but before the sweep stamped it: not finished
    (metrics / "0000.seed1.json").write_text(json.dumps({"name": "0000", "seed": None}))
    calls = fake_runs(sweep, monkeypatch)
    done = sweep.sweep(
        Path("c.cfg"),
        Path("corpus"),
        tmp_path / "training",
        metrics,
        specs="0000,0011,1111",
        base_model="m",
        seeds=[0, 1],
        max_steps=5,
        eval_frequency=5,
    )
    out = capsys.readouterr().out
    assert "0000.seed0: metrics exist, skipped" in out and "0011.seed1: metrics exist, skipped" in out
    assert [(d.spec, d.seed) for d in done] == [("0000", 1), ("1111", 0), ("1111", 1)]
    trained = [c for c in calls if "train" in c]
    assert [c[c.index("--output") + 1] for c in trained] == [
        str((tmp_path / "training" / name).resolve()) for name in ("0000.seed1", "1111.seed0", "1111.seed1")
    ]
    assert '--components.transformer.model.unmask="1111"' in trained[2] and "--system.seed=1" in trained[2]
    stamped = json.loads((metrics / "1111.seed1.json").read_text())
    train_seconds = stamped.pop("train_seconds")
    assert train_seconds >= 0
    assert 0 <= stamped.pop("train_cpu_seconds") <= train_seconds * os.cpu_count() + 1
    assert stamped == {
        "name": "1111",
        "seed": 1,
        "scores": {"f": 0.5},
        "spec": "1111",
        "repeat": 0,
        "num_layers": None,
        "max_steps": 5,
    }
    assert sweep.is_finished(metrics / "0000.seed1.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_ner_corpus(tmp_path_factory.mktemp("corpus"))


def adapter(training: Path):
    from safetensors.torch import load_file

    (path,) = (training / "model-best").rglob("adapter.safetensors")
    return load_file(path)


@pytest.mark.slow
def test_ray_sweep_runs_specs_concurrently_with_the_sequential_results(
    sweep, corpus, tiny_llama_dir, tmp_path, monkeypatch
):
    """Two specs as two concurrent Ray tasks (2 CPUs) give the metrics and adapters of the sequential sweep."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray gives a 1-CPU task: the same arithmetic in both modes
    common = dict(specs="0000,0011", base_model=str(tiny_llama_dir), seeds=[3], max_steps=3, eval_frequency=3)
    sequential = sweep.sweep(CONFIGS / "ner.cfg", corpus, tmp_path / "t1", tmp_path / "m1", **common)
    parallel = sweep.sweep(
        CONFIGS / "ner.cfg", corpus, tmp_path / "t2", tmp_path / "m2", **common, use_ray=True, num_cpus=2
    )
    assert len({run.pid for run in parallel}) == 2
    assert max(run.started for run in parallel) < min(run.ended for run in parallel)  # they overlapped
    assert sorted(p.name for p in (tmp_path / "m2").glob("*.json")) == ["0000.seed3.json", "0011.seed3.json"]
    for run in sequential:
        name = f"{run.spec}.seed{run.seed}"
        a, b = (json.loads((tmp_path / m / f"{name}.json").read_text()) for m in ("m1", "m2"))
        assert (b["spec"], b["seed"], b["name"]) == (run.spec, 3, run.spec)
        ignore = {
            "model",
            "words_per_second",
            "train_seconds",
            "train_cpu_seconds",
        }  # the pipeline's folder and the timings differ
        assert {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}
        weights_a, weights_b = adapter(tmp_path / "t1" / name), adapter(tmp_path / "t2" / name)
        assert weights_a.keys() == weights_b.keys()
        assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
    causal, unmasked = adapter(tmp_path / "t2" / "0000.seed3"), adapter(tmp_path / "t2" / "0011.seed3")
    assert any((causal[k] != unmasked[k]).any() for k in causal)  # each task trained its own spec


def test_command_line_seeds_and_seed(sweep, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    calls = fake_runs(sweep, monkeypatch)
    app = typer.Typer()
    app.command()(sweep.main)
    paths = ["c.cfg", "corpus", str(tmp_path / "t"), str(tmp_path / "m")]
    result = CliRunner().invoke(app, [*paths, "--specs", "0011", "--base-model", "m", "--seeds", "4,5"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*paths, "--specs", "1111", "--base-model", "m", "--seed", "6"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").glob("*.json")) == [
        "0011.seed4.json",
        "0011.seed5.json",
        "1111.seed6.json",
    ]
    assert [c[-1] for c in calls if "train" in c] == ["--system.seed=4", "--system.seed=5", "--system.seed=6"]


def test_schedule_total_steps_follows_max_steps(sweep):
    configs = Path(__file__).parent.parent / "configs"
    assert sweep.schedule_overrides(configs / "ner.cfg", 150) == ["--training.optimizer.learn_rate.total_steps=150"]
    assert sweep.schedule_overrides(configs / "ner.cfg", 0) == []  # epochs: the config's own value stays
    assert sweep.schedule_overrides(configs / "paper_ner.cfg", 150) == []  # a constant learning rate


def test_variant_labels_set_repeat_and_num_layers(sweep, tmp_path, monkeypatch):
    """0000+r1@15 trains unmask 0000 with repeat 1 on the first 15 blocks; the metrics record the variant
    and the training time; a plain label passes no repeat override."""
    calls = fake_runs(sweep, monkeypatch)
    sweep.sweep(
        Path("c.cfg"),
        Path("corpus"),
        tmp_path / "training",
        tmp_path / "metrics",
        specs="0000+r1@15,0011",
        base_model="base",
        seeds=[0],
        max_steps=10,
        num_layers="20",
        overrides=("components.transformer.model.quantization=null",),
    )
    trains = [c for c in calls if "train" in c]
    assert all("--components.transformer.model.quantization=null" in c for c in trains)
    assert '--components.transformer.model.unmask="0000"' in trains[0]
    assert "--components.transformer.model.repeat=1" in trains[0]
    assert "--components.transformer.model.num_layers=15" in trains[0]
    assert not any("model.repeat" in arg for arg in trains[1])
    assert "--components.transformer.model.num_layers=20" in trains[1]
    stamped = json.loads((tmp_path / "metrics" / "0000+r1@15.seed0.json").read_text())
    assert stamped["spec"] == "0000+r1@15" and stamped["repeat"] == 1 and stamped["num_layers"] == 15
    assert stamped["max_steps"] == 10 and stamped["train_seconds"] >= 0


@pytest.mark.parametrize("label", ["0011+x", "0011+r0", "0011@", "+r1"])
def test_malformed_labels_fail_before_training(sweep, tmp_path, monkeypatch, label):
    calls = fake_runs(sweep, monkeypatch)
    with pytest.raises(typer.BadParameter, match="is not a run label: use <spec>"):
        sweep.sweep(
            Path("c.cfg"), Path("corpus"), tmp_path / "t", tmp_path / "m", specs=label, base_model="b", seeds=[0]
        )
    assert calls == []


def test_children_cpu_seconds_counts_a_finished_child(sweep):
    import subprocess
    import sys

    before = sweep.children_cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert sweep.children_cpu_seconds() - before > 0.1
