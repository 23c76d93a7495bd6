"""Ray Tune's ASHA scheduler with a rung record that survives an interrupted search.

Ray Tune saves a search's trials and their results, and pickles the scheduler
with the Tuner when the search starts, but not the scheduler's later state: a
restored ASHA would start with empty rungs, and a trial that restarts after the
interruption would meet no cutoff. :class:`JournaledASHA` appends every report,
completion and removal it sees to a journal file (one JSON line each) and, when
the Tuner is restored and the scheduler unpickled, replays those of the trials
that had ended through ASHA's own methods, so a restarted trial meets the same
rungs as without the interruption. Only public Ray Tune classes and methods are
used. Imports Ray.
"""

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler


class JournaledASHA(ASHAScheduler):
    """ASHA (``ray.tune.schedulers.ASHAScheduler``) that journals its rung record to ``journal``."""

    def __init__(self, *, journal: str | Path, time_attr: str, metric: str, mode: str, **settings: Any) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, **settings)
        self.journal = str(journal)
        self.journal_keys = (time_attr, metric)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """ASHA's decision; the report is journaled first."""
        self.write("result", trial, result)
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """A trial that finished (or that ASHA stopped): journaled, then recorded by ASHA."""
        self.write("complete", trial, result)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """A trial removed before it ran to the end: journaled, then forgotten by ASHA."""
        self.write("remove", trial, {})
        super().on_trial_remove(tune_controller, trial)

    def write(self, event: str, trial: Any, result: dict) -> None:
        """Append one journal line: the event, the trial, and its step and score if it has them."""
        time_attr, metric = self.journal_keys
        entry: dict[str, Any] = {"event": event, "trial_id": trial.trial_id}
        step, score = result.get(time_attr), result.get(metric)
        if step is not None and isinstance(score, (int, float)) and not math.isnan(score):
            entry.update(step=step, score=score)
        elif event == "result":
            return  # ASHA ignores a report without both
        with Path(self.journal).open("a", encoding="utf8") as journal:  # start_journal made it
            journal.write(json.dumps(entry) + "\n")

    def __setstate__(self, state: dict) -> None:
        """Unpickled (a restored Tuner): take the state, then replay the journal."""
        self.__dict__.update(state)
        self.replay_journal()

    def replay_journal(self) -> int:
        """Record the reports of every trial that had ended (completed, stopped or removed) in the
        rungs, as ASHA recorded them; returns how many lines were replayed. A trial that was still
        running restarts from step 0 and reports again, so its earlier reports are left out."""
        path = Path(self.journal)
        if not path.exists():
            warnings.warn(
                f"the ASHA rung record {path} is missing (was the search folder moved?): trials that restart "
                "meet rungs without the earlier trials' scores",
                stacklevel=2,
            )
            return 0
        time_attr, metric = self.journal_keys
        entries = [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line.strip()]
        ended = {entry["trial_id"] for entry in entries if entry["event"] in ("complete", "remove")}
        replayed = [entry for entry in entries if entry["trial_id"] in ended]
        trials: dict[str, SimpleNamespace] = {}
        for entry in replayed:
            trial = trials.get(entry["trial_id"])
            if trial is None:
                trial = trials[entry["trial_id"]] = SimpleNamespace(trial_id=entry["trial_id"])
                ASHAScheduler.on_trial_add(self, None, trial)
            result = {time_attr: entry["step"], metric: entry["score"]} if "step" in entry else {}
            if entry["event"] == "result":
                ASHAScheduler.on_trial_result(self, None, trial, result)
            elif entry["event"] == "complete" and result:
                ASHAScheduler.on_trial_complete(self, None, trial, result)
            else:  # removed, or completed without a score: ASHA only forgets it
                ASHAScheduler.on_trial_remove(self, None, trial)
        return len(replayed)


def start_journal(journal: str | Path) -> None:
    """A new search: an empty journal (one an earlier, unresumable search left is replaced)."""
    path = Path(journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf8")
