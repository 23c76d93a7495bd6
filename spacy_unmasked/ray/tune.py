"""A spaCy training logger that reports each evaluation's dev score to Ray Tune.

``spacy-unmasked.TuneReporter.v1`` wraps another logger (spaCy's console logger
by default, so the progress table stays) and, after each evaluation, calls
``ray.tune.report({"score": ..., "step": ...})`` with the weighted dev score
spaCy computed (``info["score"]``, the one that picks ``model-best``) and
spaCy's step counter. A Tune scheduler such as ASHA reads these reports to stop
weak trials early; spaCy saves ``model-best`` before the logger runs, so a
stopped trial's best pipeline is complete on disk.

Any config can use it without edits, by overriding ``[training.logger]`` with
the reporter around the config's own logger (``scripts/search.py`` does that)::

    [training.logger]
    @loggers = "spacy-unmasked.TuneReporter.v1"

    [training.logger.logger]
    @loggers = "spacy.ConsoleLogger.v3"
    progress_bar = null

spaCy imports this module through its entry point whenever it resolves a
logger, so Ray is imported only when the reporter is created.
"""

import os
import socket
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spacy.language import Language

LogStep = Callable[[dict[str, Any] | None], None]
Finalize = Callable[[], None]
SetupLogger = Callable[["Language", IO, IO], tuple[LogStep, Finalize]]
Report = Callable[[dict[str, Any]], None]

RAY_MISSING = (
    "spacy-unmasked.TuneReporter.v1 reports to Ray Tune, which is not installed: "
    "pip install 'spacy-unmasked[ray]' (or use another [training.logger])."
)


def tune_report() -> Report:
    """Ray Tune's ``report`` (a no-op with a warning outside a Tune trial)."""
    try:
        from ray import tune
    except ImportError as err:
        raise ImportError(RAY_MISSING) from err
    return tune.report


def create_tune_reporter(logger: SetupLogger | None = None) -> SetupLogger:
    """Registered as ``spacy-unmasked.TuneReporter.v1``: ``logger`` (default:
    spaCy's console logger) plus a Tune report after each evaluation."""
    report = tune_report()
    if logger is None:
        from spacy.training.loggers import console_logger_v3

        logger = console_logger_v3(progress_bar=None)
    inner = logger

    def setup(nlp: "Language", stdout: IO = sys.stdout, stderr: IO = sys.stderr) -> tuple[LogStep, Finalize]:
        inner_step, finalize = inner(nlp, stdout, stderr)

        def log_step(info: dict[str, Any] | None) -> None:
            inner_step(info)
            if info is not None:  # an evaluation: model-best (if it improved) is already saved
                report(evaluation_metrics(info))

        return log_step, finalize

    return setup


def evaluation_metrics(info: dict[str, Any]) -> dict[str, Any]:
    """What one evaluation reports: spaCy's weighted dev score and its step."""
    return {"score": float(info["score"]), "step": int(info["step"])}


REPORTER = "spacy-unmasked.TuneReporter.v1"


def reporter_logger(logger: dict[str, Any] | None) -> dict[str, Any]:
    """The ``[training.logger]`` block that wraps a config's own logger block in the reporter."""
    if logger and logger.get("@loggers") == REPORTER:
        return dict(logger)
    return {"@loggers": REPORTER, "logger": dict(logger)} if logger else {"@loggers": REPORTER}


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a search shares (absolute paths: trials run in Ray workers,
    possibly on other machines of a cluster with a shared filesystem)."""

    config: str
    trials_dir: str
    workdir: str
    overrides: dict[str, Any]
    logger: dict[str, Any]
    learn_rate_key: str | None = None
    gpu_id: int = -1


def trial_name(candidate: dict[str, Any]) -> str:
    """``<spec>[.repeat<r>][.lr<lr>].seed<k>``: a trial's folder under the search's trials/."""
    parts = [str(candidate["spec"])]
    if candidate.get("repeat") is not None:
        parts.append(f"repeat{candidate['repeat']}")
    if candidate.get("lr") is not None:
        parts.append(f"lr{candidate['lr']:g}")
    parts.append(f"seed{candidate['seed']}")
    return ".".join(parts)


def trial_dirname(trial: Any) -> str:
    """Tune's folder name of a trial (``TuneConfig(trial_dirname_creator=...)``)."""
    return trial_name(trial.config["candidate"])


def candidate_overrides(candidate: dict[str, Any], learn_rate_key: str | None) -> dict[str, Any]:
    """The config overrides of one candidate: spec and seed, plus repeat and learning rate when searched."""
    overrides: dict[str, Any] = {
        "components.transformer.model.unmask": str(candidate["spec"]),
        "system.seed": int(candidate["seed"]),
    }
    if candidate.get("repeat") is not None:
        overrides["components.transformer.model.repeat"] = int(candidate["repeat"])
    if candidate.get("lr") is not None:
        if learn_rate_key is None:
            raise ValueError("a candidate with a learning rate needs TrialSettings.learn_rate_key")
        overrides[learn_rate_key] = float(candidate["lr"])
    return overrides


def train_trial(params: dict[str, Any], settings: TrialSettings) -> None:
    """Tune's function trainable: `spacy train` one candidate in this process, with the
    reporter as its logger; its output (log, model-best, model-last) goes to
    ``trials_dir/<trial name>``. Tune stops it by ending the thread at a report."""
    from spacy.cli.train import train

    candidate = params["candidate"]
    name = trial_name(candidate)
    if not Path(settings.workdir).is_dir():
        raise RuntimeError(
            f"Trial {name}: the search's folder {settings.workdir} does not exist on {socket.gethostname()}: "
            "a search on a cluster needs the project at the same path on every node (a shared filesystem)."
        )
    os.chdir(settings.workdir)  # Tune starts trials in their own folder; the config's relative paths need this one
    output = Path(settings.trials_dir) / name
    output.mkdir(parents=True, exist_ok=True)
    overrides = {
        **settings.overrides,
        **candidate_overrides(candidate, settings.learn_rate_key),
        "training.logger": reporter_logger(settings.logger),
    }
    log = output / "train.log"
    failure: SystemExit | None = None
    with log.open("w", encoding="utf8") as file, redirect_stdout(file), redirect_stderr(file):
        try:
            train(settings.config, output, use_gpu=settings.gpu_id, overrides=overrides)
        except SystemExit as exit_:
            if exit_.code in (0, None):
                raise  # Tune stopping the trial
            failure = exit_
    if failure is not None:  # spaCy printed the reason (e.g. a config error) to the log
        raise RuntimeError(f"Trial {name}: spacy train exited with {failure.code}; its output is in {log}")
