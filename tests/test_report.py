"""scripts/report.py on synthetic metrics: mean ± SD over seeds (checked against the
statistics module), old single-seed files, the seed-spread marks and the heatmap."""

import json
import re
import statistics
from pathlib import Path

import pytest

from .scripts import load_script

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report():
    return load_script("report")


def metrics(name: str, f: float, p: float, r: float, *, seed: int | None = None, wps: float = 850.0) -> dict:
    """evaluate.py's JSON layout (scores under "scores", the main task under "main")."""
    per_type = {"person": {"p": p, "r": r, "f": f, "support": 40}, "location": {"p": p, "r": r, "f": f, "support": 30}}
    return {
        "name": name,
        "model": f"training/{name}/model-best",
        "data": "corpus/wnut16/test.spacy",
        "docs": 120,
        "seed": seed,
        "words_per_second": wps,
        "main": "ents",
        "scores": {"ents": {"p": p, "r": r, "f": f, "support": 70, "predicted": 65, "per_type": per_type}},
    }


def old_metrics(name: str, f: float, p: float, r: float, wps: float = 850.0) -> dict:
    """The layout of metrics files written before evaluate.py used spaCy's Scorer (no seed)."""
    return {"name": name, "docs": 120, "words_per_second": wps, "strict_span": {"p": p, "r": r, "f": f}}


# F1 per seed. 0000 vs 0011: far apart (beyond the spread); 0000 vs 0001: overlapping.
F1 = {"0000": [0.48, 0.50, 0.52], "0001": [0.47, 0.53, 0.56], "0011": [0.56, 0.57, 0.585]}
P = {"0000": [0.50, 0.52, 0.54], "0001": [0.50, 0.50, 0.53], "0011": [0.60, 0.60, 0.63]}
R = {"0000": [0.46, 0.48, 0.50], "0001": [0.45, 0.56, 0.59], "0011": [0.52, 0.54, 0.545]}


def sweep_runs() -> dict[str, dict]:
    runs = {}
    for spec in F1:
        for seed in range(3):
            wps = 900.0 + 10 * seed
            runs[f"{spec}.seed{seed}"] = metrics(spec, F1[spec][seed], P[spec][seed], R[spec][seed], seed=seed, wps=wps)
            runs[f"{spec}.seed{seed}"]["spec"] = spec
    runs["all"] = old_metrics("1111", 0.52333, 0.56, 0.49114)  # an old single file: one seed, no SD
    return runs


BASELINES = {
    **{
        f"cnn.seed{k}": metrics("spaCy CNN tok2vec", f, f, f, seed=k, wps=1200.0)
        for k, f in enumerate([0.40, 0.44, 0.42])
    },
    "encoder": old_metrics("all-MiniLM-L6-v2 encoder", 0.57767, 0.60681, 0.55123),
}


def write_dir(directory: Path, runs: dict) -> Path:
    directory.mkdir()
    for stem, data in runs.items():
        (directory / f"{stem}.json").write_text(json.dumps(data), encoding="utf8")
    return directory


def row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is FIRST_CELL (bold or not, maybe with a "(best ...)" note)."""
    pattern = rf"\| (\*\*)?{re.escape(first_cell)}(\*\*)? (\||\()"
    (line,) = [ln for ln in text.splitlines() if re.match(pattern, ln)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def mean_sd(values: list[float]) -> str:
    """The oracle: Python's statistics module, sample SD, in points with one decimal."""
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def test_report_shows_mean_and_sd_over_seeds_and_marks_differences_beyond_the_spread(report, tmp_path, capsys):
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", sweep_runs()), out, baselines=write_dir(tmp_path / "b", BASELINES))
    text = (out / "report.md").read_text(encoding="utf8")

    spec_rows = [ln for ln in text.splitlines() if re.match(r"\| (\*\*)?[01]+\b", ln)]
    assert [re.search(r"[01]+", ln).group() for ln in spec_rows] == ["0000", "0001", "0011", "1111"]
    d0011 = 100 * (statistics.fmean(F1["0011"]) - statistics.fmean(F1["0000"]))
    assert row(text, "0000") == [
        "0000", "none (causal)", mean_sd(F1["0000"]), mean_sd(P["0000"]), mean_sd(R["0000"]), "3 (0, 1, 2)",
        "n/a", "910", "—", f"{-d0011:+.1f}†",
    ]  # fmt: skip
    # 0001: +2.0 points, within SD(0001) + SD(0000) = 4.6 + 2.0: no mark; -5.2 vs the best 0011, within
    # SD(0001) + SD(0011) = 4.6 + 1.3: no mark either
    d0001 = 100 * (statistics.fmean(F1["0001"]) - statistics.fmean(F1["0000"]))
    b0001 = 100 * (statistics.fmean(F1["0001"]) - statistics.fmean(F1["0011"]))
    assert f"{b0001:+.1f}" == "-5.2"
    assert row(text, "0001")[2] == mean_sd(F1["0001"]) and row(text, "0001")[-2:] == [f"{d0001:+.1f}", f"{b0001:+.1f}"]
    # 0011: +7.2 points > SD(0011) + SD(0000) = 1.3 + 2.0: marked, and the best (bold)
    assert row(text, "0011")[0] == "**0011** (best)"
    assert row(text, "0011")[2] == f"**{mean_sd(F1['0011'])}**"
    assert row(text, "0011")[-2:] == [f"**{d0011:+.1f}†**", "**—**"]
    assert text.count("(best)") == 1
    # the old single file: one value, no SD, one seed, and no mark (no spread to compare)
    b1111 = 100 * (0.52333 - statistics.fmean(F1["0011"]))
    one_seed = ["1111", "groups 1-4", "52.3", "56.0", "49.1", "1", "n/a", "850", "+2.3", f"{b1111:+.1f}"]
    assert row(text, "1111") == one_seed

    cnn = [0.40, 0.44, 0.42]
    bcnn = 100 * (statistics.fmean(cnn) - statistics.fmean(F1["0011"]))
    assert row(text, "spaCy CNN tok2vec") == [
        "spaCy CNN tok2vec", mean_sd(cnn), mean_sd(cnn), mean_sd(cnn), "3 (0, 1, 2)", "n/a", "1,200", "-8.0†",
        f"{bcnn:+.1f}†",
    ]  # fmt: skip
    bencoder = 100 * (0.57767 - statistics.fmean(F1["0011"]))
    encoder = ["all-MiniLM-L6-v2 encoder", "57.8", "60.7", "55.1", "1", "n/a", "850", "+7.8", f"{bencoder:+.1f}"]
    assert row(text, "all-MiniLM-L6-v2 encoder") == encoder
    summary = (
        f"Best configuration: `0011` (groups 3-4), F1 {mean_sd(F1['0011'])} over 3 seeds, {d0011:+.1f} points vs. "
        f"the fully causal `0000` ({mean_sd(F1['0000'])}); the difference exceeds the seed spread."
    )
    assert summary in text.splitlines()
    assert "|Δ| > SD(spec) + SD(causal), and in the last column |Δ| > SD(spec) + SD(best row)" in text

    stdout = capsys.readouterr().out
    assert "4 configurations (10 runs)" in stdout and "exceeds the seed spread" in stdout
    png = (out / "heatmap.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_heatmap_marks_only_columns_beyond_the_spread(report, tmp_path):
    specs = report.normalise_specs(sweep_runs())
    fig = report.draw_heatmap(specs, tmp_path / "heatmap.png")
    (ax,) = [a for a in fig.axes if a.get_xlabel()]
    f1_texts = [t for t in ax.texts if not t.get_text().startswith("P ")]
    labels = {t.get_text().split("\n")[0]: t.get_text() for t in f1_texts}
    mean = {spec: f"{100 * statistics.fmean(values):.1f}" for spec, values in F1.items()}
    sd = {spec: f"{100 * statistics.stdev(values):.1f}" for spec, values in F1.items()}
    # P and R over each column, mean±SD from the statistics module (one seed: the value alone)
    pr = [t.get_text() for t in ax.texts if t.get_text().startswith("P ")]
    oracle = {spec: mean_sd(P[spec]).replace(" ± ", "±") + "\nR " + mean_sd(R[spec]).replace(" ± ", "±") for spec in F1}
    assert pr == [f"P {oracle[spec]}" for spec in ("0000", "0001", "0011")] + ["P 56.0\nR 49.1"]
    assert labels == {
        mean["0000"]: f"{mean['0000']}\n±{sd['0000']}",
        mean["0001"]: f"{mean['0001']}\n±{sd['0001']}",
        f"{mean['0011']}†": f"{mean['0011']}†\n±{sd['0011']}",  # the only spec beyond the spread
        "52.3": "52.3",  # one seed: no SD line, no mark
    }
    assert [lbl.get_text() for lbl in ax.get_xticklabels()] == ["0000", "0001", "0011", "1111"]
    assert ax.get_title() == "F1 by unmasked layer groups (1-3 seeds per spec; P and R in grey)"
    assert ax.get_xlabel().endswith("†: |Δ vs 0000| > SD(spec) + SD(0000) over seeds")


def test_single_seed_files_report_without_spread(report, tmp_path):
    runs = {
        "none": old_metrics("0000", 0.48661, 0.52149, 0.45572, wps=910.4),
        "0011": metrics("0011", 0.55768, 0.6, 0.52),
    }
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "0000") == ["0000", "none (causal)", "48.7", "52.1", "45.6", "1", "n/a", "910", "—", "-7.1"]
    assert row(text, "0011")[-2:] == ["**+7.1**", "**—**"]  # no mark without a spread
    assert "one seed only, so no seed spread to compare with" in text
    assert "## Baselines" not in text


def test_report_without_causal_run(report, tmp_path):
    runs = {
        "0001.seed0": metrics("0001", 0.5, 0.5, 0.5, seed=0),
        "1111.seed0": metrics("1111", 0.52, 0.5, 0.55, seed=0),
    }
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "1111")[0] == "**1111** (best)" and row(text, "1111")[-2:] == ["**n/a**", "**—**"]
    assert "no fully causal run (`0000`)" in text
    assert (out / "heatmap.png").read_bytes().startswith(PNG_SIGNATURE)


def test_describe(report):
    assert report.describe("0000") == "none (causal)"
    assert report.describe("0011") == "groups 3-4"
    assert report.describe("1000") == "group 1"
    assert report.describe("1011") == "groups 1, 3-4"
    assert report.describe("110101") == "groups 1-2, 4, 6"


def test_empty_metrics_dir_exits_with_message(report, tmp_path):
    empty = tmp_path / "metrics"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        report.main(empty, tmp_path / "report")
    message = str(exit_info.value.code)
    assert str(empty) in message and "No metrics JSON files" in message and "sweep" in message
    assert not (tmp_path / "report").exists()


def test_bad_inputs_exit_with_the_fix(report, tmp_path):
    mixed = {"0011": metrics("0011", 0.5, 0.5, 0.5), "011": metrics("011", 0.5, 0.5, 0.5)}
    with pytest.raises(SystemExit, match="different lengths"):
        report.main(write_dir(tmp_path / "mixed", mixed), tmp_path / "r1")
    twice = {"0011.seed1": metrics("0011", 0.5, 0.5, 0.5, seed=1), "0011.again": metrics("0011", 0.5, 0.5, 0.5, seed=1)}
    twice["0011.again"]["spec"] = "0011"
    with pytest.raises(SystemExit, match=r"0011 has two metrics files for the same seed \(\[1, 1\]\)"):
        report.main(write_dir(tmp_path / "twice", twice), tmp_path / "r2")
    mixed_seeds = {"0011.seed0": metrics("0011", 0.5, 0.5, 0.5, seed=0), "0011": old_metrics("0011", 0.5, 0.5, 0.5)}
    with pytest.raises(SystemExit, match="0011 has metrics files with and without a seed: remove the file without"):
        report.main(write_dir(tmp_path / "mixed_seeds", mixed_seeds), tmp_path / "r5")
    with pytest.raises(SystemExit, match="must be named after an unmask spec"):
        report.main(write_dir(tmp_path / "named", {"best.seed0": metrics("x", 0.5, 0.5, 0.5, seed=0)}), tmp_path / "r3")
    unknown = {"0011": {"name": "x", "words_per_second": 1.0}}
    with pytest.raises(SystemExit, match="have neither scores/main nor strict_span"):
        report.main(write_dir(tmp_path / "unknown", unknown), tmp_path / "r4")


# Variant runs (label <spec>[+r<k>][@<n>]): F1 per seed, and train_seconds per seed (None: not recorded).
# 0011+r1@15 is the best row overall: +10.0 vs 0000 (beyond the spread) but +2.8 vs the best plain spec
# 0011, within SD(0011+r1@15) + SD(0011) = 2.0 + 1.3. 0000+r1: +6.0 vs 0000 > 1.0 + 2.0 (marked);
# 0011@15: +1.0 (not marked); none+r2 (read as 0000+r2): one seed, no mark.
VARIANT_F1 = {
    "0000+r1": [0.55, 0.56, 0.57],
    "none+r2": [0.49],
    "0011@15": [0.50, 0.52],
    "0011+r1@15": [0.58, 0.60, 0.62],
}
TRAIN_SECONDS = {
    "0000+r1": [300.0, 330.0, 360.0],  # / 600 steps: 0.5, 0.55, 0.6
    "none+r2": [None],
    "0011@15": [120.0, None],  # 0.2, on one of two seeds
    "0011+r1@15": [720.0, 720.0, 720.0],  # 1.2
}
MAX_STEPS = 600


def variant_runs() -> dict[str, dict]:
    """The sweep's plain runs plus variant runs, stamped as scripts/sweep.py does."""
    runs = sweep_runs()
    for label, values in VARIANT_F1.items():
        for seed, f in enumerate(values):
            run = metrics(label, f, f, f, seed=seed, wps=400.0)
            repeat = 2 if label == "none+r2" else int("+r1" in label)
            run |= {"repeat": repeat, "num_layers": 15 if "@15" in label else None, "max_steps": MAX_STEPS}
            if TRAIN_SECONDS[label][seed] is not None:
                run["train_seconds"] = run["train_cpu_seconds"] = TRAIN_SECONDS[label][seed]
            run |= {"spec": label, "seed": seed}
            runs[f"{label}.seed{seed}"] = run
    return runs


def delta(label: str, against: list[float]) -> float:
    return 100 * (statistics.fmean(VARIANT_F1[label]) - statistics.fmean(against))


def test_variant_rows_follow_the_plain_specs_with_description_cost_delta_and_mark(report, tmp_path, capsys):
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", variant_runs()), out)
    text = (out / "report.md").read_text(encoding="utf8")

    table = [ln for ln in text.splitlines() if re.match(r"\| (\*\*)?[01]+", ln)]
    labels = [re.match(r"\| (\*\*)?([01]+[^ *|]*)", ln).group(2) for ln in table]
    assert labels == ["0000", "0001", "0011", "1111", "0000+r1", "0000+r2", "0011@15", "0011+r1@15"]

    d = delta("0000+r1", F1["0000"])  # +6.0 > SD 1.0 + SD 2.0: marked
    assert row(text, "0000+r1") == [
        "0000+r1", "none (causal), input repeated 1x", mean_sd(VARIANT_F1["0000+r1"]),
        mean_sd(VARIANT_F1["0000+r1"]), mean_sd(VARIANT_F1["0000+r1"]), "3 (0, 1, 2)", "0.55", "400", f"{d:+.1f}†",
        "-4.0†",  # vs the best row 0011+r1@15: -4.0 > SD 1.0 + SD 2.0
    ]  # fmt: skip
    d = delta("none+r2", F1["0000"])  # one seed: no mark
    assert row(text, "0000+r2") == [
        "0000+r2", "none (causal), input repeated 2x", "49.0", "49.0", "49.0", "1 (0)", "n/a", "400", f"{d:+.1f}",
        "-11.0",  # one seed: no mark against the best row either
    ]  # fmt: skip
    d = delta("0011@15", F1["0000"])  # +1.0 < SD 1.4 + SD 2.0: no mark
    assert row(text, "0011@15")[1] == "groups 3-4, first 15 blocks"
    b = delta("0011@15", VARIANT_F1["0011+r1@15"])  # -9.0 vs the best row > SD 1.4 + SD 2.0: marked
    assert row(text, "0011@15")[6:] == ["0.2 (1 of 2 seeds)", "400", f"{d:+.1f}", f"{b:+.1f}†"]
    # 0011 vs the best row: -2.8 < SD 1.3 + SD 2.0, so not told apart from it (no mark)
    b = 100 * (statistics.fmean(F1["0011"]) - statistics.fmean(VARIANT_F1["0011+r1@15"]))
    assert f"{b:+.1f}" == "-2.8" and row(text, "0011")[-1] == "-2.8"
    d = delta("0011+r1@15", F1["0000"])  # +10.0 > 2.0 + 2.0: marked; the best row overall, in bold
    best = row(text, "0011+r1@15")
    assert best[0] == "**0011+r1@15** (best)" and best[1] == "**groups 3-4, input repeated 1x, first 15 blocks**"
    assert best[6:] == ["**1.2**", "**400**", f"**{d:+.1f}†**", "**—**"]
    assert text.count("(best)") == 1
    assert row(text, "0011")[0] == "0011 (best plain spec)"  # no longer bold

    d0011 = 100 * (statistics.fmean(F1["0011"]) - statistics.fmean(F1["0000"]))
    lines = text.splitlines()
    assert (
        f"Best plain spec: `0011` (groups 3-4), F1 {mean_sd(F1['0011'])} over 3 seeds, {d0011:+.1f} points vs. "
        f"the fully causal `0000` ({mean_sd(F1['0000'])}); the difference exceeds the seed spread."
    ) in lines
    d = delta("0011+r1@15", F1["0011"])  # +2.8 < SD 2.0 + SD 1.3: within the spread
    assert f"{d:+.1f}" == "+2.8"
    assert (
        f"Best variant: `0011+r1@15` (groups 3-4, input repeated 1x, first 15 blocks), F1 "
        f"{mean_sd(VARIANT_F1['0011+r1@15'])} over 3 seeds, {d:+.1f} points vs. the best plain spec `0011` "
        f"({mean_sd(F1['0011'])}); the difference is within the seed spread."
    ) in lines
    assert (
        f"Best row overall: `0011+r1@15` (groups 3-4, input repeated 1x, first 15 blocks), a variant, "
        f"F1 {mean_sd(VARIANT_F1['0011+r1@15'])}."
    ) in lines
    assert "`+r<k>` = the input repeated k more times" in text and "the heatmap shows the plain specs only" in text

    stdout = capsys.readouterr().out
    assert "8 configurations (19 runs), 4 of them variants" in stdout and "Best variant: 0011+r1@15" in stdout
    assert (out / "heatmap.png").read_bytes().startswith(PNG_SIGNATURE)


def test_variant_beyond_the_spread_of_the_best_plain_spec(report, tmp_path):
    runs = {f"0000.seed{k}": metrics("0000", f, f, f, seed=k) | {"spec": "0000"} for k, f in enumerate([0.5, 0.51])}
    for k, f in enumerate([0.60, 0.61]):
        runs[f"0000+r1.seed{k}"] = metrics("0000+r1", f, f, f, seed=k) | {"spec": "0000+r1"}
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "0000+r1")[0] == "**0000+r1** (best)" and row(text, "0000+r1")[-2:] == ["**+10.0†**", "**—**"]
    assert row(text, "0000")[0] == "0000 (best plain spec)" and row(text, "0000")[-2:] == ["—", "-10.0†"]
    assert "points vs. the best plain spec `0000` (50.5 ± 0.7); the difference exceeds the seed spread." in text


def test_heatmap_leaves_out_variant_rows(report, tmp_path):
    specs = report.normalise_specs(variant_runs())
    assert len(specs) == 8
    fig = report.draw_heatmap(specs, tmp_path / "heatmap.png")
    (ax,) = [a for a in fig.axes if a.get_xlabel()]
    ticks = [lbl.get_text() for lbl in ax.get_xticklabels()]
    assert ticks == ["0000", "0001", "0011", "1111"]  # one column per plain spec
    assert ax.get_images()[0].get_array().shape == (4, 4)  # groups x plain specs
    assert len(ax.texts) == 8  # F1, and P and R, over each of the 4 columns
    # the outlined best column is the best plain spec, though a variant has the best F1 overall
    assert [lbl.get_text() for lbl in ax.get_xticklabels() if lbl.get_color() == "crimson"] == ["0011"]
    assert ax.get_title() == "F1 by unmasked layer groups (1-3 seeds per spec; P and R in grey)"


def test_only_variant_labels_report_without_heatmap(report, tmp_path):
    runs = {"0011+r1.seed0": metrics("0011+r1", 0.5, 0.5, 0.5, seed=0) | {"spec": "0011+r1"}}
    out = tmp_path / "report"
    out.mkdir()
    (out / "heatmap.png").write_bytes(b"stale")
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "0011+r1")[0] == "**0011+r1** (best)" and row(text, "0011+r1")[-2:] == ["**n/a**", "**—**"]
    assert "No plain unmask spec" in text and not (out / "heatmap.png").exists()


@pytest.mark.parametrize("label", ["abc", "0011+x", "0011+r0", "0011@", "0011@15+r1", "0012+r1", "none+r"])
def test_malformed_labels_exit_naming_the_label_and_the_grammar(report, tmp_path, label):
    runs = {
        "0000.seed0": metrics("0000", 0.5, 0.5, 0.5, seed=0) | {"spec": "0000"},
        f"{label}.seed0": metrics(label, 0.5, 0.5, 0.5, seed=0) | {"spec": label},
    }
    with pytest.raises(SystemExit) as exit_info:
        report.main(write_dir(tmp_path / "metrics", runs), tmp_path / "report")
    message = str(exit_info.value.code)
    assert (
        f"{label!r}:" in message
        and "<spec>[+r<k>][@<n>]" in message
        and "must be named after an unmask spec" in message
    )
    assert not (tmp_path / "report").exists()


def test_variant_labels_must_share_the_spec_length(report, tmp_path):
    runs = {"0011": metrics("0011", 0.5, 0.5, 0.5), "011+r1": metrics("011+r1", 0.5, 0.5, 0.5) | {"spec": "011+r1"}}
    with pytest.raises(SystemExit, match=r"different lengths \[3, 4\]"):
        report.main(write_dir(tmp_path / "metrics", runs), tmp_path / "report")


def test_compute_line_sums_train_seconds_of_all_runs(report, tmp_path, capsys):
    runs = {
        "0000.seed0": metrics("0000", 0.4, 0.4, 0.4, seed=0) | {"train_seconds": 5400.0, "max_steps": 600},
        "0000.seed1": metrics("0000", 0.4, 0.4, 0.4, seed=1) | {"train_seconds": None, "max_steps": 600},
        "0011+r1.seed0": metrics("0011+r1", 0.5, 0.5, 0.5, seed=0) | {"train_seconds": 1800.0, "max_steps": 600},
        "0011@15.seed0": metrics("0011@15", 0.5, 0.5, 0.5, seed=0),  # an old file: no time
    }
    for stem, run in runs.items():
        run["spec"] = stem.split(".seed")[0]
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    line = (
        "Compute: 2.00 CPU-hours of training, the summed CPU time (else wall time) of `spacy train` over 2 runs "
        "(runs without a recorded time not counted: 2)."
    )
    assert line in text.splitlines()
    assert row(text, "0000")[6] == "9 (wall) (1 of 2 seeds)" and row(text, "0011+r1")[6] == "3 (wall)"
    assert line.replace("`", "") in capsys.readouterr().out

    # baselines.py records its training time too: the baseline's row shows its cost, the line counts it
    baselines = {f"cnn.seed{k}": metrics("CNN", 0.4, 0.4, 0.4, seed=k) for k in (0, 1)}
    baselines["cnn.seed0"] |= {"train_seconds": 900.0, "train_cpu_seconds": 720.0, "max_steps": 1500}
    out = tmp_path / "with-baselines"
    report.main(tmp_path / "metrics", out, baselines=write_dir(tmp_path / "b", baselines))
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "CNN")[5:7] == ["0.48 (1 of 2 seeds)", "850"]
    line = (
        "Compute: 2.20 CPU-hours of training, the summed CPU time (else wall time) of `spacy train` over 3 runs "
        "(runs without a recorded time not counted: 3)."
    )
    assert line in text.splitlines()

    specs = report.normalise_specs(sweep_runs())  # no recorded times at all
    assert (
        report.compute_line(specs)
        == "Compute: no training time recorded (runs without a recorded time not counted: 10)."
    )


def test_describe_variants(report):
    assert report.describe("0000+r1") == "none (causal), input repeated 1x"
    assert report.describe("0011@15") == "groups 3-4, first 15 blocks"
    assert report.describe("1011+r3@30") == "groups 1, 3-4, input repeated 3x, first 30 blocks"


def test_cpu_time_of_training_counts_before_wall_time(report, tmp_path):
    """A busy machine inflates wall time, not CPU time: the cost column and the compute line take
    train_cpu_seconds where a run recorded it."""
    runs = {
        "0000.seed0": metrics("0000", 0.4, 0.4, 0.4, seed=0)
        | {"train_seconds": 3000.0, "train_cpu_seconds": 1200.0, "max_steps": 600},
        "0000.seed1": metrics("0000", 0.4, 0.4, 0.4, seed=1)
        | {"train_seconds": 2400.0, "train_cpu_seconds": 1200.0, "max_steps": 600},
        "0011.seed0": metrics("0011", 0.5, 0.5, 0.5, seed=0) | {"train_seconds": 1800.0, "max_steps": 600},
    }
    for stem, run in runs.items():
        run["spec"] = stem.split(".seed")[0]
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "0000")[6] == "2" and row(text, "0011")[6].strip("*") == "3 (wall)"
    assert "Compute: 1.17 CPU-hours of training" in text


def test_cost_per_update_never_averages_cpu_with_wall_time(report, tmp_path):
    """A row whose first seed recorded only wall time (on a busy machine) takes its cost from the seeds
    with CPU time, and says how many; the compute line still counts every run."""
    runs = {
        "0000+r1.seed0": metrics("0000+r1", 0.4, 0.4, 0.4, seed=0) | {"train_seconds": 2400.0, "max_steps": 150},
        "0000+r1.seed1": metrics("0000+r1", 0.5, 0.5, 0.5, seed=1)
        | {"train_seconds": 1000.0, "train_cpu_seconds": 900.0, "max_steps": 150},
        "0000+r1.seed2": metrics("0000+r1", 0.5, 0.5, 0.5, seed=2)
        | {"train_seconds": 950.0, "train_cpu_seconds": 870.0, "max_steps": 150},
    }
    for run in runs.values():
        run["spec"] = "0000+r1"
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "0000+r1")[6].strip("*") == "5.9 (2 of 3 seeds)"  # (900 + 870) / 2 / 150, no wall time
    assert f"Compute: {(2400 + 900 + 870) / 3600:.2f} CPU-hours" in text


def test_budgets_are_stated_for_the_spec_runs_and_each_baseline(report, tmp_path):
    """One sentence gives the spec runs' common max_steps; a baseline row names its own where its
    runs recorded one (and agree); runs that disagree get no budget."""
    runs = {stem: run | {"max_steps": 150} for stem, run in sweep_runs().items() if stem != "all"}
    baselines = {
        "cnn.seed0": metrics("spaCy CNN tok2vec", 0.4, 0.4, 0.4, seed=0) | {"max_steps": 1500},
        "cnn.seed1": metrics("spaCy CNN tok2vec", 0.4, 0.4, 0.4, seed=1),  # recorded none
        "encoder.seed0": metrics("encoder", 0.5, 0.5, 0.5, seed=0) | {"max_steps": 600},
        "encoder.seed1": metrics("encoder", 0.5, 0.5, 0.5, seed=1) | {"max_steps": 300},
    }
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out, baselines=write_dir(tmp_path / "b", baselines))
    text = (out / "report.md").read_text(encoding="utf8")
    assert "Every spec run trained 150 updates; a baseline row names its own budget where recorded." in text
    assert row(text, "spaCy CNN tok2vec (1,500 updates)")[4] == "2 (0, 1)"
    assert row(text, "encoder")[0] == "encoder"  # 600 and 300: no single budget to name

    runs["0000.seed0"]["max_steps"] = 300
    report.main(write_dir(tmp_path / "metrics2", runs), out)
    assert "Every spec run trained" not in (out / "report.md").read_text(encoding="utf8")
