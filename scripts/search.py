"""Find the best unmask spec (and, optionally, sequence repetition and learning rate) for a
task without training every candidate to the end: successive halving (ASHA) on Ray Tune.

Every candidate (spec x repeat x learning rate x seed) is a trial: a real `spacy train` of
CONFIG on CORPUS/train.spacy, scored on CORPUS/dev.spacy (the test split is never read).
A trial reports its dev score to Tune after each evaluation (the spaCy logger
``spacy-unmasked.TuneReporter.v1``, around the config's own logger) and Ray Tune's
ASHAScheduler stops the weaker trials at rungs of GRACE, GRACE*RF, GRACE*RF^2... steps;
survivors train up to BUDGET steps. See docs/search.md.

Layout of OUTPUT: ``model-best`` (the best trial's pipeline), ``search.md`` and
``search.json`` (every trial), ``trials/<name>/`` (each trial's log and pipelines),
``tune/`` (Ray Tune's experiment: rerunning the same command resumes it) and
``search-settings.json`` (what the search is, checked when it resumes).
"""

import json
import os
import re
import shutil
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import spacy
import srsly
import typer
from sweep import expand_specs, parse_seeds, schedule_overrides

from spacy_unmasked.errors import UnmaskSpecError
from spacy_unmasked.ray.tune import TrialSettings, train_trial, trial_dirname, trial_name
from spacy_unmasked.spec import check_spec

TUNE_DIR = "tune"
JOURNAL_FILE = "asha-journal.jsonl"  # the scheduler's rung record, replayed on resume
TRIALS_DIR = "trials"
SETTINGS_FILE = "search-settings.json"
SPEC_GRAMMAR = (
    "--specs takes comma-separated unmask specs: none, all, a bit string such as 0011 "
    "(bit i unmasks layer group i, the leftmost group nearest the input), or bits:M for all 2^M bit strings"
)


class SearchError(RuntimeError):
    """A search cannot start or did not finish; the message says why and what to do."""


def check_specs(specs: str) -> list[str]:
    """``--specs`` expanded (``bits:M``) and validated; names the first bad spec."""
    try:
        expanded = expand_specs(specs)
    except ValueError:
        raise typer.BadParameter(f"{specs!r} is not a spec list. {SPEC_GRAMMAR}.") from None
    if not expanded:
        raise typer.BadParameter(f"no spec given. {SPEC_GRAMMAR}.")
    for spec in expanded:
        try:
            check_spec(spec)
        except UnmaskSpecError as err:
            raise typer.BadParameter(f"{spec!r} is not an unmask spec ({err}). {SPEC_GRAMMAR}.") from None
    return expanded


def parse_list(text: str | None, option: str, kind: type, *, minimum: float) -> list | None:
    """A comma-separated option as a list of ``kind`` (each at least ``minimum``), or None when not given."""
    if text is None or not text.strip():
        return None
    example = "1,2" if kind is int else "1e-3,3e-4"
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated numbers such as {example}, not {text!r}") from None
    if any(value < minimum for value in values):
        raise typer.BadParameter(f"{option} values must be at least {minimum}, not {text!r}")
    return list(dict.fromkeys(values))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` config overrides, values read as spaCy's CLI reads them (JSON, else a string)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise typer.BadParameter(f"--override takes KEY=VALUE (e.g. paths.base_model=assets/x), not {item!r}")
        try:
            overrides[key] = srsly.json_loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


def learn_rate_key(config: dict[str, Any], path: Path) -> str:
    """The setting ``--lr`` overrides: the optimizer's learn_rate, or its schedule's initial_rate."""
    learn_rate = config.get("training", {}).get("optimizer", {}).get("learn_rate")
    if isinstance(learn_rate, (int, float)) and not isinstance(learn_rate, bool):
        return "training.optimizer.learn_rate"
    if isinstance(learn_rate, dict) and "initial_rate" in learn_rate:
        return "training.optimizer.learn_rate.initial_rate"
    raise typer.BadParameter(
        f"--lr sets [training.optimizer] learn_rate (a number) or its schedule's initial_rate, but {path} has "
        f"learn_rate = {learn_rate!r}: give the config such a learning rate, or leave out --lr."
    )


def check_repeat(config: dict[str, Any], path: Path) -> None:
    """``--repeat`` needs a transformer architecture with a ``repeat`` setting."""
    import inspect

    model = config.get("components", {}).get("transformer", {}).get("model", {})
    name = model.get("@architectures")
    parameters = {}
    if name:
        try:
            parameters = inspect.signature(spacy.registry.architectures.get(name)).parameters
        except Exception:  # an unknown architecture: spacy train reports it
            parameters = {}
    if "repeat" not in parameters:
        raise typer.BadParameter(
            f"--repeat overrides components.transformer.model.repeat, but the transformer architecture of {path} "
            f"({name or 'none'}) has no repeat setting: use a config whose architecture takes repeat, "
            "or leave out --repeat."
        )


def warmup_steps(base: Any, overrides: dict[str, Any]) -> int:
    """The learning-rate warmup of the config, after the overrides (0 without a warmup schedule)."""
    key = "training.optimizer.learn_rate.warmup_steps"
    if key in overrides:
        return int(overrides[key])
    learn_rate = base["training"]["optimizer"].get("learn_rate")
    return int(learn_rate.get("warmup_steps") or 0) if isinstance(learn_rate, dict) else 0


def default_grace(budget: int, reduction_factor: int, eval_frequency: int, warmup: int = 0) -> int:
    """Two halvings before the full budget: budget / rf^2, down to a multiple of the evaluation frequency,
    but not before the first evaluation after the learning-rate warmup (nor after the budget)."""
    grace = max(budget // reduction_factor**2 // eval_frequency * eval_frequency, eval_frequency)
    if warmup:
        grace = max(grace, (warmup // eval_frequency + 1) * eval_frequency)
    return min(grace, budget)


def warn_rung_in_warmup(grace: int, warmup: int) -> None:
    """Warn when the first rung falls within the warmup, where dev scores say little about a candidate."""
    if warmup and grace <= warmup:
        warnings.warn(
            f"The first rung (step {grace}) is within the learning-rate warmup ({warmup} steps): dev scores "
            "there are mostly noise, so ASHA stops candidates almost at random. Set --grace above "
            f"{warmup} (or leave it out: the default rung comes after the warmup).",
            stacklevel=2,
        )


def check_schedule(budget: int, grace: int, reduction_factor: int, eval_frequency: int) -> None:
    """Every rung must be an evaluation step, so ASHA compares trials at the same step."""
    if budget < 1 or eval_frequency < 1 or grace < 1:
        raise typer.BadParameter(
            f"--budget, --grace and --eval-frequency must be positive (got {budget}, {grace}, {eval_frequency})"
        )
    if reduction_factor < 2:
        raise typer.BadParameter(f"--reduction-factor must be at least 2, not {reduction_factor}")
    if grace > budget:
        raise typer.BadParameter(f"--grace ({grace}) must not exceed --budget ({budget})")
    for name, value in (("--budget", budget), ("--grace", grace)):
        if value % eval_frequency:
            raise typer.BadParameter(
                f"{name} ({value}) must be a multiple of the evaluation frequency ({eval_frequency}): "
                "ASHA compares trials at evaluation steps (set --eval-frequency, --grace or --budget)"
            )


def make_candidates(
    specs: list[str], repeats: list[int] | None, lrs: list[float] | None, seeds: list[int]
) -> list[dict[str, Any]]:
    """Every combination, in a fixed order (spec, then repeat, learning rate, seed)."""
    return [
        {"spec": spec, "repeat": repeat, "lr": lr, "seed": seed}
        for spec in specs
        for repeat in repeats or [None]
        for lr in lrs or [None]
        for seed in seeds
    ]


def address_target(address: str) -> tuple[str, int] | None:
    """The (host, port) a ``--address`` connects to, or None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep:
        host, port = port, "10001" if client else "6379"
    if not host or not port.isdigit():
        raise SearchError(f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT.")
    return host, int(port)


def unreachable(address: str, reason: object) -> SearchError:
    """The error of an address with no Ray cluster behind it."""
    return SearchError(
        f"Cannot reach a Ray cluster at --address {address} ({reason}). Start one with `ray start --head` on the "
        "head node and pass the address it prints (HOST:6379), use --address auto on a node of a running cluster, "
        "or leave out --address to run on a local Ray on this machine."
    )


def connect(address: str | None, num_cpus: int | None, timeout: float = 5.0) -> bool:
    """Start a local Ray, or join the cluster at ``address`` after checking that it answers
    (so a wrong address fails in seconds). Returns whether Ray was started here."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        target = address_target(address)
        if target is not None:
            try:
                socket.create_connection(target, timeout=timeout).close()
            except OSError as err:
                raise unreachable(address, err) from None
    import ray

    if ray.is_initialized():
        return False
    if not address:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR")
        return True
    try:
        ray.init(address=address, logging_level="ERROR")
    except ConnectionError as err:  # e.g. auto with no cluster on this node
        raise unreachable(address, err) from None
    return True


def run_tune(
    output: Path,
    settings: TrialSettings,
    candidates: list[dict[str, Any]],
    *,
    budget: int,
    grace: int,
    reduction_factor: int,
    cpus_per_trial: float,
    gpus_per_trial: float,
    max_concurrent: int | None,
) -> Any:
    """Run (or resume) the Tune experiment ``OUTPUT/tune``; returns its ResultGrid."""
    from ray import tune

    from spacy_unmasked.ray.asha import JournaledASHA, start_journal

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, settings=settings), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    )
    path = output.resolve() / TUNE_DIR
    if tune.Tuner.can_restore(path):
        print(f"Resuming the search in {path}: finished trials are kept, unfinished ones restart", flush=True)
        # the scheduler comes back with the Tuner and replays its journal (spacy_unmasked/ray/asha.py)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=True).fit()
    journal = output.resolve() / JOURNAL_FILE
    start_journal(journal)
    scheduler = JournaledASHA(
        journal=journal,
        time_attr="step",
        metric="score",
        mode="max",
        max_t=budget,
        grace_period=grace,
        reduction_factor=reduction_factor,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"candidate": tune.grid_search(candidates)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            num_samples=1,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,  # no new Ray worker (imports, CUDA set-up) per trial
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(output.resolve()), verbose=1),
    )
    return tuner.fit()


def exception_line(error: BaseException) -> str:
    """The ``SomeError: message`` line of a trial's error (Tune wraps it in Ray's traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\w*: ", line)]
    return (raised or lines or [repr(error)])[-1]


def trial_row(result: Any, budget: int) -> dict[str, Any]:
    """One trial of the table: its candidate, the steps it trained, its best dev score."""
    candidate = result.config["candidate"]
    name = trial_name(candidate)
    row: dict[str, Any] = {"trial": name, **candidate}
    frame = result.metrics_dataframe
    reported = frame is not None and "score" in frame and frame["score"].notna().any()
    if result.error is not None or not reported:
        error = exception_line(result.error) if result.error is not None else "no evaluation reported"
        return {**row, "status": "error", "error": error}
    # one row per evaluation (a trial that restarted after an interruption reported its first steps twice)
    frame = frame[frame["score"].notna()].drop_duplicates("step", keep="last").reset_index(drop=True)
    best = frame["score"][::-1].idxmax()  # spaCy saves model-best again on a tie: the last best evaluation
    steps = int(frame["step"].max())
    return {
        **row,
        "status": "finished",
        "steps": steps,
        "best_score": float(frame["score"][best]),
        "best_step": int(frame["step"][best]),
        "stopped_early": steps < budget,  # patience is off: only ASHA ends a trial before the budget
        "curve": [[int(step), float(score)] for step, score in zip(frame["step"], frame["score"], strict=True)],
        "seconds": round(float(result.metrics.get("time_total_s", 0.0)), 1),
    }


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials by best dev score (ties: the candidate order), then the failed ones."""
    finished = [row for row in rows if row["status"] == "finished"]
    failed = [row for row in rows if row["status"] != "finished"]
    return sorted(finished, key=lambda row: -row["best_score"]) + failed


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The table of every trial, best first."""
    lines = [
        "# Unmask-spec search (ASHA on Ray Tune)",
        "",
        f"Config `{settings['config']}`, corpus `{settings['corpus']}` (dev split; the test split is not used).",
        f"Budget {settings['budget']} steps per trial; rungs from step {settings['grace']} "
        f"(reduction factor {settings['reduction_factor']}); evaluation every {settings['eval_frequency']} steps.",
        "Steps count as spaCy's `#` column and `training.max_steps` do; the dev score is spaCy's weighted score.",
        "",
        "| rank | spec | repeat | lr | seed | steps | best dev score | at step | stopped early |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for rank, row in enumerate(rows, 1):
        repeat = "" if row["repeat"] is None else str(row["repeat"])
        lr = "" if row["lr"] is None else f"{row['lr']:g}"
        if row["status"] == "finished":
            cells = [str(row["steps"]), f"{row['best_score']:.4f}", str(row["best_step"])]
            cells.append("yes" if row["stopped_early"] else "no")
        else:
            cells = ["", "error: " + row["error"].replace("|", "/"), "", ""]
        lines.append(f"| {rank} | {row['spec']} | {repeat} | {lr} | {row['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(output: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """``OUTPUT/search.md`` and ``OUTPUT/search.json``."""
    best = rows[0] if rows and rows[0]["status"] == "finished" else None
    content = {**settings, "best": best, "trials": rows}
    (output / "search.json").write_text(json.dumps(content, indent=2) + "\n", encoding="utf8")
    (output / "search.md").write_text(markdown(rows, settings), encoding="utf8")


def copy_best(output: Path, name: str) -> Path:
    """Copy ``trials/<name>/model-best`` to ``OUTPUT/model-best`` (replacing an earlier copy)."""
    source = output / TRIALS_DIR / name / "model-best"
    if not source.is_dir():
        raise SearchError(f"The best trial {name} has no pipeline at {source}: rerun the search to retrain it.")
    target = output / "model-best"
    staging = output / ".model-best.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def check_same_search(output: Path, settings: dict[str, Any]) -> None:
    """A rerun on OUTPUT must be the same search (Tune resumes the saved one)."""
    saved_path = output / SETTINGS_FILE
    if not (output / TUNE_DIR).exists() or not saved_path.is_file():
        return  # nothing to resume: a new search
    saved = json.loads(saved_path.read_text(encoding="utf8"))
    differ = sorted(key for key in {*saved, *settings} if saved.get(key) != settings.get(key))
    if differ:
        raise SearchError(
            f"{output} holds a search with other settings ({', '.join(differ)} differ): run the same command "
            f"to resume it, or give another output folder for a new search."
        )


def search(
    config: Path,
    corpus: Path,
    output: Path,
    *,
    specs: str,
    seeds: list[int],
    repeats: list[int] | None = None,
    lrs: list[float] | None = None,
    budget: int | None = None,
    eval_frequency: int | None = None,
    grace: int | None = None,
    reduction_factor: int = 2,
    overrides: dict[str, Any] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_concurrent: int | None = None,
) -> list[dict[str, Any]]:
    """Search; returns the table's rows, best first, and copies the best pipeline to OUTPUT/model-best."""
    spec_list = check_specs(specs)
    if not config.is_file():
        raise SearchError(f"Config {config} does not exist.")
    for split in ("train.spacy", "dev.spacy"):
        if not (corpus / split).is_file():
            raise SearchError(f"The corpus folder {corpus} has no {split}: the search trains on train and scores dev.")
    base = spacy.util.load_config(config, interpolate=False)
    lr_key = learn_rate_key(base, config) if lrs else None
    if repeats:
        check_repeat(base, config)
    budget = budget or int(base["training"]["max_steps"])
    if budget < 1:
        raise typer.BadParameter(
            f"give --budget, the steps per trial: {config} sets no step limit (training.max_steps = {budget})"
        )
    eval_frequency = eval_frequency or int(base["training"]["eval_frequency"])
    warmup = warmup_steps(base, overrides or {})
    grace = grace or default_grace(budget, reduction_factor, eval_frequency, warmup)
    check_schedule(budget, grace, reduction_factor, eval_frequency)
    warn_rung_in_warmup(grace, warmup)
    candidates = make_candidates(spec_list, repeats, lrs, seeds)
    fixed = {
        "paths.train": str((corpus / "train.spacy").resolve()),
        "paths.dev": str((corpus / "dev.spacy").resolve()),
        "training.max_steps": budget,
        "training.max_epochs": 0,
        "training.patience": 0,  # ASHA does the early stopping
        "training.eval_frequency": eval_frequency,
        **parse_overrides(schedule_overrides(config, budget)),
        **(overrides or {}),
    }
    described = {
        "config": str(config.resolve()),
        "corpus": str(corpus.resolve()),
        "budget": budget,
        "grace": grace,
        "reduction_factor": reduction_factor,
        "eval_frequency": eval_frequency,
        "overrides": fixed,
        "candidates": candidates,
    }
    check_same_search(output, described)
    settings = TrialSettings(
        config=str(config.resolve()),
        trials_dir=str((output / TRIALS_DIR).resolve()),
        workdir=str(Path.cwd()),
        overrides=fixed,
        logger=dict(base["training"].get("logger") or {}),
        learn_rate_key=lr_key,
        gpu_id=0 if gpus_per_trial > 0 else -1,
    )
    started = connect(address, num_cpus)
    try:
        output.mkdir(parents=True, exist_ok=True)
        (output / SETTINGS_FILE).write_text(json.dumps(described, indent=2) + "\n", encoding="utf8")
        results = run_tune(
            output,
            settings,
            candidates,
            budget=budget,
            grace=grace,
            reduction_factor=reduction_factor,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            max_concurrent=max_concurrent,
        )
    finally:
        if started:
            import ray

            ray.shutdown()
    return finish(output, results, described)


def trial_statuses(output: Path) -> dict[str, str]:
    """Each trial's Tune status (TERMINATED, ERROR, PENDING...) by trial name, from the saved experiment."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str((output / TUNE_DIR).resolve()))
    return {trial_name(trial.config["candidate"]): trial.status for trial in analysis.trials}


def finish(output: Path, results: Any, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Tables and model-best from the Tune results; raises if trials are unfinished or failed."""
    statuses = trial_statuses(output)
    names = [trial_name(candidate) for candidate in settings["candidates"]]
    unfinished = [name for name in names if statuses.get(name) not in ("TERMINATED", "ERROR")]
    if unfinished:
        raise SearchError(
            f"The search stopped with {len(unfinished)} of {len(names)} trials unfinished: "
            "run the same command again to resume it."
        )
    rows = sorted(
        (trial_row(result, settings["budget"]) for result in results), key=lambda row: names.index(row["trial"])
    )
    rows = ranked(rows)
    write_tables(output, rows, settings)
    failed = [row for row in rows if row["status"] != "finished"]
    if len(failed) == len(rows):
        raise SearchError(f"Every trial failed; see {output / 'search.md'} and the logs in {output / TRIALS_DIR}.")
    best = copy_best(output, rows[0]["trial"])
    print(markdown(rows, settings), flush=True)
    print(f"Best: {rows[0]['trial']} (dev score {rows[0]['best_score']:.4f}), copied to {best}", flush=True)
    if failed:
        names = ", ".join(row["trial"] for row in failed)
        raise SearchError(f"{len(failed)} trial(s) failed ({names}); rerun the same command to retry them.")
    return rows


def main(
    config: Path,
    corpus: Path,
    output: Path,
    specs: str = typer.Option("bits:4", help="Comma-separated unmask specs, or bits:M for all 2^M bit strings"),
    repeat: str | None = typer.Option(
        None, help="Comma-separated repeat values to search, e.g. 0,1 (0: none; needs an architecture with `repeat`)"
    ),
    lr: str | None = typer.Option(None, help="Comma-separated learning rates to search (default: the config's)"),
    seed: int = typer.Option(0, help="The seed, when --seeds is not given"),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds: each candidate is trained once per seed"),
    budget: int | None = typer.Option(
        None, help="Steps per trial at most (ASHA's max_t, training.max_steps); default: the config's max_steps"
    ),
    eval_frequency: int | None = typer.Option(None, help="Steps between evaluations (default: the config's)"),
    grace: int | None = typer.Option(
        None, help="Steps before the first rung, where the first trials are stopped (default: budget / RF^2)"
    ),
    reduction_factor: int = typer.Option(2, help="ASHA's reduction factor RF: 1 in RF trials passes each rung"),
    override: list[str] = typer.Option([], help="Extra config override KEY=VALUE, e.g. paths.base_model=assets/x"),
    address: str | None = typer.Option(None, help="Ray cluster: auto or HOST:PORT (default: a local Ray)"),
    num_cpus: int | None = typer.Option(None, help="CPUs of a local Ray (default: all of this machine's)"),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs per trial"),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs per trial (1: one trial per GPU)"),
    max_concurrent: int | None = typer.Option(None, help="Trials at once at most (default: as resources allow)"),
):
    """Successive-halving search of CONFIG's unmask spec on CORPUS (train/dev) into OUTPUT."""
    try:
        search(
            config,
            corpus,
            output,
            specs=specs,
            seeds=parse_seeds(seeds, seed),
            repeats=parse_list(repeat, "--repeat", int, minimum=0),
            lrs=parse_list(lr, "--lr", float, minimum=0.0),
            budget=budget,
            eval_frequency=eval_frequency,
            grace=grace,
            reduction_factor=reduction_factor,
            overrides=parse_overrides(override),
            address=address,
            num_cpus=num_cpus,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            max_concurrent=max_concurrent,
        )
    except SearchError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    typer.run(main)
