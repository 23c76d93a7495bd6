"""Compare a successive-halving search (scripts/search.py) with the full spec study
(scripts/sweep.py): does the search's pick land within one seed SD of the study's best test F1,
and at what share of the study's compute (training updates summed over runs or trials)?

Inputs: METRICS_DIR, the study's ``<label>.seed<k>.json`` files (plain specs only are compared:
the search covers unmask specs); SEARCH_DIR, holding the search's ``search.json`` and
``pick.json``, scripts/evaluate.py's test-split metrics of the search's ``model-best``.
Output: a markdown report (reports/search.md in the project)."""

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from report import Summary, best_spec, describe, is_plain, load_dir, main_scores, normalise_specs, number, plain_specs

MAX_SHARE = 0.30  # the search must cost at most this share of the study's updates


def load_json(path: Path, what: str) -> dict[str, Any]:
    """PATH's JSON, or exit naming the file and how to make it."""
    if not path.is_file():
        sys.exit(f"{path} is missing: {what}.")
    try:
        return json.loads(path.read_text(encoding="utf8"))
    except ValueError as error:
        sys.exit(f"{path} is not valid JSON ({error}): {what}.")


def seed_sd(best: Summary, specs: dict[str, Summary]) -> tuple[float | None, str]:
    """The seed SD to judge against: the best spec's own when it has 2+ seeds, else the pooled SD
    (root mean variance) of the specs that have; None when no spec has two seeds."""
    if best.f.sd is not None:
        return best.f.sd, f"the SD of `{best.name}` over its {best.f.n} seeds"
    spread = [s.f.sd for s in specs.values() if s.f.sd is not None]
    if not spread:
        return None, "no spec has two seeds"
    pooled = math.sqrt(sum(sd * sd for sd in spread) / len(spread))
    return pooled, f"`{best.name}` has one seed, so the pooled SD of the {len(spread)} specs with 2+ seeds"


def study_updates(runs: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Updates summed over the study's plain-spec runs, and the largest max_steps of one run."""
    steps = [int(number(run.get("max_steps")) or 0) for run in runs.values()]
    return sum(steps), max(steps, default=0)


def plain_runs(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The metrics files of plain specs (``0011.seed0``, ``none.seed1``), keyed by file stem."""
    return {stem: run for stem, run in runs.items() if is_plain(str(run.get("spec") or stem.split(".")[0]))}


def trial_lines(trials: list[dict[str, Any]]) -> list[str]:
    """The search's trials, best dev score first: spec, updates, best dev F1, whether ASHA stopped it."""
    lines = ["| spec | updates | best dev score | stopped early |", "|---|---:|---:|---|"]
    for row in trials:
        if row.get("status") != "finished":
            lines.append(f"| {row.get('spec')} | | error: {str(row.get('error', '')).replace('|', '/')} | |")
            continue
        stopped = "yes" if row["stopped_early"] else "no"
        lines.append(f"| {row['spec']} | {row['steps']} | {100 * row['best_score']:.1f} | {stopped} |")
    return lines


def compare(
    runs: dict[str, dict[str, Any]], search: dict[str, Any], pick: dict[str, Any], *, study_seeds: int, groups: int
) -> str:
    """The markdown report of the search against the study."""
    specs = plain_specs(normalise_specs(runs))
    if not specs:
        sys.exit("The study has no plain unmask spec to compare with: run the sweep (scripts/sweep.py) first.")
    best_name = best_spec(specs)
    best = specs[best_name]
    sd, sd_source = seed_sd(best, specs)
    chosen = search.get("best")
    if not chosen:
        sys.exit("search.json has no finished best trial: rerun scripts/search.py until a trial finishes.")
    trials = search.get("trials", [])
    search_steps = sum(int(row["steps"]) for row in trials if row.get("status") == "finished")
    ran_steps, per_run = study_updates(plain_runs(runs))
    planned = (2**groups) * study_seeds * per_run
    one_seed = (2**groups) * per_run
    pick_f = main_scores(pick)
    n_specs = len({row.get("spec") for row in trials})
    lines = [
        "# The search against the full study",
        "",
        f"Search: ASHA over {len(trials)} trials ({n_specs} specs), budget {search.get('budget')} updates per trial"
        f", rungs from {search.get('grace')} (reduction factor {search.get('reduction_factor')}), "
        f"seed {chosen.get('seed')}, dev split only. Study: {sum(s.f.n for s in specs.values())} runs of "
        f"{len(specs)} plain specs at {per_run} updates each, scored on the test split.",
        "",
        "| | spec | test F1 | P | R | updates |",
        "|---|---|---:|---:|---:|---:|",
        f"| study's best | `{best_name}` ({describe(best_name)}) | {best.f.text()} | {best.p.text()} | "
        f"{best.r.text()} | {ran_steps:,} run ({planned:,} for {2**groups} specs x {study_seeds} seeds) |",
        f"| search's pick | `{chosen['spec']}` ({describe(chosen['spec'])}) | {100 * pick_f['f']:.1f} | "
        f"{100 * pick_f['p']:.1f} | {100 * pick_f['r']:.1f} | {search_steps:,} |",
    ]
    if chosen["spec"] in specs:
        lines += ["", f"The study's F1 for the picked spec `{chosen['spec']}`: {specs[chosen['spec']].f.text()}."]
    share = search_steps / planned if planned else None
    lines += [""]
    if sd is None:
        lines.append("Within one seed SD: cannot say, as no study spec has two seeds.")
    else:
        gap = 100 * (pick_f["f"] - best.f.mean)
        within = gap >= -100 * sd
        lines.append(
            f"Within one seed SD of the study's best: **{'yes' if within else 'no'}**: the pick's test F1 is "
            f"{gap:+.1f} points from the best mean, and one SD is {100 * sd:.1f} ({sd_source})."
        )
        lines.append("")
    if share is not None:
        verdict = "yes" if share <= MAX_SHARE else "no"
        lines.append(
            f"At most {MAX_SHARE:.0%} of the study's compute: **{verdict}**: {search_steps:,} updates are "
            f"{share:.0%} of the {planned:,} of {2**groups} specs x {study_seeds} seeds "
            f"({search_steps / one_seed:.0%} of one seed's {one_seed:,})."
        )
    lines += ["", "## Every trial of the search", "", *trial_lines(trials), ""]
    return "\n".join(lines)


def main(
    metrics_dir: Path,
    search_dir: Path,
    output: Path,
    study_seeds: Annotated[int, typer.Option(help="Seeds per spec of the full study (its planned compute)")] = 3,
    groups: Annotated[int, typer.Option(help="Layer groups of the study's specs (2^groups specs)")] = 4,
):
    """Write OUTPUT (markdown): the search in SEARCH_DIR against the study in METRICS_DIR."""
    runs = load_dir(metrics_dir) if metrics_dir.is_dir() else {}
    if not runs:
        sys.exit(f"No metrics JSON files in {metrics_dir}: run the study (scripts/sweep.py) first.")
    search = load_json(search_dir / "search.json", "copy the search's OUTPUT/search.json there")
    pick = load_json(
        search_dir / "pick.json", "score the search's model-best on the test split with scripts/evaluate.py"
    )
    try:
        text = compare(runs, search, pick, study_seeds=study_seeds, groups=groups)
    except ValueError as error:
        sys.exit(str(error))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf8")
    print(f"{output}:")
    for line in text.splitlines():
        if line.startswith(("Within", "At most")):
            print(" ", line.replace("*", ""))


if __name__ == "__main__":
    typer.run(main)
