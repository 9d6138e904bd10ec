"""The seed notebook's least-squares line of score on sequence index (EleutherAI/pythia,
predictable-memorization/eda.ipynb, "Model Accuracy Linear Regression plot"): per generation run,
over all its sequences and over those scoring at least the run's 90th / 99th percentile, the
line's slope, its total variation across the selected indices and that variation in percent.

Runs hold up to 146M sequences: the line comes from streaming co-moments over chunks and the
percentile from the score histogram, so no float copy of a run is ever made.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study import passes
from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.plots import large_numbers, save_cropped

COLUMNS = ["run", "percentile", "slope", "variation", "percent_change"]
# The notebook's filters; 0 selects every sequence (np.percentile(·, 0) is the minimum).
PERCENTILES = (0, 90, 99)


def tables(study: Study) -> dict[str, pd.DataFrame]:
    table = trend_table([run for run in study.runs if run.matches is not None])
    return {"index_trend": table} if len(table) else {}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "index_trend" not in study.tables:
        return {}
    trend_figure(study.tables["index_trend"], study.standing, folder / "index_trend.png")
    return {"index_trend": "index_trend.png"}


def section(doc: Document, study: Study) -> None:
    if "index_trend" not in study.tables:
        return
    doc.section("The seed's figures: score against sequence index")
    doc.paragraph("As the seed's notebook (eda.ipynb) computed it: per generation run, the "
                  "least-squares line L of score on sequence index, over all sequences "
                  "(percentile 0) and over those scoring at least the run's 90th or 99th "
                  "percentile (numpy's default, linear percentile). slope is L's; variation is "
                  "L(last) − L(first) over the first and last selected index; percent_change is "
                  "100 · variation / L(first). A line flat within noise says the model scores "
                  "sequences alike wherever they lay in training; a positive slope says it "
                  "scores later (more recently seen) sequences higher.")
    doc.table(show(study.tables["index_trend"]))
    doc.figure(study.figures["index_trend"],
               "Percent change of the fitted line across the run, per checkpoint and percentile.")


def top_scores(run: Run, counts: np.ndarray, q: float) -> np.ndarray:
    """Per number of matches 0..cont_len: whether its score is at least the run's q-th
    percentile (the notebook's `evals[evals['accuracy'] >= np.percentile(...)]`)."""
    threshold = passes.score_percentile(counts, run.cont_len, q)
    return np.arange(run.cont_len + 1) / run.cont_len >= threshold


def pass_size() -> int:
    """Sequences per pass over a run's scores: an eighth of passes.CHUNK, as each selected
    sequence costs three 8-byte temporaries here where the other passes cost one."""
    return max(1, passes.CHUNK // 8)


def filter_title(q: int) -> str:
    return "all sequences" if q == 0 else f"score ≥ its {q}th percentile"


def fitted_line(run: Run, kept: np.ndarray) -> dict:
    """The least-squares line of score on index over the trained sequences whose matches `kept`
    marks, from co-moments merged chunk by chunk (Chan et al.'s update: no cancellation at 10^8
    indices); with the first and last selected index."""
    n, mean_x, mean_y, sxx, sxy, first, last = 0, 0.0, 0.0, 0.0, 0.0, None, None
    size = pass_size()
    for a in range(0, run.span, size):
        matches = run.matches[a:a + size]
        selected = kept[matches]
        if run.trained is not None:
            selected &= run.trained[a:a + size]
        where = np.flatnonzero(selected)
        if not where.size:
            continue
        first = run.start + a + int(where[0]) if first is None else first
        last = run.start + a + int(where[-1])
        y = matches[where] / run.cont_len
        x = where.astype(np.float64)  # offsets in the chunk; centred in place below
        del where
        k, cx, cy = x.size, run.start + a + x.mean(), y.mean()
        x -= cx - (run.start + a)
        y -= cy
        dx, dy, total = cx - mean_x, cy - mean_y, n + k
        sxx += float(x @ x) + dx * dx * n * k / total
        sxy += float(x @ y) + dx * dy * n * k / total
        mean_x, mean_y, n = mean_x + dx * k / total, mean_y + dy * k / total, total
    slope = sxy / sxx if sxx > 0 else math.nan  # one selected index fits no line
    return dict(slope=slope, intercept=mean_y - slope * mean_x, first=first, last=last)


def trend_table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        counts = passes.score_counts(run)
        for q in PERCENTILES:
            line = fitted_line(run, top_scores(run, counts, q))
            # As the notebook: variation is fit.iloc[-1] - fit.iloc[0] over the selected rows in
            # index order, so L at the last and first selected index (L(0) when all are kept
            # and the run starts at 0), and its percent change is relative to L(first), × 100.
            at_first = line["slope"] * line["first"] + line["intercept"]
            variation = line["slope"] * (line["last"] - line["first"])
            rows.append(dict(run=run.name, percentile=q, slope=line["slope"], variation=variation,
                             percent_change=100 * variation / at_first if at_first else math.nan))
    return pd.DataFrame(rows, columns=COLUMNS)


def trend_figure(table: pd.DataFrame, standing: list[Run], path: Path) -> None:
    """One panel per percentile: each model's percent change against training step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, len(PERCENTILES), sharey=True)
    runs = {run.name: run for run in standing if run.step is not None}
    shown = table[table["run"].isin(runs)]
    for ax, q in zip(axes, PERCENTILES, strict=True):
        rows = shown[shown["percentile"] == q]
        by_model: dict[str, list[tuple[int, float]]] = {}
        for name, change in zip(rows["run"], rows["percent_change"], strict=True):
            by_model.setdefault(runs[name].label, []).append((runs[name].step, change))
        for label, points in by_model.items():
            steps, changes = zip(*sorted(points), strict=True)
            ax.plot(steps, changes, marker="o", label=label)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(filter_title(q))
        ax.set_xlabel("training step")
        large_numbers(ax.xaxis)
        if by_model:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("% change of the fitted line across the run")
    save_cropped(fig, path)
