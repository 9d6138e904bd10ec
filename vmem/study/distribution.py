"""The distribution of the fractional memorization score (matches / continuation length) per
generation run: the share of each score value, plotted on a log scale as in the paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import frame, score_counts
from vmem.study.plots import colors, legend, save


def tables(study: Study) -> dict[str, pd.DataFrame]:
    # The fractional score exists for generation runs only; verification runs have the flag.
    counts = {run.name: score_counts(run) for run in study.runs if run.matches is not None}
    return {"score_distribution": distribution_table(study.runs, counts)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if not len(study.tables["score_distribution"]):
        return {}
    distribution_figure(study.tables["score_distribution"], folder / "score_distribution.png")
    return {"score_distribution": "score_distribution.png"}


def section(doc: Document, study: Study) -> None:
    doc.section("Score distribution")
    if "score_distribution" in study.figures:
        doc.paragraph("Most sequences score low; the share of each possible score value is "
                      "plotted on a log scale, as in the paper. All values: "
                      "`tables/score_distribution.csv`.")
        doc.table(show(distribution_summary(study.tables["score_distribution"])))
        doc.figure(study.figures["score_distribution"],
                   "Share of sequences at each score value (log scale).")
    needs_generation(doc, study)


def needs_generation(doc: Document, study: Study) -> None:
    """Says which runs an analysis of the fractional score leaves out."""
    if flags_only := [r.name for r in study.runs if r.matches is None]:
        doc.paragraph(f"Needs the fractional score, which only a generation run records "
                      f"(`vmem evaluate --method generate`): not shown for the flags-only "
                      f"run(s) {', '.join(flags_only)}.")


def distribution_table(runs: list[Run], counts: dict[str, np.ndarray]) -> pd.DataFrame:
    """Share of each score value (matches / cont_len) per generation run (those in `counts`)."""
    rows = []
    for run in runs:
        if run.name not in counts:
            continue
        for matches, n in enumerate(counts[run.name]):
            rows.append(dict(run=run.name, matches=matches, score=matches / run.cont_len,
                             sequences=int(n), share=int(n) / run.evaluated))
    return frame(rows, [], ["run", "matches", "score", "sequences", "share"])


def distribution_summary(distribution: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for run, d in distribution.groupby("run", sort=False):
        rows.append(dict(run=run, mean_score=float((d["score"] * d["share"]).sum()),
                         score_0=d.loc[d["matches"] == 0, "share"].sum(),
                         score_at_least_half=d.loc[d["score"] >= 0.5, "share"].sum(),
                         score_1=d["share"].iloc[-1]))
    return pd.DataFrame(rows)


def distribution_figure(distribution: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for color, (run, rows) in zip(colors(distribution["run"].nunique()),
                                  distribution.groupby("run", sort=False), strict=True):
        shown = rows[rows["sequences"] > 0]  # log scale: empty score values have no point
        ax.plot(shown["score"], shown["share"], marker="o", markersize=3, lw=1, color=color,
                label=run)
    ax.set_yscale("log")
    ax.set_xlabel("memorization score (share of the continuation's tokens matched)")
    ax.set_ylabel("share of evaluated sequences (log scale)")
    ax.set_title("Distribution of memorization scores")
    legend(ax)
    save(fig, path)
