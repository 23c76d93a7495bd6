"""Summarise the unmask sweep: a markdown table of strict span scores per unmask spec
(plus optional baselines) and a heatmap of F1 per configuration, as in Dukić & Šnajder
(2024), "Looking Right is Sometimes Right"."""

import json
import re
import sys
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


def load_dir(directory: Path) -> dict[str, dict[str, Any]]:
    """Read every ``*.json`` in DIRECTORY, keyed by file stem."""
    return {path.stem: json.loads(path.read_text(encoding="utf8")) for path in sorted(directory.glob("*.json"))}


def normalise_specs(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Key runs by bit string, reading ``none``/``all`` as all zeros/ones of the common length."""
    lengths = {len(stem) for stem in runs if BITS.fullmatch(stem)}
    if len(lengths) > 1:
        sys.exit(f"Unmask specs of different lengths {sorted(lengths)}: keep one sweep per metrics directory")
    m = lengths.pop() if lengths else DEFAULT_GROUPS
    specs: dict[str, dict[str, Any]] = {}
    for stem, metrics in runs.items():
        spec = {"none": "0" * m, "all": "1" * m}.get(stem, stem)
        if not BITS.fullmatch(spec):
            sys.exit(f"{stem}.json is not named after an unmask spec (a bit string such as 0011, or none/all)")
        if spec in specs:
            sys.exit(f"Spec {spec} has two metrics files (e.g. both {spec}.json and none.json/all.json)")
        specs[spec] = metrics
    return dict(sorted(specs.items()))


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


def pct(value: float) -> str:
    """A 0..1 score as a percentage with one decimal."""
    return f"{100 * value:.1f}"


def best_spec(specs: dict[str, dict[str, Any]]) -> str:
    """The spec with the highest strict span F1 (the first in spec order on ties)."""
    return max(specs, key=lambda spec: specs[spec]["strict_span"]["f"])


def summary_line(specs: dict[str, dict[str, Any]]) -> str:
    """State the best spec and its F1 difference to the fully causal spec, when that was run."""
    best = best_spec(specs)
    f1 = specs[best]["strict_span"]["f"]
    line = f"Best configuration: `{best}` ({describe(best)}), strict span F1 {pct(f1)}"
    causal = "0" * len(best)
    if causal in specs:
        causal_f1 = specs[causal]["strict_span"]["f"]
        return line + f", {100 * (f1 - causal_f1):+.1f} points vs. the fully causal `{causal}` ({pct(causal_f1)})."
    return line + f"; no fully causal run (`{causal}`) to compare with."


def markdown_report(specs: dict[str, dict[str, Any]], baselines: dict[str, dict[str, Any]] | None) -> str:
    """The report: one row per spec (best in bold), the baselines, and the summary line."""
    best = best_spec(specs)
    lines = [
        "# Unmasked layer groups: strict span scores",
        "",
        "Spec bits run from the group nearest the input (left) to the output (right); 1 = bidirectional.",
        "",
        "| Spec | Unmasked | F1 | P | R | Words/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for spec, metrics in specs.items():
        s = metrics["strict_span"]
        cells = [spec, describe(spec), pct(s["f"]), pct(s["p"]), pct(s["r"]), f"{metrics['words_per_second']:,.0f}"]
        if spec == best:
            cells = [f"**{cell}**" for cell in cells]
            cells[0] += " (best)"
        lines.append("| " + " | ".join(cells) + " |")
    if baselines is not None:
        lines += ["", "## Baselines", ""]
        if baselines:
            lines += ["| Name | F1 | P | R |", "|---|---:|---:|---:|"]
            for stem, metrics in baselines.items():
                s = metrics["strict_span"]
                lines.append(f"| {metrics.get('name') or stem} | {pct(s['f'])} | {pct(s['p'])} | {pct(s['r'])} |")
        else:
            lines.append("No baseline metrics found.")
    lines += ["", summary_line(specs), ""]
    return "\n".join(lines)


def draw_heatmap(specs: dict[str, dict[str, Any]], path: Path) -> None:
    """Groups (y, group 1 at the bottom) by configurations (x); unmasked cells coloured by F1."""
    names = list(specs)
    m = len(names[0])
    f1 = np.array([100 * specs[spec]["strict_span"]["f"] for spec in names])
    grid = np.array([[f1[x] if spec[g] == "1" else np.nan for x, spec in enumerate(names)] for g in range(m)])
    low, high = f1.min(), f1.max()
    norm = Normalize(low - 0.5, high + 0.5) if low == high else Normalize(low, high)
    best = names.index(best_spec(specs))

    fig = Figure(figsize=(max(4.0, 0.55 * len(names) + 2.5), 0.5 * m + 2.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label="strict span F1")
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0, family="monospace")
    ax.set_yticks(range(m), [str(g + 1) for g in range(m)])
    ax.set_xticks(np.arange(len(names) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(m + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("configuration (1 = group unmasked)")
    ax.set_ylabel("layer group (1 = nearest input)")
    for x, value in enumerate(f1):
        weight = "bold" if x == best else "normal"
        ax.annotate(
            f"{value:.1f}",
            (x, m - 0.5),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            fontweight=weight,
            annotation_clip=False,
        )
    ax.get_xticklabels()[best].set_fontweight("bold")
    ax.get_xticklabels()[best].set_color("crimson")
    outline = Rectangle((best - 0.5, -0.5), 1, m, fill=False, edgecolor="crimson", linewidth=2, clip_on=False)
    ax.add_patch(outline).set_zorder(5)  # above the white cell borders
    ax.set_title("Strict span F1 by unmasked layer groups", pad=16)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)


def main(
    metrics_dir: Path,
    output_dir: Path,
    baselines: Annotated[Path | None, typer.Option(help="Directory of baseline metrics JSON files")] = None,
):
    """Write OUTPUT_DIR/report.md and OUTPUT_DIR/heatmap.png from the spec metrics in METRICS_DIR."""
    runs = load_dir(metrics_dir) if metrics_dir.is_dir() else {}
    if not runs:
        sys.exit(
            f"No metrics JSON files in {metrics_dir}: run scripts/evaluate.py (the evaluate command) "
            "for each unmask spec, writing <spec>.json there, before the report."
        )
    specs = normalise_specs(runs)
    baseline_runs = None
    if baselines is not None:
        baseline_runs = load_dir(baselines) if baselines.is_dir() else {}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.md").write_text(markdown_report(specs, baseline_runs), encoding="utf8")
    draw_heatmap(specs, output_dir / "heatmap.png")
    print(f"{len(specs)} configurations from {metrics_dir} -> {output_dir / 'report.md'}, {output_dir / 'heatmap.png'}")
    print(summary_line(specs).replace("`", ""))


if __name__ == "__main__":
    typer.run(main)
