"""Summarise the unmask sweep: a markdown table of span scores per run label
(mean ± standard deviation over seeds, training and inference cost, plus baselines)
and a heatmap of F1 per plain unmask spec, as in Dukić & Šnajder (2024), "Looking
Right is Sometimes Right". Differences from the causal spec (all zeros) and from the
best row that exceed the seed spread are marked.

A run label (scripts/sweep.py) is ``<spec>[+r<k>][@<n>]``: an unmask bit string
(or none/all), optionally with ``+r<k>`` (the input repeated k more times) and
``@<n>`` (features from the first n decoder blocks). Labels with a suffix are
*variants*: they get table rows but no heatmap column."""

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
LABEL = re.compile(r"(?P<spec>[01]+|none|all)(?:\+r(?P<repeat>[1-9][0-9]*))?(?:@(?P<layers>[1-9][0-9]*))?")
LABEL_GRAMMAR = (
    "<spec>[+r<k>][@<n>], where <spec> is a bit string such as 0011 (or none/all), +r<k> repeats the input "
    "k >= 1 more times and @<n> takes features from the first n >= 1 decoder blocks (e.g. 0011, 0000+r1, 0011+r2@15)"
)
STEM = re.compile(r"(?P<key>.+?)(?:\.seed(?P<seed>-?\d+))?")
MARK = "†"
SPREAD_RULE = (
    f"{MARK} = the difference exceeds the seed spread: |Δ| > SD(spec) + SD(causal), and in the last column "
    "|Δ| > SD(spec) + SD(best row) (sample standard deviations over seeds, so the mean ± SD ranges do not overlap); "
    "needs 2+ seeds on both sides. A row without the mark in the last column is not told apart from the best row"
)


@dataclass(frozen=True)
class Label:
    """A parsed run label: unmask bits, extra input copies (0: none) and a num_layers override (None: default)."""

    bits: str
    repeat: int = 0
    layers: int | None = None

    @property
    def plain(self) -> bool:
        """Whether the label is a bare unmask spec (no variant suffix)."""
        return self.repeat == 0 and self.layers is None

    def __str__(self) -> str:
        return self.bits + (f"+r{self.repeat}" if self.repeat else "") + (f"@{self.layers}" if self.layers else "")

    def order(self) -> tuple[bool, str, int, int]:
        """Plain specs first, then variants by spec, repetitions and layers (numerically)."""
        return (not self.plain, self.bits, self.repeat, self.layers or 0)


def parse_label(label: str, groups: int | None = None) -> Label | None:
    """``0011+r1@15`` -> Label("0011", 1, 15); none/all become GROUPS zeros/ones; None when malformed."""
    match = LABEL.fullmatch(label)
    if match is None:
        return None
    spec = match["spec"]
    if groups is not None:
        spec = {"none": "0" * groups, "all": "1" * groups}.get(spec, spec)
    layers = match["layers"]
    return Label(spec, int(match["repeat"] or 0), int(layers) if layers else None)


def is_plain(label: str) -> bool:
    """Whether LABEL has no variant suffix."""
    parsed = parse_label(label)
    return parsed is not None and parsed.plain


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
    """One run label's or baseline's runs: F1, P, R and words/s over seeds, and the training cost:
    seconds per update (train_seconds / max_steps) over the seeds that recorded both, and the total
    train_seconds over the TIMED runs that recorded it."""

    name: str
    seeds: tuple[Any, ...]
    f: Stat
    p: Stat
    r: Stat
    wps: Stat
    per_update: Stat | None = None
    train_seconds: float = 0.0
    timed: int = 0
    wall_timed: bool = False  # per_update is wall time: no seed recorded CPU time
    updates: int | None = None  # the training budget (max_steps) its runs recorded, when they agree


def number(value: Any) -> float | None:
    """VALUE as a float when it is a real number (not a bool), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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


def train_cost(run: dict[str, Any]) -> float | None:
    """A run's training seconds: the CPU time of `spacy train` where recorded (a busy machine
    does not inflate it; one torch thread per run makes it the time on an idle core), else its
    wall time."""
    cpu = number(run.get("train_cpu_seconds"))
    return cpu if cpu is not None else number(run.get("train_seconds"))


def budget(steps: list[float | None]) -> int | None:
    """The max_steps that the runs recorded, when those that recorded one agree (else None)."""
    recorded = {int(n) for n in steps if n is not None and n > 0}
    return recorded.pop() if len(recorded) == 1 else None


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
    times = [train_cost(run) for run in runs]
    steps = [number(run.get("max_steps")) for run in runs]
    cpu = [number(run.get("train_cpu_seconds")) for run in runs]
    # the cost per update never mixes CPU and wall time: CPU time where any seed recorded it
    cpu_timed = any(t is not None for t in cpu)
    costs = cpu if cpu_timed else times
    per_update = [t / n for t, n in zip(costs, steps, strict=True) if t is not None and n is not None and n > 0]
    timed = [t for t in times if t is not None]
    return Summary(
        name=name,
        seeds=tuple(sorted(seeds, key=lambda s: (s is None, s if s is not None else 0))),
        f=Stat.of([s["f"] for s in scores]),
        p=Stat.of([s["p"] for s in scores]),
        r=Stat.of([s["r"] for s in scores]),
        wps=Stat.of([run["words_per_second"] for run in runs]),
        per_update=Stat.of(per_update) if per_update else None,
        train_seconds=sum(timed),
        timed=len(timed),
        wall_timed=not cpu_timed and bool(per_update),
        updates=budget(steps),
    )


def normalise_specs(runs: dict[str, dict[str, Any]]) -> dict[str, Summary]:
    """Summaries keyed by run label (``<bits>[+r<k>][@<n>]``, none/all read as all zeros/ones of the
    common length): plain specs first in bit order, then the variants sorted by spec, k and n."""
    groups = group_by_key(runs, key_field="spec")
    for key in groups:
        if parse_label(key) is None:
            sys.exit(
                f"{key!r}: metrics files must be named after an unmask spec with optional variant suffixes, "
                f"{LABEL_GRAMMAR}; as <label>.json or <label>.seed<k>.json"
            )
    lengths = {len(parsed.bits) for parsed in map(parse_label, groups) if BITS.fullmatch(parsed.bits)}
    if len(lengths) > 1:
        sys.exit(f"Unmask specs of different lengths {sorted(lengths)}: keep one sweep per metrics directory")
    m = lengths.pop() if lengths else DEFAULT_GROUPS
    labels: dict[Label, list[dict[str, Any]]] = {}
    for key, group in groups.items():
        labels.setdefault(parse_label(key, m), []).extend(group)
    return {str(label): summarise(str(label), labels[label]) for label in sorted(labels, key=Label.order)}


def plain_specs(specs: dict[str, Summary]) -> dict[str, Summary]:
    """The rows without a variant suffix (the heatmap's columns)."""
    return {label: s for label, s in specs.items() if is_plain(label)}


def variant_specs(specs: dict[str, Summary]) -> dict[str, Summary]:
    """The rows with a variant suffix (+r<k> and/or @<n>)."""
    return {label: s for label, s in specs.items() if not is_plain(label)}


def causal_label(specs: dict[str, Summary]) -> str:
    """The fully causal plain spec of the sweep's length (``0000`` for 4 groups)."""
    parsed = parse_label(next(iter(specs)))
    return "0" * (len(parsed.bits) if parsed is not None else len(next(iter(specs))))


def describe(label: str) -> str:
    """Say which groups a label unmasks, and its variant, e.g. ``0011`` -> ``groups 3-4``,
    ``1011`` -> ``groups 1, 3-4``, ``0000+r1`` -> ``none (causal), input repeated 1x``,
    ``0011@15`` -> ``groups 3-4, first 15 blocks``."""
    parsed = parse_label(label)
    if parsed is None:
        return label
    suffix = (f", input repeated {parsed.repeat}x" if parsed.repeat else "") + (
        f", first {parsed.layers} blocks" if parsed.layers else ""
    )
    return describe_bits(parsed.bits) + suffix


def describe_bits(spec: str) -> str:
    """``0011`` -> ``groups 3-4``; all zeros -> ``none (causal)``."""
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


def delta_text(stat: Stat, reference: Summary | None) -> str:
    """F1 difference to the reference row (the causal spec or the best row) in points, with the spread mark."""
    if reference is None:
        return "n/a"
    mark = MARK if exceeds_spread(stat, reference.f) else ""
    return f"{100 * (stat.mean - reference.f.mean):+.1f}{mark}"


def best_spec(specs: dict[str, Summary]) -> str:
    """The spec with the highest mean F1 (the first in spec order on ties)."""
    return max(specs, key=lambda spec: specs[spec].f.mean)


def cost_text(summary: Summary) -> str:
    """Mean training seconds per update over seeds (``0.55``; ``0.55 (2 of 3 seeds)`` when some runs lack
    a time), or ``n/a`` when no run recorded train_seconds and max_steps."""
    stat = summary.per_update
    if stat is None:
        return "n/a"
    text = f"{stat.mean:,.0f}" if stat.mean >= 1000 else f"{stat.mean:.3g}"
    text += " (wall)" if summary.wall_timed else ""
    return text if stat.n == summary.f.n else f"{text} ({stat.n} of {summary.f.n} seeds)"


def compute_line(specs: dict[str, Summary], baselines: dict[str, Summary] | None = None) -> str:
    """The total training compute of all runs, the baselines' included: the summed train_seconds, in hours."""
    rows = [*specs.values(), *(baselines or {}).values()]
    timed = sum(s.timed for s in rows)
    untimed = sum(s.f.n for s in rows) - timed
    counted = f"(runs without a recorded time not counted: {untimed})"
    if not timed:
        return f"Compute: no training time recorded {counted}."
    hours = sum(s.train_seconds for s in rows) / 3600
    runs = "1 run" if timed == 1 else f"{timed} runs"
    return (
        f"Compute: {hours:.2f} CPU-hours of training, the summed CPU time (else wall time) of `spacy train` "
        f"over {runs} {counted}."
    )


def seeds_text(summary: Summary) -> str:
    """``3 (0, 1, 2)``, or ``1`` for a file without a seed."""
    known = [str(s) for s in summary.seeds if s is not None]
    return f"{len(summary.seeds)} ({', '.join(known)})" if known else str(len(summary.seeds))


def spread_verdict(verdict: bool | None) -> str:
    """The end of a summary sentence for exceeds_spread's answer."""
    if verdict is None:
        return "; one seed only, so no seed spread to compare with."
    return "; the difference exceeds the seed spread." if verdict else "; the difference is within the seed spread."


def summary_line(specs: dict[str, Summary], prefix: str = "Best configuration") -> str:
    """State the best plain spec, its F1 difference to the fully causal spec, and whether that exceeds
    the seed spread (variant rows are left out: see summary_lines)."""
    specs = plain_specs(specs)
    if not specs:
        return "No plain unmask spec (a label without +r<k> or @<n>) among the runs, so no heatmap."
    best = best_spec(specs)
    s = specs[best]
    seeds = f" over {s.f.n} seeds" if s.f.n > 1 else ""
    line = f"{prefix}: `{best}` ({describe(best)}), F1 {s.f.text()}{seeds}"
    causal = "0" * len(best)
    if causal not in specs:
        return line + f"; no fully causal run (`{causal}`) to compare with."
    c = specs[causal].f
    line += f", {100 * (s.f.mean - c.mean):+.1f} points vs. the fully causal `{causal}` ({c.text()})"
    verdict = exceeds_spread(s.f, c)
    if best == causal:
        return line + "."
    return line + spread_verdict(verdict)


def summary_lines(specs: dict[str, Summary]) -> list[str]:
    """The summary: the best plain spec vs. the causal one; with variants, also the best variant vs.
    the best plain spec (with the same seed-spread rule) and the best row overall."""
    variants = variant_specs(specs)
    if not variants:
        return [summary_line(specs)]
    plain = plain_specs(specs)
    lines = [summary_line(specs, prefix="Best plain spec")]
    name = best_spec(variants)
    v = variants[name]
    seeds = f" over {v.f.n} seeds" if v.f.n > 1 else ""
    line = f"Best variant: `{name}` ({describe(name)}), F1 {v.f.text()}{seeds}"
    if plain:
        top = best_spec(plain)
        b = plain[top].f
        line += f", {100 * (v.f.mean - b.mean):+.1f} points vs. the best plain spec `{top}` ({b.text()})"
        line += spread_verdict(exceeds_spread(v.f, b))
    else:
        line += "."
    lines.append(line)
    best = best_spec(specs)
    kind = "a variant" if best in variants else "a plain spec"
    lines.append(f"Best row overall: `{best}` ({describe(best)}), {kind}, F1 {specs[best].f.text()}.")
    return lines


def markdown_report(specs: dict[str, Summary], baselines: dict[str, Summary] | None) -> str:
    """The report: one row per run label (plain specs, then variants; the best in bold), the baselines,
    the spread rule, the summary lines and the compute line."""
    best = best_spec(specs)
    plain = plain_specs(specs)
    best_plain = best_spec(plain) if plain else None
    causal_spec = causal_label(specs)
    causal = specs.get(causal_spec)
    variants = bool(variant_specs(specs))
    lines = [
        "# Unmasked layer groups: span scores on the held-out test split",
        "",
        "Spec bits run from the group nearest the input (left) to the output (right); 1 = bidirectional. "
        "Scores are mean ± sample standard deviation over seeds (one value: one seed), in %. "
        "Train s/update = CPU time (user + system) of `spacy train` / max_steps, mean over seeds; "
        "(wall) = no seed recorded CPU time, so wall time, which a busy machine inflates; "
        "Words/s = inference speed on the test split, measured by `evaluate.py` after each run, so a run that "
        "shared the CPU with others reads lower (`benchmarks/bench_pipelines.py` measures pipelines side by side).",
    ]
    budgets = {s.updates for s in specs.values()}
    if len(budgets) == 1 and None not in budgets:
        lines[-1] += (
            f" Every spec run trained {budgets.pop():,} updates; a baseline row names its own budget where recorded."
        )
    if variants:
        lines += [
            "",
            "Variant rows (after the plain specs): `+r<k>` = the input repeated k more times (sequence repetition), "
            "`@<n>` = features from the first n decoder blocks instead of the sweep's default; "
            "the heatmap shows the plain specs only.",
        ]
    lines += [
        "",
        "| Spec | Unmasked | F1 | P | R | Seeds | Train s/update | Words/s | Δ F1 vs causal | Δ F1 vs best |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec, s in specs.items():
        cells = [spec, describe(spec), s.f.text(), s.p.text(), s.r.text(), seeds_text(s), cost_text(s)]
        cells.append(f"{s.wps.mean:,.0f}")
        cells.append("—" if causal is not None and spec == causal_spec else delta_text(s.f, causal))
        cells.append("—" if spec == best else delta_text(s.f, specs[best]))
        if spec == best:
            cells = [f"**{cell}**" for cell in cells]
            cells[0] += " (best)"
        elif spec == best_plain:
            cells[0] += " (best plain spec)"
        lines.append("| " + " | ".join(cells) + " |")
    if baselines is not None:
        lines += ["", "## Baselines", ""]
        if baselines:
            lines += [
                "| Name | F1 | P | R | Seeds | Train s/update | Words/s | Δ F1 vs causal | Δ F1 vs best |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for b in baselines.values():
                name = f"{b.name} ({b.updates:,} updates)" if b.updates else b.name
                cells = [name, b.f.text(), b.p.text(), b.r.text(), seeds_text(b), cost_text(b)]
                cells += [f"{b.wps.mean:,.0f}", delta_text(b.f, causal), delta_text(b.f, specs[best])]
                lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("No baseline metrics found.")
    lines += ["", SPREAD_RULE + "."]
    for line in [*summary_lines(specs), compute_line(specs, baselines)]:
        lines += ["", line]
    return "\n".join([*lines, ""])


def draw_heatmap(specs: dict[str, Summary], path: Path) -> Figure:
    """Groups (y, group 1 at the bottom) by configurations (x); unmasked cells coloured by mean F1,
    F1 mean ± SD above each column, marked where the difference to the causal spec exceeds the seed
    spread, and above it P and R (mean ± SD) in grey.
    Only plain specs are drawn (variant rows are left out); ValueError without any."""
    specs = plain_specs(specs)
    if not specs:
        raise ValueError("No plain unmask spec to draw (only variant labels).")
    names = list(specs)
    m = len(names[0])
    f1 = np.array([100 * specs[spec].f.mean for spec in names])
    grid = np.array([[f1[x] if spec[g] == "1" else np.nan for x, spec in enumerate(names)] for g in range(m)])
    low, high = f1.min(), f1.max()
    norm = Normalize(low - 0.5, high + 0.5) if low == high else Normalize(low, high)
    best = names.index(best_spec(specs))
    causal = specs.get("0" * m)
    with_sd = any(s.f.sd is not None for s in specs.values())

    fig = Figure(figsize=(max(4.5, 0.6 * len(names) + 2.5), 0.5 * m + (4.0 if with_sd else 3.3)), layout="constrained")
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
        p, r = specs[spec].p, specs[spec].r
        ax.annotate(
            f"P {p.text()}\nR {r.text()}".replace(" ± ", "±"),
            (x, m - 0.5),
            xytext=(0, 3 + (19 if stat.sd is not None else 10)),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=6 if len(names) > 8 else 7,
            color="dimgray",
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
    ax.set_title(f"F1 by unmasked layer groups ({seeds}; P and R in grey)", pad=52 if with_sd else 34)
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
    """Write OUTPUT_DIR/report.md and OUTPUT_DIR/heatmap.png from the run metrics in METRICS_DIR
    (``<label>.seed<k>.json`` per seed, or single ``<label>.json`` files; label ``<spec>[+r<k>][@<n>]``)."""
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
    heatmap = output_dir / "heatmap.png"
    if plain_specs(specs):
        draw_heatmap(specs, heatmap)
        outputs = f"{output_dir / 'report.md'}, heatmap.png"
    else:
        heatmap.unlink(missing_ok=True)  # a stale one would show another sweep
        outputs = f"{output_dir / 'report.md'} (no plain specs, so no heatmap)"
    n_runs = sum(s.f.n for s in specs.values())
    n_variants = len(variant_specs(specs))
    of_which = f", {n_variants} of them variants" if n_variants else ""
    print(f"{len(specs)} configurations ({n_runs} runs){of_which} from {metrics_dir} -> {outputs}")
    for line in [*summary_lines(specs), compute_line(specs, baseline_runs)]:
        print(line.replace("`", ""))


if __name__ == "__main__":
    typer.run(main)
