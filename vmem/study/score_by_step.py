"""Memorization score against training step: the mean score of the sequences seen in each group
of training steps (index // sequences per step), and a least-squares line per run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vmem.study import passes
from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.distribution import needs_generation
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import frame
from vmem.study.plots import colors, legend, save


def tables(study: Study) -> dict[str, pd.DataFrame]:
    profiles = {run.name: step_profile(run) for run in study.runs if run.matches is not None}
    return {"score_by_step": score_by_step_table(study.runs, profiles),
            "score_trend": trend_table(study.runs, profiles)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if not len(study.tables["score_by_step"]):
        return {}
    score_by_step_figure(study.tables["score_by_step"], study.tables["score_trend"],
                         folder / "score_by_step.png")
    return {"score_by_step": "score_by_step.png"}


def section(doc: Document, study: Study) -> None:
    doc.section("Memorization score against training step")
    if "score_by_step" in study.figures:
        doc.paragraph("Mean score of the sequences seen in each group of training steps; the "
                      "slope is a least-squares line over all of a run's sequences.")
        doc.table(show(study.tables["score_trend"][["run", "sequences", "mean_score",
                                                     "slope_per_1000_steps", "step_first",
                                                     "step_last"]]))
        doc.figure(study.figures["score_by_step"],
                   "Mean memorization score against training step.")
    needs_generation(doc, study)


@dataclass(frozen=True)
class StepProfile:
    """Per training step: how many of the run's (trained) sequences it holds and their summed
    matches."""

    steps: np.ndarray
    sequences: np.ndarray
    matches: np.ndarray


def step_profile(run: Run) -> StepProfile:
    bs = run.sequences_per_step
    first_boundary = -(-run.start // bs) * bs  # the first step start at or after run.start
    edges = np.unique(np.concatenate(
        [[0], np.arange(first_boundary, run.stop, bs, dtype=np.int64) - run.start]))
    per_pass = max(1, passes.CHUNK // bs)  # steps summed per pass: reduceat copies to int64
    sums = per_step(run.matches, edges, per_pass)  # an untrained index holds 0 matches
    if run.trained is None:
        sizes = np.diff(np.append(edges, run.span))
    else:  # steps without a trained sequence are left out
        sizes = per_step(run.trained, edges, per_pass)
        edges, sums, sizes = edges[sizes > 0], sums[sizes > 0], sizes[sizes > 0]
    return StepProfile((run.start + edges) // bs, sizes, sums)


def per_step(values: np.ndarray, edges: np.ndarray, per_pass: int) -> np.ndarray:
    """The sum of `values` from each edge to the next (the last to the end), `per_pass` edges
    at a time."""
    return np.concatenate([
        np.add.reduceat(values[edges[i]:edges[i + per_pass] if i + per_pass < edges.size
                               else values.size], edges[i:i + per_pass] - edges[i],
                        dtype=np.int64)
        for i in range(0, edges.size, per_pass)])


def score_by_step_table(runs: list[Run], profiles: dict[str, StepProfile],
                        bins: int = 50) -> pd.DataFrame:
    """Mean score in up to `bins` contiguous groups of training steps, per run."""
    rows = []
    for run in runs:
        if run.name not in profiles:  # a verification run has no fractional score
            continue
        p = profiles[run.name]
        starts = np.array([g[0] for g in np.array_split(np.arange(p.steps.size),
                                                        min(bins, p.steps.size))])
        sequences = np.add.reduceat(p.sequences, starts)
        matches = np.add.reduceat(p.matches, starts)
        stops = np.append(p.steps[starts[1:]], p.steps[-1] + 1)
        for step_start, step_stop, n, m in zip(p.steps[starts], stops, sequences, matches,
                                               strict=True):
            rows.append(dict(run=run.name, step_start=int(step_start), step_stop=int(step_stop),
                             sequences=int(n), mean_score=m / (n * run.cont_len)))
    return frame(rows, [], ["run", "step_start", "step_stop", "sequences", "mean_score"])


def trend_table(runs: list[Run], profiles: dict[str, StepProfile]) -> pd.DataFrame:
    """Least-squares line of score against training step over all of a run's sequences (each
    sequence weighs one: a step's mean score weighted by its sequence count)."""
    rows = []
    for run in runs:
        if run.name not in profiles:
            continue
        p = profiles[run.name]
        w, x = p.sequences.astype(np.float64), p.steps.astype(np.float64)
        y = p.matches / (w * run.cont_len)
        x_mean, y_mean = np.average(x, weights=w), np.average(y, weights=w)
        spread = np.sum(w * (x - x_mean) ** 2)
        slope = np.sum(w * (x - x_mean) * (y - y_mean)) / spread if spread > 0 else math.nan
        rows.append(dict(run=run.name, sequences=run.evaluated, mean_score=float(y_mean),
                         slope_per_1000_steps=float(slope) * 1000,
                         intercept=float(y_mean - slope * x_mean),
                         step_first=int(p.steps[0]), step_last=int(p.steps[-1])))
    return frame(rows, [], ["run", "sequences", "mean_score", "slope_per_1000_steps",
                            "intercept", "step_first", "step_last"])


def score_by_step_figure(table: pd.DataFrame, trend: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    slopes = dict(zip(trend["run"], trend["slope_per_1000_steps"], strict=True))
    for color, (run, rows) in zip(colors(table["run"].nunique()),
                                  table.groupby("run", sort=False), strict=True):
        middle = (rows["step_start"] + rows["step_stop"]) / 2
        ax.plot(middle, rows["mean_score"], marker=".", lw=1, color=color,
                label=f"{run} (slope {slopes[run]:+.2e} per 1000 steps)")
    ax.set_xlabel("training step at which the sequence was seen (index // sequences per step)")
    ax.set_ylabel("mean memorization score")
    ax.set_title("Memorization score against when the sequence was seen")
    legend(ax)
    save(fig, path)
