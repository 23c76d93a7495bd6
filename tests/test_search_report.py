"""scripts/search_report.py on synthetic study metrics and a synthetic search: the pick against
the study's best (one seed SD, the spec's own or pooled) and the search's share of the study's updates."""

import json
import math
import statistics
from pathlib import Path

import pytest

from .scripts import load_script
from .test_report import metrics, write_dir

pytest.importorskip("matplotlib")

STEPS = 150
# study F1 per seed; 0011 is the best (mean 0.45, SD 0.02); 1011 has one seed
STUDY = {"0000": [0.33, 0.34, 0.35], "0011": [0.43, 0.45, 0.47], "0111": [0.44, 0.45, 0.46], "1011": [0.44]}


@pytest.fixture(scope="module")
def search_report():
    return load_script("search_report")


def study_runs(study: dict[str, list[float]]) -> dict[str, dict]:
    runs = {}
    for spec, scores in study.items():
        for seed, f in enumerate(scores):
            run = metrics(spec, f, f, f, seed=seed)
            runs[f"{spec}.seed{seed}"] = {**run, "spec": spec, "max_steps": STEPS}
    runs["0011+r1.seed0"] = {**metrics("0011+r1", 0.60, 0.6, 0.6, seed=0), "spec": "0011+r1", "max_steps": STEPS}
    return runs


def trial(spec: str, steps: int, score: float) -> dict:
    row = {"spec": spec, "seed": 0, "status": "finished", "steps": steps, "best_score": score}
    return {**row, "stopped_early": steps < STEPS}


def write_search(directory: Path, pick_f: float, trials: list[dict]) -> Path:
    directory.mkdir()
    best = max(trials, key=lambda row: row["best_score"])
    search = {"budget": STEPS, "grace": 30, "reduction_factor": 3, "best": best, "trials": trials}
    (directory / "search.json").write_text(json.dumps(search), encoding="utf8")
    pick = metrics(best["spec"], pick_f, 0.5, 0.4, seed=0)
    (directory / "pick.json").write_text(json.dumps(pick), encoding="utf8")
    return directory


OTHERS = [trial(f"{i:04b}", 30, 0.3) for i in range(16) if i not in (3, 7)]
TRIALS = [trial("0011", 150, 0.50), trial("0111", 90, 0.48), *OTHERS]


def test_pick_within_one_sd_and_share_of_the_planned_study(search_report, tmp_path):
    study = write_dir(tmp_path / "study", study_runs(STUDY))
    search = write_search(tmp_path / "search", 0.44, TRIALS)
    out = tmp_path / "reports" / "search.md"
    search_report.main(study, search, out)
    text = out.read_text(encoding="utf8")
    sd = statistics.stdev(STUDY["0011"])
    assert f"| study's best | `0011` (groups 3-4) | 45.0 ± {100 * sd:.1f} |" in text
    assert "| search's pick | `0011` (groups 3-4) | 44.0 | 50.0 | 40.0 | 660 |" in text  # 150 + 90 + 14 x 30
    assert "Within one seed SD of the study's best: **yes**: the pick's test F1 is -1.0 points" in text
    assert f"one SD is {100 * sd:.1f} (the SD of `0011` over its 3 seeds)" in text
    # planned: 16 specs x 3 seeds x 150 = 7200; run: 10 plain runs x 150 (the variant is left out)
    assert "At most 30% of the study's compute: **yes**: 660 updates are 9% of the 7,200" in text
    assert "(28% of one seed's 2,400)" in text and "1,500 run (7,200 for 16 specs x 3 seeds)" in text
    assert "| 0111 | 90 | 48.0 | yes |" in text and "ASHA over 16 trials (16 specs)" in text


def test_pick_beyond_one_sd_or_over_budget_says_no(search_report, tmp_path):
    runs = study_runs(STUDY)
    runs["none.seed3"] = {**metrics("none", 0.34, 0.34, 0.34, seed=3), "max_steps": STEPS}  # none = 0000: counted
    study = write_dir(tmp_path / "study", runs)
    search = write_search(tmp_path / "search", 0.42, [trial(f"{i:04b}", 150, 0.3 + i / 100) for i in range(16)])
    out = tmp_path / "search.md"
    search_report.main(study, search, out, study_seeds=1)
    text = out.read_text(encoding="utf8")
    assert "| 1,650 run (2,400 for 16 specs x 1 seeds) |" in text  # 11 plain runs; the +r1 variant is not
    assert "Within one seed SD of the study's best: **no**: the pick's test F1 is -3.0 points" in text
    assert "**no**: 2,400 updates are 100% of the 2,400 of 16 specs x 1 seeds" in text
    assert "The study's F1 for the picked spec `1111`" not in text  # 1111 is not in the study


def test_one_seed_best_is_judged_by_the_pooled_sd(search_report, tmp_path):
    study = dict(STUDY, **{"1011": [0.50]})  # the best now has one seed
    search = write_search(tmp_path / "search", 0.47, TRIALS)
    out = tmp_path / "search.md"
    search_report.main(write_dir(tmp_path / "study", study_runs(study)), search, out)
    text = out.read_text(encoding="utf8")
    sds = [statistics.stdev(STUDY[spec]) for spec in ("0000", "0011", "0111")]
    pooled = math.sqrt(sum(sd * sd for sd in sds) / 3)
    assert f"one SD is {100 * pooled:.1f} (`1011` has one seed, so the pooled SD of the 3 specs with 2+ seeds)" in text
    assert "**no**: the pick's test F1 is -3.0 points" in text


def test_missing_inputs_exit_naming_the_fix(search_report, tmp_path):
    study = write_dir(tmp_path / "study", study_runs(STUDY))
    (tmp_path / "search").mkdir()
    with pytest.raises(SystemExit, match=r"search\.json is missing: copy the search's OUTPUT/search\.json there"):
        search_report.main(study, tmp_path / "search", tmp_path / "out.md")
    (tmp_path / "search" / "search.json").write_text(json.dumps({"best": None, "trials": []}), encoding="utf8")
    with pytest.raises(SystemExit, match=r"pick\.json is missing: score the search's model-best on the test split"):
        search_report.main(study, tmp_path / "search", tmp_path / "out.md")
    (tmp_path / "search" / "pick.json").write_text(json.dumps(metrics("x", 0.5, 0.5, 0.5)), encoding="utf8")
    with pytest.raises(SystemExit, match=r"search\.json has no finished best trial"):
        search_report.main(study, tmp_path / "search", tmp_path / "out.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="No metrics JSON files in"):
        search_report.main(tmp_path / "empty", tmp_path / "search", tmp_path / "out.md")
    assert not (tmp_path / "out.md").exists()
