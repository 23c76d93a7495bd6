"""scripts/search.py and spacy-unmasked.TuneReporter.v1: a successive-halving (ASHA) search
over unmask specs on Ray Tune, with real `spacy train` trials on a tiny model."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import spacy
import typer

from spacy_unmasked.ray import tune as tune_module

from .helpers import write_ner_corpus
from .scripts import SCRIPTS, load_script

CONFIGS = Path(__file__).parent.parent / "configs"
BUDGET, GRACE, EVAL_FREQUENCY, RF = 32, 16, 4, 2


@pytest.fixture(scope="module")
def search():
    return load_script("search")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """train and dev from TRAIN; test.spacy is not a DocBin, so a search that read it would fail."""
    path = write_ner_corpus(tmp_path_factory.mktemp("corpus"), splits=("train", "dev"))
    (path / "test.spacy").write_bytes(b"the search must never read the test split")
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_llama_dir):
    """configs/ner_qlora.cfg on the tiny model (eager attention, no warm-up, so a few steps learn)."""
    cfg = spacy.util.load_config(CONFIGS / "ner_qlora.cfg", interpolate=False)
    cfg["paths"]["base_model"] = str(tiny_llama_dir)
    cfg["components"]["transformer"]["model"]["attn_implementation"] = "eager"
    cfg["training"]["optimizer"]["learn_rate"]["warmup_steps"] = 0
    # the learning trials must beat the lr-0 ones by step 16 on the tiny model: they do with bfloat16
    # 4-bit compute (float32 compute, which "auto" gives on CPUs without bfloat16, learns later there)
    cfg["components"]["transformer"]["model"]["quantization"]["compute_dtype"] = "bfloat16"
    path = tmp_path_factory.mktemp("config") / "ner.cfg"
    cfg.to_disk(path)
    return path


def test_reporter_wraps_the_console_logger_and_reports_each_evaluation(monkeypatch):
    reports = []
    monkeypatch.setattr(tune_module, "tune_report", lambda: reports.append)
    nlp = spacy.blank("en")
    nlp.add_pipe("ner")
    stdout = io.StringIO()
    log_step, finalize = tune_module.create_tune_reporter()(nlp, stdout, io.StringIO())
    log_step(None)  # a step without evaluation
    assert reports == []
    info = {"epoch": 1, "step": 40, "score": 0.625, "other_scores": {"ents_f": 0.625}, "losses": {"ner": 3.0}}
    log_step(info)
    finalize()
    assert reports == [{"score": 0.625, "step": 40}]
    assert "SCORE" in stdout.getvalue() and "0.62" in stdout.getvalue()  # the console table stays


def test_reporter_is_registered_and_needs_ray_only_when_created():
    assert spacy.registry.loggers.get("spacy-unmasked.TuneReporter.v1") is tune_module.create_tune_reporter
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import spacy_unmasked.ray.tune as t\n"
        "try:\n    t.create_tune_reporter()\nexcept ImportError as err:\n    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'spacy-unmasked[ray]'" in result.stdout


def test_reporter_logger_wraps_the_configs_own_logger_once():
    own = {"@loggers": "spacy.ConsoleLogger.v3", "progress_bar": None}
    wrapped = tune_module.reporter_logger(own)
    assert wrapped == {"@loggers": "spacy-unmasked.TuneReporter.v1", "logger": own}
    assert tune_module.reporter_logger(wrapped) == wrapped
    assert tune_module.reporter_logger({}) == {"@loggers": "spacy-unmasked.TuneReporter.v1"}


def test_reporter_reports_the_dev_score_spacy_computes(config, corpus, tmp_path, monkeypatch, capsys):
    """In a real `spacy train`: the reports are the evaluations spaCy logs, and the best is model-best's."""
    from spacy.cli.train import train

    reports = []
    monkeypatch.setattr(tune_module, "tune_report", lambda: reports.append)
    jsonl = tmp_path / "log.jsonl"
    console = {"@loggers": "spacy.ConsoleLogger.v3", "progress_bar": None, "output_file": str(jsonl)}
    overrides = {
        "paths.train": str(corpus / "train.spacy"),
        "paths.dev": str(corpus / "dev.spacy"),
        "training.max_steps": 6,
        "training.eval_frequency": 3,
        "training.optimizer.learn_rate.total_steps": 6,
        "training.logger": tune_module.reporter_logger(console),
    }
    train(config, tmp_path / "out", overrides=overrides)
    logged = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [report["step"] for report in reports] == [0, 3, 6]
    assert [report["step"] for report in reports] == [row["step"] for row in logged]
    # spaCy's log file rounds to 10 digits
    assert [report["score"] for report in reports] == pytest.approx([row["score"] for row in logged], abs=1e-9)
    meta = json.loads((tmp_path / "out" / "model-best" / "meta.json").read_text())
    assert max(report["score"] for report in reports) == pytest.approx(meta["performance"]["ents_f"])  # weight 1
    assert "SCORE" in capsys.readouterr().out


def test_candidates_and_their_overrides(search):
    candidates = search.make_candidates(["0000", "0011"], [1, 2], [1e-3], [0])
    assert [(c["spec"], c["repeat"]) for c in candidates] == [("0000", 1), ("0000", 2), ("0011", 1), ("0011", 2)]
    assert tune_module.trial_name(candidates[1]) == "0000.repeat2.lr0.001.seed0"
    key = "training.optimizer.learn_rate.initial_rate"
    assert tune_module.candidate_overrides(candidates[1], key) == {
        "components.transformer.model.unmask": "0000",
        "system.seed": 0,
        "components.transformer.model.repeat": 2,
        key: 1e-3,
    }
    plain = search.make_candidates(["all"], None, None, [3])
    assert plain == [{"spec": "all", "repeat": None, "lr": None, "seed": 3}]
    assert tune_module.trial_name(plain[0]) == "all.seed3"
    assert tune_module.candidate_overrides(plain[0], None) == {
        "components.transformer.model.unmask": "all",
        "system.seed": 3,
    }  # no repeat override unless --repeat is given


def test_learning_rate_setting(search, tmp_path):
    ner = spacy.util.load_config(CONFIGS / "ner.cfg", interpolate=False)
    assert search.learn_rate_key(ner, Path("ner.cfg")) == "training.optimizer.learn_rate.initial_rate"
    constant = {"training": {"optimizer": {"learn_rate": 0.001}}}
    assert search.learn_rate_key(constant, Path("c.cfg")) == "training.optimizer.learn_rate"
    odd = {"training": {"optimizer": {"learn_rate": {"@schedules": "x"}}}}
    with pytest.raises(typer.BadParameter, match=r"--lr sets .*initial_rate, but c\.cfg has learn_rate"):
        search.learn_rate_key(odd, Path("c.cfg"))


def test_repeat_needs_an_architecture_with_repeat(search):
    @spacy.registry.architectures("test-search.WithRepeat.v1")
    def with_repeat(name: str, repeat: int = 1):
        return None

    config = {"components": {"transformer": {"model": {"@architectures": "test-search.WithRepeat.v1"}}}}
    search.check_repeat(config, Path("r.cfg"))  # no error
    config["components"]["transformer"]["model"]["@architectures"] = "spacy-unmasked.UnmaskedTransformer.v2"
    search.check_repeat(config, Path("r.cfg"))
    config["components"]["transformer"]["model"]["@architectures"] = "spacy-unmasked.UnmaskedTransformer.v1"
    with pytest.raises(typer.BadParameter, match=r"--repeat .*UnmaskedTransformer.v1\) has no repeat setting"):
        search.check_repeat(config, Path("r.cfg"))


def test_schedule_checks(search):
    assert search.default_grace(600, 2, 100) == 100
    assert search.default_grace(2000, 3, 100) == 200
    search.check_schedule(32, 16, 2, 4)
    with pytest.raises(typer.BadParameter, match=r"--grace \(10\) must be a multiple of the evaluation frequency"):
        search.check_schedule(32, 10, 2, 4)
    with pytest.raises(typer.BadParameter, match=r"--grace \(64\) must not exceed --budget \(32\)"):
        search.check_schedule(32, 64, 2, 4)
    with pytest.raises(typer.BadParameter, match="--reduction-factor must be at least 2"):
        search.check_schedule(32, 16, 1, 4)


def test_first_rung_comes_after_the_warmup(search):
    """The default grace is the first evaluation after the learning-rate warmup (WNUT-16: at the end of a
    30-step warmup the dev F1 of all specs was 0-7); an explicit grace within it warns."""
    assert search.default_grace(150, 3, 30, warmup=30) == 60
    assert search.default_grace(150, 3, 30, warmup=0) == 30
    assert search.default_grace(600, 2, 100, warmup=150) == 200
    assert search.default_grace(60, 3, 30, warmup=90) == 60  # never past the budget
    config = {"training": {"optimizer": {"learn_rate": {"@schedules": "warmup_linear.v1", "warmup_steps": 30}}}}
    assert search.warmup_steps(config, {}) == 30
    assert search.warmup_steps(config, {"training.optimizer.learn_rate.warmup_steps": 5}) == 5
    assert search.warmup_steps({"training": {"optimizer": {"learn_rate": 0.001}}}, {}) == 0
    with pytest.warns(UserWarning, match=r"first rung \(step 30\) is within the learning-rate warmup \(30 steps\)"):
        search.warn_rung_in_warmup(30, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.warn_rung_in_warmup(60, 30)
        search.warn_rung_in_warmup(4, 0)


def test_trial_rows_and_table(search):
    """A row per trial from Tune's results: one entry per evaluation step, spaCy's model-best (the last of
    equal best scores), stopped early below the budget; a failed trial shows its exception line."""
    import pandas as pd

    candidate = {"spec": "0011", "repeat": None, "lr": 0.01, "seed": 0}
    # a trial restarted after an interruption reports steps 0 and 4 twice
    frame = pd.DataFrame({"step": [0, 4, 0, 4, 8], "score": [0.1, 0.5, 0.1, 0.5, 0.5]})
    stopped = SimpleNamespace(config={"candidate": candidate}, metrics_dataframe=frame, error=None, metrics={})
    row = search.trial_row(stopped, budget=16)
    assert (row["trial"], row["status"], row["steps"], row["stopped_early"]) == (
        "0011.lr0.01.seed0",
        "finished",
        8,
        True,
    )
    assert (row["best_score"], row["best_step"]) == (0.5, 8)
    assert row["curve"] == [[0, 0.1], [4, 0.5], [8, 0.5]]
    full = {"spec": "0000", "repeat": None, "lr": 0.01, "seed": 0}
    frame = pd.DataFrame({"step": [0, 8, 16], "score": [0.2, 0.7, 0.6]})
    finished = SimpleNamespace(config={"candidate": full}, metrics_dataframe=frame, error=None, metrics={})
    assert search.trial_row(finished, budget=16)["stopped_early"] is False
    error = RuntimeError(
        "ray::ImplicitFunc.train() (pid=1)\n  File x, line 1\n    raise\n"
        "RuntimeError: Trial 1111.lr0.01.seed0: spacy train exited with 1; its output is in t.log"
    )
    broken = {"spec": "1111", "repeat": None, "lr": 0.01, "seed": 0}
    failed = SimpleNamespace(config={"candidate": broken}, metrics_dataframe=None, error=error, metrics={})
    failed_row = search.trial_row(failed, budget=16)
    assert (
        failed_row["error"]
        == "RuntimeError: Trial 1111.lr0.01.seed0: spacy train exited with 1; its output is in t.log"
    )
    rows = search.ranked([failed_row, row, search.trial_row(finished, budget=16)])
    assert [r["spec"] for r in rows] == ["0000", "0011", "1111"]
    settings = {"config": "c.cfg", "corpus": "c", "budget": 16, "grace": 8, "reduction_factor": 2, "eval_frequency": 4}
    table = search.markdown(rows, settings)
    assert "| 1 | 0000 |  | 0.01 | 0 | 16 | 0.7000 | 8 | no |" in table
    assert "| 2 | 0011 |  | 0.01 | 0 | 8 | 0.5000 | 8 | yes |" in table
    assert "| 3 | 1111 |  | 0.01 | 0 |  | error: RuntimeError: Trial 1111" in table


def invoke(search, args):
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command()(search.main)
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.mark.parametrize(
    "specs,bad",
    [("0011,0021", "'0021'"), ("none,alll", "'alll'"), ("bits:x", "'bits:x'"), (",", "no spec given")],
)
def test_bad_spec_list_fails_before_ray_starts(search, config, corpus, tmp_path, monkeypatch, specs, bad):
    monkeypatch.setattr(search, "connect", lambda *args: pytest.fail("Ray started"))
    result = invoke(search, [config, corpus, tmp_path / "out", "--specs", specs])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.replace("│", " ").split())
    assert bad in output and "--specs takes comma-separated unmask specs: none, all, a bit string" in output
    assert not (tmp_path / "out").exists()


def test_unreachable_address_fails_fast_with_how_to_start_a_cluster(config, corpus, tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            SCRIPTS / "search.py",
            config,
            corpus,
            tmp_path,
            "--specs",
            "0011",
            "--address",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Cannot reach a Ray cluster at --address 127.0.0.1:1" in result.stderr
    assert "ray start --head" in result.stderr and "leave out --address" in result.stderr
    assert time.monotonic() - started < 60


def command(config, corpus, output):
    """A search of 2 specs x 2 learning rates, one trial at a time (so ASHA's decisions are deterministic);
    the learning rate 0 cannot learn, so those trials are likely, not certain, to lose at the first rung."""
    return [
        sys.executable,
        str(SCRIPTS / "search.py"),
        str(config),
        str(corpus),
        str(output),
        "--specs",
        "0000,0011",
        "--lr",
        "0.01,0",
        "--budget",
        str(BUDGET),
        "--grace",
        str(GRACE),
        "--eval-frequency",
        str(EVAL_FREQUENCY),
        "--reduction-factor",
        str(RF),
        "--max-concurrent",
        "1",
        "--num-cpus",
        "2",
    ]


@pytest.fixture(scope="module")
def interrupted_search(config, corpus, tmp_path_factory):
    """The search, interrupted (Ctrl+C) once its second trial has started, then run again to the end."""
    output = tmp_path_factory.mktemp("search")
    log_path = tmp_path_factory.mktemp("logs") / "interrupted.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    second = output / "trials" / "0000.lr0.seed0" / "train.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command(config, corpus, output), stdout=log, stderr=subprocess.STDOUT, env=env)
        while not second.exists() and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        interrupted = process.wait(timeout=300)
    first_log = output / "trials" / "0000.lr0.01.seed0" / "train.log"
    before = {"returncode": interrupted, "first_log": first_log.stat().st_mtime_ns}
    before["log"] = log_path.read_text()[-3000:]
    before["statuses"] = statuses(output / "tune")
    resumed = subprocess.run(command(config, corpus, output), capture_output=True, text=True, env=env, timeout=600)
    return output, before, resumed


def statuses(experiment: Path) -> dict[str, str]:
    """Tune's saved status of each trial, by spec/lr."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(experiment)).trials
    return {f"{t.config['candidate']['spec']}/{t.config['candidate']['lr']}": t.status for t in trials}


def asha_oracle(rows_in_run_order):
    """ASHA's decisions for trials run one at a time: a trial stops at the first rung where its score
    is below the (1 - 1/RF) percentile of the scores recorded there before it, else trains to the budget."""
    rungs = [GRACE * RF**k for k in range(int(np.log(BUDGET / GRACE) / np.log(RF)) + 1) if GRACE * RF**k < BUDGET]
    recorded = {rung: [] for rung in rungs}
    expected = {}
    for row in rows_in_run_order:
        curve = dict(map(tuple, row["curve"]))
        expected[row["trial"]] = BUDGET
        for rung in rungs:
            score = curve[rung]
            cutoff = np.nanpercentile(recorded[rung], (1 - 1 / RF) * 100) if recorded[rung] else None
            recorded[rung].append(score)
            if cutoff is not None and score < cutoff:
                expected[row["trial"]] = rung
                break
    return expected


def test_search_interrupted_and_resumed_stops_losers_and_keeps_the_best(interrupted_search, search):
    output, before, resumed = interrupted_search
    assert before["returncode"] == 1 and before["statuses"]["0000/0.01"] == "TERMINATED", before["log"]
    assert "trials unfinished: run the same command again to resume it" in before["log"]
    assert before["statuses"]["0000/0.0"] != "TERMINATED"  # interrupted while the second trial ran
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming the search" in resumed.stdout
    # the finished trial was kept, not trained again
    assert (output / "trials" / "0000.lr0.01.seed0" / "train.log").stat().st_mtime_ns == before["first_log"]

    table = json.loads((output / "search.json").read_text())
    rows = {row["trial"]: row for row in table["trials"]}
    assert set(rows) == {"0000.lr0.01.seed0", "0000.lr0.seed0", "0011.lr0.01.seed0", "0011.lr0.seed0"}
    assert all(row["status"] == "finished" for row in rows.values())
    # every decision is ASHA's rule: the first trial, which had no one to lose to, got the full budget, and
    # the losers stopped at a rung with fewer updates (which trials lose depends on the tiny model's dev
    # scores, and so on the CPU's bfloat16 support: the rule is checked, not the names)
    assert (rows["0000.lr0.01.seed0"]["steps"], rows["0000.lr0.01.seed0"]["stopped_early"]) == (BUDGET, False)
    run_order = [rows[tune_module.trial_name(c)] for c in table["candidates"]]
    assert {name: row["steps"] for name, row in rows.items()} == asha_oracle(run_order)
    stopped = [name for name, row in rows.items() if row["stopped_early"]]
    assert stopped and all(rows[name]["steps"] < BUDGET for name in stopped)
    assert all(row["steps"] == BUDGET for name, row in rows.items() if name not in stopped)
    for name, row in rows.items():
        assert row["best_score"] == max(score for _, score in row["curve"])
        assert max(step for step, _ in row["curve"]) == row["steps"]
        # every trial's best pipeline is on disk, stopped or not: spaCy saves it before the report Tune stops at
        meta = json.loads((output / "trials" / name / "model-best" / "meta.json").read_text())
        assert meta["performance"]["ents_f"] == pytest.approx(row["best_score"])

    # the best trial's pipeline is OUTPUT/model-best
    best = table["best"]
    assert best == table["trials"][0] and best["best_score"] == max(row["best_score"] for row in rows.values())
    nlp = spacy.load(output / "model-best")
    assert nlp.config["components"]["transformer"]["model"]["unmask"] == best["spec"]
    assert nlp.config["system"]["seed"] == best["seed"]
    assert nlp.meta["performance"]["ents_f"] == pytest.approx(best["best_score"])
    assert nlp("Jane Smith visited Berlin.") is not None

    markdown = (output / "search.md").read_text()
    assert "| 1 | " + best["spec"] + " |" in markdown and markdown.count("| yes |") == len(stopped)
    assert "test split is not used" in markdown


def test_rerun_of_a_finished_search_trains_nothing_and_gives_the_same_table(interrupted_search, search, config, corpus):
    output, _, _ = interrupted_search
    tables = {name: (output / name).read_text() for name in ("search.json", "search.md")}
    logs = {path: path.stat().st_mtime_ns for path in (output / "trials").glob("*/train.log")}
    assert len(logs) == 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    again = subprocess.run(command(config, corpus, output), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in logs} == logs  # no trial ran again
    assert {name: (output / name).read_text() for name in tables} == tables
    # another search in the same folder is refused before Ray starts
    with pytest.raises(search.SearchError, match=r"holds a search with other settings \(budget, overrides differ\)"):
        search.search(
            config, corpus, output, specs="0000,0011", seeds=[0], lrs=[0.01, 0.0], budget=64, grace=16, eval_frequency=4
        )
