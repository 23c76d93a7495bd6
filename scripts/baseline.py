"""Train and evaluate a baseline config once per seed, skipping seeds that already
have metrics (so it resumes). Writes ``METRICS_DIR/<run_name>.seed<k>.json``:
evaluate.py's JSON plus "train_seconds" (wall), "train_cpu_seconds" (user + system CPU
time of ``spacy train``), "max_steps" and then "seed", added last and atomically (a file
with an int "seed" is a finished run). scripts/report.py averages it over seeds and counts
its training time in the study's compute."""

import json
import subprocess
import sys
import time
from pathlib import Path

import typer
from sweep import children_cpu_seconds, stamp

SCRIPTS = Path(__file__).resolve().parent


def parse_seeds(seeds: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers such as 0,1,2, not {seeds!r}") from None
    if not values:
        raise typer.BadParameter("--seeds is empty: give at least one seed, e.g. --seeds 0")
    return list(dict.fromkeys(values))


def finished(metrics: Path) -> bool:
    """Whether METRICS is a whole evaluate.py JSON with an int seed."""
    try:
        content = json.loads(metrics.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and isinstance(content.get("seed"), int)


def commands(
    config: Path, corpus: Path, output: Path, metrics: Path, *, name: str, seed: int, settings: dict[str, str]
) -> list[list[str]]:
    """The `spacy train` and evaluate.py command lines of one seed."""
    train = [sys.executable, "-m", "spacy", "train", str(config), "--output", str(output)]
    train += [f"--paths.train={corpus / 'train.spacy'}", f"--paths.dev={corpus / 'dev.spacy'}", f"--system.seed={seed}"]
    train += [f"--{key}={value}" for key, value in settings.items()]
    evaluate = [sys.executable, str(SCRIPTS / "evaluate.py"), str(output / "model-best"), str(corpus / "test.spacy")]
    evaluate += [str(metrics), "--name", name]
    return [train, evaluate]


def main(
    config: Path,
    corpus: Path,
    training_dir: Path,
    metrics_dir: Path,
    run_name: str = typer.Option(..., help="File stem of this baseline, e.g. cnn or encoder"),
    name: str = typer.Option("", help="Label in reports (default: RUN_NAME)"),
    seeds: str = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2"),
    max_steps: int = typer.Option(..., help="training.max_steps"),
    eval_frequency: int = typer.Option(..., help="training.eval_frequency"),
    gpu_id: int = typer.Option(-1, help="GPU for spacy train (-1: CPU)"),
    override: list[str] = typer.Option([], help="Extra config override KEY=VALUE, e.g. paths.encoder=assets/x"),
):
    """For each seed: `spacy train` CONFIG on CORPUS/train+dev, then evaluate.py on CORPUS/test.spacy."""
    settings = {"training.max_steps": str(max_steps), "training.eval_frequency": str(eval_frequency)}
    for item in override:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--override takes KEY=VALUE (e.g. paths.encoder=assets/x), not {item!r}")
        settings[key.strip().removeprefix("--")] = value
    for seed in parse_seeds(seeds):
        stem = f"{run_name}.seed{seed}"
        metrics = metrics_dir / f"{stem}.json"
        if finished(metrics):
            print(f"{stem}: metrics exist, skipped")
            continue
        train, evaluate = commands(
            config, corpus, training_dir / stem, metrics, name=name or run_name, seed=seed, settings=settings
        )
        begin, cpu_begin = time.time(), children_cpu_seconds()
        subprocess.run([*train, "--gpu-id", str(gpu_id)], check=True)
        seconds, cpu_seconds = time.time() - begin, children_cpu_seconds() - cpu_begin
        subprocess.run(evaluate, check=True)
        times = {"train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1)}
        stamp(metrics, **times, max_steps=max_steps, seed=seed)  # seed last: it marks the seed finished


if __name__ == "__main__":
    typer.run(main)
