import json
import re
from pathlib import Path

import pytest

from .scripts import load_script

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report():
    return load_script("report")


def metrics(name: str, f: float, p: float, r: float, wps: float = 850.0) -> dict:
    per_type = {"person": {"p": p, "r": r, "f": f, "support": 40}, "location": {"p": p, "r": r, "f": f, "support": 30}}
    return {
        "name": name,
        "model": f"training/{name}/model-best",
        "data": "corpus/wnut16/test.spacy",
        "docs": 120,
        "words_per_second": wps,
        "strict_span": {"p": p, "r": r, "f": f, "support": 70, "per_type": per_type},
        "spacy": {"ents_f": f},
    }


# Scores chosen so that rounding and truncation differ (0.48661 -> 48.7, not 48.6).
RUNS = {
    "none": metrics("0000", 0.48661, 0.52149, 0.45572, wps=910.4),
    "0001": metrics("0001", 0.50049, 0.4951, 0.5061),
    "0011": metrics("0011", 0.55768, 0.60151, 0.51968, wps=1234.6),
    "all": metrics("1111", 0.52333, 0.56, 0.49114),
}
BASELINES = {
    "cnn": metrics("cnn (tok2vec)", 0.41406, 0.44444, 0.38761),
    "encoder": metrics("roberta-base", 0.57767, 0.60681, 0.55123),
}


def write_dir(directory: Path, runs: dict) -> Path:
    directory.mkdir()
    for stem, data in runs.items():
        (directory / f"{stem}.json").write_text(json.dumps(data), encoding="utf8")
    return directory


def row(text: str, spec: str) -> list[str]:
    """The cells of the spec table row for SPEC."""
    (line,) = [ln for ln in text.splitlines() if re.match(rf"\| (\*\*)?{spec}\b", ln)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_and_heatmap(report, tmp_path, capsys):
    metrics_dir = write_dir(tmp_path / "metrics", RUNS)
    baseline_dir = write_dir(tmp_path / "baselines", BASELINES)
    out = tmp_path / "report"
    report.main(metrics_dir, out, baselines=baseline_dir)
    text = (out / "report.md").read_text(encoding="utf8")

    # none/all become bit strings of the common length; rows in spec order
    spec_rows = [ln for ln in text.splitlines() if re.match(r"\| (\*\*)?[01]+\b", ln)]
    assert [re.search(r"[01]+", ln).group() for ln in spec_rows] == ["0000", "0001", "0011", "1111"]
    assert row(text, "0000") == ["0000", "none (causal)", "48.7", "52.1", "45.6", "910"]
    assert row(text, "0001") == ["0001", "group 4", "50.0", "49.5", "50.6", "850"]
    assert row(text, "1111") == ["1111", "groups 1-4", "52.3", "56.0", "49.1", "850"]
    # the highest F1 is the one bold row, with the best marker
    assert row(text, "0011") == ["**0011** (best)", "**groups 3-4**", "**55.8**", "**60.2**", "**52.0**", "**1,235**"]
    assert text.count("(best)") == 1
    assert [ln for ln in spec_rows if "**" in ln] == [ln for ln in spec_rows if "0011" in ln]

    assert "| cnn (tok2vec) | 41.4 | 44.4 | 38.8 |" in text
    assert "| roberta-base | 57.8 | 60.7 | 55.1 |" in text
    # 55.768 - 48.661 = 7.107 points
    summary = (
        "Best configuration: `0011` (groups 3-4), strict span F1 55.8, +7.1 points vs. the fully causal `0000` (48.7)."
    )
    assert summary in text.splitlines()

    stdout = capsys.readouterr().out
    assert "4 configurations" in stdout
    assert "0011" in stdout and "+7.1" in stdout

    png = (out / "heatmap.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 10_000


def test_report_without_causal_run_or_baselines(report, tmp_path):
    runs = {"0001": RUNS["0001"], "1111": RUNS["all"]}
    out = tmp_path / "report"
    report.main(write_dir(tmp_path / "metrics", runs), out)
    text = (out / "report.md").read_text(encoding="utf8")
    assert row(text, "1111")[0] == "**1111** (best)"
    assert "## Baselines" not in text
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
    assert str(empty) in message and "No metrics JSON files" in message and "evaluate" in message
    assert not (tmp_path / "report").exists()


def test_mixed_spec_lengths_exit(report, tmp_path):
    runs = {"0011": RUNS["0011"], "011": RUNS["0001"]}
    with pytest.raises(SystemExit, match="different lengths"):
        report.main(write_dir(tmp_path / "metrics", runs), tmp_path / "report")
