"""Summarise the unmask sweep: a markdown table of span scores per unmask spec
(mean ± standard deviation over seeds, plus baselines) and a heatmap of F1 per
configuration, as in Dukić & Šnajder (2024), "Looking Right is Sometimes Right".
Differences from the causal spec (all zeros) that exceed the seed spread are marked."""

import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import numpy as np
import typer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DEFAULT_GROUPS = 4
BITS = re.compile(r"[01]+")
STEM = re.compile(r"(?P<key>.+?)(?:\.seed(?P<seed>-?\d+))?")
MARK = "†"
SPREAD_RULE = (
    f"{MARK} = the difference to the causal spec exceeds the seed spread: |Δ| > SD(spec) + SD(causal) "
    "(sample standard deviations over seeds, so the mean ± SD ranges do not overlap); needs 2+ seeds on both sides"
)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None for one value) of a score over seeds."""

    mean: float
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        """``48.7 ± 1.2`` (or ``48.7`` for one seed)."""
        mean = f"{scale * self.mean:.{digits}f}"
        return mean if self.sd is None else f"{mean} ± {scale * self.sd:.{digits}f}"


@dataclass(frozen=True)
class Summary:
    """One spec's or baseline's runs: F1, P, R and words/s over seeds."""

    name: str
    seeds: tuple[Any, ...]
    f: Stat
    p: Stat
    r: Stat
    wps: Stat


def main_scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The main span scores of one metrics file: evaluate.py's ``scores[main]``, or the
    ``strict_span`` of files from before it used spaCy's Scorer."""
    if "scores" in metrics and metrics.get("main") in metrics["scores"]:
        return metrics["scores"][metrics["main"]]
    if "strict_span" in metrics:
        return metrics["strict_span"]
    raise ValueError(f"Metrics of {metrics.get('name', '?')!r} have neither scores/main nor strict_span.")


def load_dir(directory: Path) -> dict[str, dict[str, Any]]:
    """Read every ``*.json`` in DIRECTORY, keyed by file stem."""
    runs = {}
    for path in sorted(directory.glob("*.json")):
        try:
            runs[path.stem] = json.loads(path.read_text(encoding="utf8"))
        except ValueError as error:
            sys.exit(f"{path} is not valid JSON ({error}): remove it or rerun its evaluation.")
    return runs


def group_by_key(runs: dict[str, dict[str, Any]], key_field: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by ``<key>`` of ``<key>.seed<k>.json`` / ``<key>.json`` (or by KEY_FIELD when present)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for stem, metrics in runs.items():
        match = STEM.fullmatch(stem)
        key = str(metrics.get(key_field) or match["key"]) if key_field else match["key"]
        if metrics.get("seed") is None and match["seed"] is not None:
            metrics = {**metrics, "seed": int(match["seed"])}
        groups.setdefault(key, []).append(metrics)
    return groups


def summarise(name: str, runs: list[dict[str, Any]]) -> Summary:
    """Mean ± SD of the main scores over RUNS (one per seed)."""
    seeds = [run.get("seed") for run in runs]
    known = [s for s in seeds if s is not None]
    if len(set(known)) != len(known):
        sys.exit(f"{name} has two metrics files for the same seed ({sorted(known)}): keep one per seed.")
    if len(runs) > 1 and len(known) < len(runs):
        sys.exit(
            f"{name} has metrics files with and without a seed: remove the file without one (written before seeds "
            "were recorded) or rename it <name>.seed<k>.json and add its seed."
        )
    scores = [main_scores(run) for run in runs]
    return Summary(
        name=name,
        seeds=tuple(sorted(seeds, key=lambda s: (s is None, s if s is not None else 0))),
        f=Stat.of([s["f"] for s in scores]),
        p=Stat.of([s["p"] for s in scores]),
        r=Stat.of([s["r"] for s in scores]),
        wps=Stat.of([run["words_per_second"] for run in runs]),
    )


def normalise_specs(runs: dict[str, dict[str, Any]]) -> dict[str, Summary]:
    """Summaries keyed by bit string, reading ``none``/``all`` as all zeros/ones of the common length."""
    groups = group_by_key(runs, key_field="spec")
    lengths = {len(key) for key in groups if BITS.fullmatch(key)}
    if len(lengths) > 1:
        sys.exit(f"Unmask specs of different lengths {sorted(lengths)}: keep one sweep per metrics directory")
    m = lengths.pop() if lengths else DEFAULT_GROUPS
    specs: dict[str, list[dict[str, Any]]] = {}
    for key, group in groups.items():
        spec = {"none": "0" * m, "all": "1" * m}.get(key, key)
        if not BITS.fullmatch(spec):
            sys.exit(
                f"{key}: metrics files must be named after an unmask spec (a bit string such as 0011, or none/all), "
                "as <spec>.json or <spec>.seed<k>.json"
            )
        specs.setdefault(spec, []).extend(group)
    return {spec: summarise(spec, group) for spec, group in sorted(specs.items())}


def describe(spec: str) -> str:
    """Say which groups a spec unmasks, e.g. ``0011`` -> ``groups 3-4``, ``1011`` -> ``groups 1, 3-4``."""
    on = [i + 1 for i, bit in enumerate(spec) if bit == "1"]
    if not on:
        return "none (causal)"
    ranges: list[list[int]] = []
    for group in on:
        if ranges and ranges[-1][1] == group - 1:
            ranges[-1][1] = group
        else:
            ranges.append([group, group])
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges]
    return ("group " if len(on) == 1 else "groups ") + ", ".join(parts)


def exceeds_spread(a: Stat, b: Stat) -> bool | None:
    """Whether the means of A and B differ by more than SD(A) + SD(B); None without two seeds on both sides."""
    if a.sd is None or b.sd is None:
        return None
    return abs(a.mean - b.mean) > a.sd + b.sd


def delta_text(stat: Stat, causal: Summary | None) -> str:
    """F1 difference to the causal spec in points, with the spread mark."""
    if causal is None:
        return "n/a"
    mark = MARK if exceeds_spread(stat, causal.f) else ""
    return f"{100 * (stat.mean - causal.f.mean):+.1f}{mark}"


def best_spec(specs: dict[str, Summary]) -> str:
    """The spec with the highest mean F1 (the first in spec order on ties)."""
    return max(specs, key=lambda spec: specs[spec].f.mean)


def seeds_text(summary: Summary) -> str:
    """``3 (0, 1, 2)``, or ``1`` for a file without a seed."""
    known = [str(s) for s in summary.seeds if s is not None]
    return f"{len(summary.seeds)} ({', '.join(known)})" if known else str(len(summary.seeds))


def summary_line(specs: dict[str, Summary]) -> str:
    """State the best spec, its F1 difference to the fully causal spec, and whether that exceeds the seed spread."""
    best = best_spec(specs)
    s = specs[best]
    seeds = f" over {s.f.n} seeds" if s.f.n > 1 else ""
    line = f"Best configuration: `{best}` ({describe(best)}), F1 {s.f.text()}{seeds}"
    causal = "0" * len(best)
    if causal not in specs:
        return line + f"; no fully causal run (`{causal}`) to compare with."
    c = specs[causal].f
    line += f", {100 * (s.f.mean - c.mean):+.1f} points vs. the fully causal `{causal}` ({c.text()})"
    verdict = exceeds_spread(s.f, c)
    if best == causal:
        return line + "."
    if verdict is None:
        return line + "; one seed only, so no seed spread to compare with."
    return line + (
        "; the difference exceeds the seed spread." if verdict else "; the difference is within the seed spread."
    )


def markdown_report(specs: dict[str, Summary], baselines: dict[str, Summary] | None) -> str:
    """The report: one row per spec (best in bold), the baselines, the spread rule and the summary line."""
    best = best_spec(specs)
    causal = specs.get("0" * len(best))
    lines = [
        "# Unmasked layer groups: span scores on the held-out test split",
        "",
        "Spec bits run from the group nearest the input (left) to the output (right); 1 = bidirectional. "
        "Scores are mean ± sample standard deviation over seeds (one value: one seed), in %.",
        "",
        "| Spec | Unmasked | F1 | P | R | Seeds | Words/s | Δ F1 vs causal |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for spec, s in specs.items():
        cells = [spec, describe(spec), s.f.text(), s.p.text(), s.r.text(), seeds_text(s), f"{s.wps.mean:,.0f}"]
        cells.append("—" if causal is not None and spec == "0" * len(spec) else delta_text(s.f, causal))
        if spec == best:
            cells = [f"**{cell}**" for cell in cells]
            cells[0] += " (best)"
        lines.append("| " + " | ".join(cells) + " |")
    if baselines is not None:
        lines += ["", "## Baselines", ""]
        if baselines:
            lines += ["| Name | F1 | P | R | Seeds | Δ F1 vs causal |", "|---|---:|---:|---:|---:|---:|"]
            for b in baselines.values():
                cells = [b.name, b.f.text(), b.p.text(), b.r.text(), seeds_text(b), delta_text(b.f, causal)]
                lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("No baseline metrics found.")
    lines += ["", SPREAD_RULE + ".", "", summary_line(specs), ""]
    return "\n".join(lines)


def draw_heatmap(specs: dict[str, Summary], path: Path) -> Figure:
    """Groups (y, group 1 at the bottom) by configurations (x); unmasked cells coloured by mean F1,
    mean ± SD above each column, marked where the difference to the causal spec exceeds the seed spread."""
    names = list(specs)
    m = len(names[0])
    f1 = np.array([100 * specs[spec].f.mean for spec in names])
    grid = np.array([[f1[x] if spec[g] == "1" else np.nan for x, spec in enumerate(names)] for g in range(m)])
    low, high = f1.min(), f1.max()
    norm = Normalize(low - 0.5, high + 0.5) if low == high else Normalize(low, high)
    best = names.index(best_spec(specs))
    causal = specs.get("0" * m)
    with_sd = any(s.f.sd is not None for s in specs.values())

    fig = Figure(figsize=(max(4.5, 0.6 * len(names) + 2.5), 0.5 * m + (3.3 if with_sd else 2.8)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label="F1 (mean over seeds)" if with_sd else "F1")
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0, family="monospace")
    ax.set_yticks(range(m), [str(g + 1) for g in range(m)])
    ax.set_xticks(np.arange(len(names) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(m + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("configuration (1 = group unmasked)")
    ax.set_ylabel("layer group (1 = nearest input)")
    for x, spec in enumerate(names):
        stat = specs[spec].f
        marked = causal is not None and spec != "0" * m and exceeds_spread(stat, causal.f)
        text = f"{100 * stat.mean:.1f}{MARK if marked else ''}"
        if stat.sd is not None:
            text += f"\n±{100 * stat.sd:.1f}"
        ax.annotate(
            text,
            (x, m - 0.5),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7 if len(names) > 8 else 8,
            fontweight="bold" if x == best else "normal",
            annotation_clip=False,
        )
    ax.get_xticklabels()[best].set_fontweight("bold")
    ax.get_xticklabels()[best].set_color("crimson")
    outline = Rectangle((best - 0.5, -0.5), 1, m, fill=False, edgecolor="crimson", linewidth=2, clip_on=False)
    ax.add_patch(outline).set_zorder(5)  # above the white cell borders
    n_seeds = sorted({s.f.n for s in specs.values()})
    if n_seeds == [1]:
        seeds = "one seed"
    elif len(n_seeds) == 1:
        seeds = f"mean of {n_seeds[0]} seeds"
    else:
        seeds = f"{n_seeds[0]}-{n_seeds[-1]} seeds per spec"
    ax.set_title(f"F1 by unmasked layer groups ({seeds})", pad=30 if with_sd else 16)
    if causal is not None and with_sd:
        ax.set_xlabel(f"{ax.get_xlabel()}\n{MARK}: |Δ vs {'0' * m}| > SD(spec) + SD({'0' * m}) over seeds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return fig


def main(
    metrics_dir: Path,
    output_dir: Path,
    baselines: Annotated[Path | None, typer.Option(help="Directory of baseline metrics JSON files")] = None,
):
    """Write OUTPUT_DIR/report.md and OUTPUT_DIR/heatmap.png from the spec metrics in METRICS_DIR
    (``<spec>.seed<k>.json`` per seed, or single ``<spec>.json`` files)."""
    runs = load_dir(metrics_dir) if metrics_dir.is_dir() else {}
    if not runs:
        sys.exit(
            f"No metrics JSON files in {metrics_dir}: run scripts/sweep.py (the sweep command) or "
            "scripts/evaluate.py for each unmask spec, writing <spec>.seed<k>.json there, before the report."
        )
    try:
        specs = normalise_specs(runs)
        baseline_runs = None
        if baselines is not None:
            found = load_dir(baselines) if baselines.is_dir() else {}
            groups = group_by_key(found)
            baseline_runs = {key: summarise(group[0].get("name") or key, group) for key, group in groups.items()}
    except ValueError as error:
        sys.exit(str(error))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.md").write_text(markdown_report(specs, baseline_runs), encoding="utf8")
    draw_heatmap(specs, output_dir / "heatmap.png")
    n_runs = sum(s.f.n for s in specs.values())
    print(f"{len(specs)} configurations ({n_runs} runs) from {metrics_dir} -> {output_dir / 'report.md'}, heatmap.png")
    print(summary_line(specs).replace("`", ""))


if __name__ == "__main__":
    typer.run(main)
