"""Train and evaluate one pipeline per (run label, seed) with the same settings,
skipping those that already have metrics (so a sweep resumes): one after the other,
or as Ray tasks, one per GPU (or CPU slot), on this machine or a Ray cluster.

A run label is an unmask spec with optional variants: ``<spec>[+r<k>][@<n>]``,
where ``+r<k>`` repeats the input k more times (sequence repetition; the config's
architecture must have ``repeat``, e.g. UnmaskedTransformer.v2) and ``@<n>`` takes
features from the first n decoder blocks instead of ``--num-layers``.

Layout (scripts/report.py reads it): ``METRICS_DIR/<label>.seed<k>.json`` is
scripts/evaluate.py's JSON plus the top-level keys "repeat", "num_layers",
"train_seconds" (wall), "train_cpu_seconds" (user + system CPU time of ``spacy train``,
which a busy machine does not inflate), "max_steps", and then "spec" (the label) and "seed" (int),
added last and atomically: a file with "spec" and "seed" is a finished run.
``TRAINING_DIR/<spec>.seed<k>`` holds the trained pipelines.
"""

import itertools
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spacy
import typer

SCRIPTS = Path(__file__).resolve().parent


def schedule_overrides(config: str | Path, max_steps: int) -> list[str]:
    """Keep a decaying learning-rate schedule's total_steps equal to max_steps
    (the configs hold it as a literal; spaCy cannot resolve a reference there)."""
    if not Path(config).is_file():
        return []  # spacy train reports the missing config
    learn_rate = spacy.util.load_config(config, interpolate=False)["training"]["optimizer"]["learn_rate"]
    if max_steps > 0 and isinstance(learn_rate, dict) and "total_steps" in learn_rate:
        return [f"--training.optimizer.learn_rate.total_steps={max_steps}"]
    return []


def expand_specs(specs: str) -> list[str]:
    """Comma-separated specs; ``bits:M`` expands to all 2^M bit strings of length M."""
    out: list[str] = []
    for item in (s.strip() for s in specs.split(",") if s.strip()):
        if item.startswith("bits:"):
            m = int(item.split(":", 1)[1])
            out.extend("".join(bits) for bits in itertools.product("01", repeat=m))
        else:
            out.append(item)
    return list(dict.fromkeys(out))


VARIANT = re.compile(r"(?P<spec>[^+@]+)(?:\+r(?P<repeat>[1-9][0-9]*))?(?:@(?P<layers>[1-9][0-9]*))?")


@dataclass(frozen=True)
class Variant:
    """What a run label asks for: the unmask spec, repetitions and a num_layers override."""

    spec: str
    repeat: int = 0
    num_layers: int | None = None


def parse_label(label: str) -> Variant:
    """``0011+r1@15`` → Variant("0011", repeat=1, num_layers=15)."""
    match = VARIANT.fullmatch(label)
    if match is None:
        raise typer.BadParameter(
            f"{label!r} is not a run label: use <spec>[+r<k>][@<n>], e.g. 0011, 0000+r1 or 0011+r1@15"
        )
    layers = match["layers"]
    return Variant(match["spec"], int(match["repeat"] or 0), int(layers) if layers else None)


def parse_seeds(seeds: str | None, seed: int) -> list[int]:
    """``--seeds 0,1,2`` as a list of ints, or ``[seed]`` when it is not given."""
    if seeds is None or not seeds.strip():
        return [seed]
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers such as 0,1,2, not {seeds!r}") from None
    return list(dict.fromkeys(values))


def run_name(spec: str, seed: int) -> str:
    """The name of one run: ``<spec>.seed<k>`` (metrics file stem and training folder)."""
    return f"{spec}.seed{seed}"


def is_finished(metrics: Path) -> bool:
    """Whether a metrics file is a finished run's: whole JSON stamped with "spec" and an int "seed"
    (evaluate.py's own file, which a killed run may leave, lacks "spec")."""
    try:
        content = json.loads(metrics.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and "spec" in content and isinstance(content.get("seed"), int)


@dataclass(frozen=True)
class Settings:
    """What every run of a sweep shares (absolute paths, so Ray workers anywhere see the same files)."""

    config: str
    corpus: str
    training_dir: str
    metrics_dir: str
    base_model: str
    max_steps: int
    eval_frequency: int
    num_layers: str
    gpu_id: int
    test_split: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finished:
    """One finished run: where its metrics are, and when and where it ran."""

    spec: str
    seed: int
    metrics: str
    started: float
    ended: float
    pid: int


def train_and_evaluate(spec: str, seed: int, settings: Settings, *, log: Path | None = None) -> Finished:
    """`spacy train` one (spec, seed), evaluate it on the test split, then stamp the
    metrics with "spec" and "seed" (written to a temporary file and renamed)."""
    started = time.time()
    name = run_name(spec, seed)
    variant = parse_label(spec)
    num_layers = settings.num_layers if variant.num_layers is None else str(variant.num_layers)
    output = Path(settings.training_dir) / name
    metrics = Path(settings.metrics_dir) / f"{name}.json"
    corpus = Path(settings.corpus)
    train = [
        sys.executable,
        "-m",
        "spacy",
        "train",
        settings.config,
        "--output",
        str(output),
        "--gpu-id",
        str(settings.gpu_id),
        f"--paths.train={corpus / 'train.spacy'}",
        f"--paths.dev={corpus / 'dev.spacy'}",
        f"--paths.base_model={settings.base_model}",
        f'--components.transformer.model.unmask="{variant.spec}"',
        f"--components.transformer.model.num_layers={num_layers}",
        *([f"--components.transformer.model.repeat={variant.repeat}"] if variant.repeat else []),
        f"--training.max_steps={settings.max_steps}",
        f"--training.eval_frequency={settings.eval_frequency}",
        f"--system.seed={seed}",
        *schedule_overrides(settings.config, settings.max_steps),
        *(f"--{override}" for override in settings.overrides),
    ]
    evaluate = [
        sys.executable,
        str(SCRIPTS / "evaluate.py"),
        str(output / "model-best"),
        str(corpus / settings.test_split),
        str(metrics),
        "--name",
        spec,
    ]
    seconds, cpu_seconds = {}, {}
    if log is None:
        for step, command in (("train", train), ("evaluate", evaluate)):
            begin, cpu_begin = time.time(), children_cpu_seconds()
            subprocess.run(command, check=True)
            seconds[step], cpu_seconds[step] = time.time() - begin, children_cpu_seconds() - cpu_begin
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w", encoding="utf8") as file:
            for step, command in (("train", train), ("evaluate", evaluate)):
                begin, cpu_begin = time.time(), children_cpu_seconds()
                result = subprocess.run(command, stdout=file, stderr=subprocess.STDOUT)
                seconds[step], cpu_seconds[step] = time.time() - begin, children_cpu_seconds() - cpu_begin
                if result.returncode != 0:
                    file.flush()
                    tail = log.read_text(encoding="utf8", errors="replace")[-2000:]
                    raise RuntimeError(f"{name}: {command[1:4]} failed (exit {result.returncode}); log {log}:\n{tail}")
    extra = {
        "repeat": variant.repeat,
        "num_layers": None if num_layers == "null" else int(num_layers),
        "train_seconds": round(seconds["train"], 1),
        "train_cpu_seconds": round(cpu_seconds["train"], 1),
        "max_steps": settings.max_steps,
    }
    stamp(metrics, **extra, spec=spec, seed=seed)
    return Finished(spec, seed, str(metrics), started, time.time(), os.getpid())


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stamp(metrics: Path, **fields: Any) -> None:
    """Write FIELDS into evaluate.py's JSON at METRICS, last and in their order (replacing keys it
    already has), atomically: the marker fields of a finished run ("spec", "seed") go last."""
    content: dict[str, Any] = json.loads(metrics.read_text(encoding="utf8"))
    for key in fields:
        content.pop(key, None)
    content.update(fields)
    temporary = metrics.with_name(f".{metrics.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(content, indent=2), encoding="utf8")
    os.replace(temporary, metrics)


def run_ray(
    runs: list[tuple[str, int]],
    settings: Settings,
    *,
    address: str | None,
    cpus_per_task: float,
    gpus_per_task: float,
    num_cpus: int | None,
) -> list[Finished]:
    """Run each (spec, seed) as a Ray task with ``cpus_per_task`` CPUs and ``gpus_per_task``
    GPUs (Ray schedules them: one per GPU with 1); each task's output goes to
    ``TRAINING_DIR/<spec>.seed<k>.log``. Raises after all tasks end if any failed."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = not ray.is_initialized()
    if started:
        quiet = {"logging_level": "ERROR", "log_to_driver": False}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    try:
        task = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=0)(train_and_evaluate)
        pending = {
            task.remote(spec, seed, settings, log=Path(settings.training_dir) / f"{run_name(spec, seed)}.log"): (
                spec,
                seed,
            )
            for spec, seed in runs
        }
        done, failed = [], []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec, seed = pending.pop(ready[0])
            try:
                finished = ray.get(ready[0])
            except Exception as err:  # report every failure at the end, let the other runs finish
                failed.append(f"{run_name(spec, seed)}: {getattr(err, 'cause', None) or err}")
                print(f"{run_name(spec, seed)}: failed", flush=True)
                continue
            done.append(finished)
            print(f"{run_name(spec, seed)}: finished in {finished.ended - finished.started:.0f} s", flush=True)
    finally:
        if started:
            ray.shutdown()
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} run(s) failed; rerun to retry them:\n" + "\n".join(failed))
    return done


def sweep(
    config: Path,
    corpus: Path,
    training_dir: Path,
    metrics_dir: Path,
    *,
    specs: str,
    base_model: str,
    seeds: list[int],
    max_steps: int = 600,
    eval_frequency: int = 100,
    num_layers: str = "null",
    gpu_id: int = -1,
    test_split: str = "test.spacy",
    overrides: tuple[str, ...] = (),
    use_ray: bool = False,
    address: str | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    num_cpus: int | None = None,
) -> list[Finished]:
    """Train and evaluate every (spec, seed) without finished metrics; returns the runs done now."""
    runs = []
    labels = expand_specs(specs)
    for label in labels:
        parse_label(label)  # fail before any training on a malformed label
    for spec in labels:
        for seed in seeds:
            if is_finished(metrics_dir / f"{run_name(spec, seed)}.json"):
                print(f"{run_name(spec, seed)}: metrics exist, skipped")
            else:
                runs.append((spec, seed))
    if not runs:
        return []
    model = Path(base_model)
    settings = Settings(
        config=str(config.resolve()),
        corpus=str(corpus.resolve()),
        training_dir=str(training_dir.resolve()),
        metrics_dir=str(metrics_dir.resolve()),
        base_model=str(model.resolve()) if model.exists() else base_model,
        max_steps=max_steps,
        eval_frequency=eval_frequency,
        num_layers=num_layers,
        gpu_id=(0 if gpus_per_task > 0 else -1) if use_ray else gpu_id,
        test_split=test_split,
        overrides=tuple(overrides),
    )
    if use_ray:
        return run_ray(
            runs, settings, address=address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, num_cpus=num_cpus
        )
    return [train_and_evaluate(spec, seed, settings) for spec, seed in runs]


def main(
    config: Path,
    corpus: Path,
    training_dir: Path,
    metrics_dir: Path,
    specs: str = typer.Option("bits:4", help="Comma-separated specs, or bits:M for all 2^M bit strings"),
    base_model: str = typer.Option(..., help="Base model (hub id or folder)"),
    max_steps: int = 600,
    eval_frequency: int = 100,
    num_layers: str = typer.Option("null", help="First k decoder blocks, or null for all"),
    seed: int = typer.Option(0, help="The seed, when --seeds is not given"),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds (e.g. 0,1,2): every spec runs with each"),
    gpu_id: int = typer.Option(-1, help="GPU of the sequential mode (with --ray, Ray assigns GPUs)"),
    test_split: str = "test.spacy",
    override: list[str] = typer.Option([], help="Config override KEY=VALUE for every run (repeatable)"),
    ray: bool = typer.Option(False, "--ray/--no-ray", help="Run each (spec, seed) as a Ray task"),
    address: str | None = typer.Option(None, help="Ray cluster address (default: start a local Ray)"),
    cpus_per_task: float = typer.Option(1.0, help="CPUs per Ray task"),
    gpus_per_task: float = typer.Option(0.0, help="GPUs per Ray task (1: one spec per GPU)"),
    num_cpus: int | None = typer.Option(None, help="CPUs of a local Ray (default: all of this machine's)"),
):
    """For each spec and seed: `spacy train` CONFIG on CORPUS/train+dev, then evaluate on CORPUS/TEST_SPLIT."""
    try:
        sweep(
            config,
            corpus,
            training_dir,
            metrics_dir,
            specs=specs,
            base_model=base_model,
            seeds=parse_seeds(seeds, seed),
            max_steps=max_steps,
            eval_frequency=eval_frequency,
            num_layers=num_layers,
            gpu_id=gpu_id,
            test_split=test_split,
            overrides=tuple(override),
            use_ray=ray,
            address=address,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            num_cpus=num_cpus,
        )
    except RuntimeError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    typer.run(main)
