"""JournaledASHA: Ray Tune's ASHA whose rung record survives a pickle round trip (a restored Tuner)."""

import json
import pickle
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler

from spacy_unmasked.ray.asha import JournaledASHA, start_journal

SETTINGS = {"time_attr": "step", "metric": "score", "mode": "max", "max_t": 8, "grace_period": 2, "reduction_factor": 2}
# before the interruption: (trial, step, score) reports; a trial's None ends it (Tune's on_trial_complete)
ENDED = [("a", 2, 0.9), ("a", 4, 0.9), ("b", 2, 0.8), ("b", 4, 0.7), ("c", 2, 0.3), ("c", None, 0.3)]
ENDED += [("a", 8, 0.95), ("a", None, 0.95), ("b", None, 0.7)]
RUNNING = [("g", 2, 0.1)]  # g was running when the search stopped: it restarts from step 0
# after the interruption: g again, and new trials
PROBES = [("g", 2, 0.1), ("d", 2, 0.2), ("d", 4, 0.99), ("e", 2, 0.85), ("e", 4, 0.6), ("f", 2, 0.95), ("f", 4, 0.95)]


def report(scheduler, reports) -> list[str]:
    """Feed reports as Tune does (a trial is added before its first report); ASHA's decisions."""
    decisions, seen = [], set()
    for trial_id, step, score in reports:
        trial = SimpleNamespace(trial_id=trial_id)
        if trial_id not in seen:
            seen.add(trial_id)
            scheduler.on_trial_add(None, trial)
        if step is None:
            scheduler.on_trial_complete(None, trial, {"step": 8, "score": score})
        else:
            decisions.append(scheduler.on_trial_result(None, trial, {"step": step, "score": score}))
    return decisions


def test_restored_scheduler_replays_the_ended_trials_and_decides_as_without_the_interruption(tmp_path):
    journal = tmp_path / "asha-journal.jsonl"
    start_journal(journal)
    scheduler = JournaledASHA(journal=journal, **SETTINGS)
    pickled_at_start = pickle.dumps(scheduler)  # what Tune saves with the Tuner
    assert report(scheduler, ENDED)[4] == "STOP"  # c is below a and b at the first rung
    report(scheduler, RUNNING)
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(x["trial_id"], x.get("step"), x["score"]) for x in lines if x["event"] == "result"] == [
        entry for entry in ENDED + RUNNING if entry[1] is not None
    ]
    assert [x["trial_id"] for x in lines if x["event"] == "complete"] == ["c", "a", "b"]

    restored = pickle.loads(pickled_at_start)  # a restored Tuner unpickles the scheduler
    uninterrupted = ASHAScheduler(**SETTINGS)  # saw the ended trials only; g starts afresh
    report(uninterrupted, ENDED)
    expected = report(uninterrupted, PROBES)
    assert expected[0] == "STOP"  # the restarted g loses at the first rung, as it would have
    assert report(restored, PROBES) == expected
    assert report(ASHAScheduler(**SETTINGS), PROBES) != expected  # a restore that forgot the rungs


def test_a_missing_journal_is_named_when_the_scheduler_is_restored(tmp_path):
    journal = tmp_path / "moved" / "asha-journal.jsonl"
    scheduler = JournaledASHA(journal=journal, **SETTINGS)
    pickled = pickle.dumps(scheduler)
    with pytest.warns(UserWarning, match=r"asha-journal.jsonl is missing \(was the search folder moved\?\)"):
        pickle.loads(pickled)


def test_a_new_search_starts_with_an_empty_journal(tmp_path):
    journal = tmp_path / "asha-journal.jsonl"
    journal.write_text(json.dumps({"trial_id": "old", "step": 2, "score": 1.0}) + "\n")
    start_journal(journal)
    scheduler = pickle.loads(pickle.dumps(JournaledASHA(journal=journal, **SETTINGS)))
    assert report(scheduler, [("x", 2, 0.1)]) == ["CONTINUE"]  # no old score to lose to
