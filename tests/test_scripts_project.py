"""project.yml calls the scripts with arguments they accept, and scripts/baseline.py
trains and evaluates a baseline once per seed, resuming where it stopped."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import spacy
import typer
import typer.main
from spacy.tokens import DocBin
from weasel.util import load_project_config

from .helpers import TRAIN
from .scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def script_calls() -> list[tuple[str, str, list[str]]]:
    """(command name, script stem, arguments) of every `python scripts/<x>.py` line in project.yml."""
    config = load_project_config(ROOT)
    calls = []
    for command in config["commands"]:
        for line in command["script"]:
            words = shlex.split(line)
            if words[0] == "python" and words[1].startswith("scripts/") and words[1].endswith(".py"):
                calls.append((command["name"], Path(words[1]).stem, words[2:]))
    return calls


def test_project_yml_script_arguments_parse():
    calls = script_calls()
    used = {stem for _, stem, _ in calls}
    expected = {"evaluate", "package", "baseline", "report", "search_report", "sweep", "convert_gguf", "convert_wnut16"}
    assert expected <= used
    for name, stem, args in calls:
        app = typer.Typer()
        app.command()(load_script(stem).main)
        command = typer.main.get_command(app)
        try:
            command.make_context(stem, list(args))  # parses every option and argument, runs nothing
        except click.UsageError as error:
            pytest.fail(f"project.yml command {name!r}: scripts/{stem}.py rejects {args}: {error.format_message()}")
    evaluate_args = {name: args for name, stem, args in calls if stem == "evaluate"}
    assert "--seed" in evaluate_args["evaluate"]
    package_args = {name: args for name, stem, args in calls if stem == "package"}
    assert all("--metrics" in args for args in package_args.values())
    (search_args,) = [args for name, stem, args in calls if stem == "search"]
    options = ("--budget", "--grace", "--eval-frequency")
    value = {option: int(search_args[search_args.index(option) + 1]) for option in options}
    # ASHA compares trials at evaluations: the search refuses a budget or grace off the evaluation steps
    assert value["--budget"] % value["--eval-frequency"] == 0 and value["--grace"] % value["--eval-frequency"] == 0
    search_config = spacy.util.load_config(ROOT / "configs" / "ner.cfg", interpolate=False)
    assert value["--grace"] > load_script("search").warmup_steps(search_config, {})  # no rung inside the warmup
    seeds = {name: args[args.index("--seeds") + 1] for name, stem, args in calls if "--seeds" in args}
    assert seeds == {"sweep": "0,1,2", "baseline-cnn": "0,1,2", "baseline-encoder": "0,1,2"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus")
    nlp = spacy.blank("en")
    for split in ("train", "dev", "test"):
        db = DocBin()
        for text, ents in TRAIN:
            doc = nlp(text)
            doc.ents = [doc.char_span(s, e, label=label) for s, e, label in ents]
            db.add(doc)
        db.to_disk(path / f"{split}.spacy")
    return path


def run_baseline(corpus: Path, tmp: Path, seeds: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "scripts" / "baseline.py"), str(ROOT / "configs" / "ner_cnn.cfg")]
    command += [str(corpus), str(tmp / "training"), str(tmp / "metrics"), "--run-name", "cnn", "--name", "CNN"]
    command += ["--seeds", seeds, "--max-steps", "4", "--eval-frequency", "2"]
    return subprocess.run(command, capture_output=True, text=True)


def test_baseline_runs_once_per_seed_and_resumes(corpus, tmp_path):
    result = run_baseline(corpus, tmp_path, "3")
    assert result.returncode == 0, result.stderr[-3000:]
    first = tmp_path / "metrics" / "cnn.seed3.json"
    mtime = first.stat().st_mtime_ns

    again = run_baseline(corpus, tmp_path, "3,5")  # 3 is done: only 5 trains
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cnn.seed3: metrics exist, skipped" in again.stdout and "cnn.seed5: metrics exist" not in again.stdout
    assert first.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_path / "metrics").glob("*.json")) == ["cnn.seed3.json", "cnn.seed5.json"]
    for seed in (3, 5):
        metrics = json.loads((tmp_path / "metrics" / f"cnn.seed{seed}.json").read_text())
        assert (metrics["name"], metrics["seed"], metrics["docs"], metrics["main"]) == ("CNN", seed, len(TRAIN), "ents")
        assert metrics["max_steps"] == 4 and metrics["train_seconds"] > 0 and metrics["train_cpu_seconds"] > 0
        assert list(metrics)[-1] == "seed"  # stamped last: a file without it is an unfinished seed
        assert metrics["model"] == str(tmp_path / "training" / f"cnn.seed{seed}" / "model-best")
        config = (tmp_path / "training" / f"cnn.seed{seed}" / "model-best" / "config.cfg").read_text()
        assert f"seed = {seed}\n" in config and "max_steps = 4\n" in config


def test_baseline_rejects_bad_seeds_and_overrides(tmp_path):
    baseline = load_script("baseline")
    assert baseline.parse_seeds("0, 1,1,2") == [0, 1, 2]
    with pytest.raises(typer.BadParameter, match="comma-separated integers such as 0,1,2, not 'a,b'"):
        baseline.parse_seeds("a,b")
    with pytest.raises(typer.BadParameter, match="--override takes KEY=VALUE"):
        baseline.main(
            tmp_path, tmp_path, tmp_path, tmp_path, run_name="x", name="", seeds="0", max_steps=1, eval_frequency=1,
            gpu_id=-1, override=["paths.encoder"],
        )  # fmt: skip
