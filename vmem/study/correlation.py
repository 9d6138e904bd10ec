"""The seed notebook's correlation heatmaps (EleutherAI/pythia, predictable-memorization/eda.ipynb,
"Model correlation plots" and "Checkpoint correlation plots"): Pearson's r between every pair of
models of a suite at one checkpoint, and between every pair of checkpoints of one model over the
indices all of them evaluated, on the score, on "score ≥ the run's 90th / 99th percentile" and on
"memorized", each as a 0/1 series for the last three.

A run holds up to 146M sequences. Every subset of a pair is a function of the two runs' levels
(matches 0..cont_len, or a flag), so one pass over the pair builds the joint histogram of levels
chunk by chunk, and each r follows from that histogram's exact integer moments: no float copy of
a run, and no cancellation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study import passes
from vmem.study.comparisons import checkpoints_by_model
from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.plots import save_cropped

COLUMNS = ["a", "b", "subset", "pearson", "sequences"]
# The notebook's subsets: the score, the top 10% and 1% of the run's scores, the memorized flag.
TOP_PERCENTILES = {"top90": 90, "top99": 99}
SUBSETS = ("score", *TOP_PERCENTILES, "memorized")


def tables(study: Study) -> dict[str, pd.DataFrame]:
    thresholds = {run.name: score_thresholds(run) for run in study.standing
                  if run.matches is not None}
    found = {"score_correlation": model_table(study.standing, thresholds),
             "checkpoint_correlation": checkpoint_table(study.standing, thresholds)}
    return {name: table for name, table in found.items() if len(table)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    runs = {run.name: run for run in study.standing}
    drawn = {}
    if "score_correlation" in study.tables:
        model_figure(study.tables["score_correlation"], runs, folder / "score_correlation.png")
        drawn["score_correlation"] = "score_correlation.png"
    if "checkpoint_correlation" in study.tables:
        checkpoint_figure(study.tables["checkpoint_correlation"], runs,
                          folder / "checkpoint_correlation.png")
        drawn["checkpoint_correlation"] = "checkpoint_correlation.png"
    return drawn


def section(doc: Document, study: Study) -> None:
    if "score_correlation" not in study.tables and "checkpoint_correlation" not in study.tables:
        return
    doc.section("The seed's figures: correlation between runs")
    doc.paragraph("As the seed's notebook (eda.ipynb) computed it: Pearson's r between two runs' "
                  "per-sequence series, on the sequences both evaluated: the score (subset "
                  "score), whether the score is at least the run's own 90th or 99th percentile "
                  "(top90, top99; numpy's linear percentile over all the run's sequences; as "
                  "0/1), and whether the sequence is memorized (as 0/1). The score subsets need "
                  "generation runs; memorized works for every run. r near 1 says the two runs "
                  "score (or memorize) the same sequences; near 0, that which sequences one "
                  "memorizes says nothing about the other. A subset constant in a run (nothing "
                  "memorized, say) has no r.")
    for name, text, caption in (
            ("score_correlation",
             "Between models of a suite at each checkpoint two or more of them share (the "
             "notebook: all sizes at step 143000). The figure shows each suite's latest such "
             "checkpoint.",
             "Pearson's r between models at one checkpoint, per subset."),
            ("checkpoint_correlation",
             "Between the checkpoints of each model, over the indices all of them evaluated (the "
             "notebook: below 23,000 · 1,024, what every checkpoint of its grid had trained on).",
             "Pearson's r between the checkpoints of each model (the score where the runs have "
             "it, else memorized).")):
        if name in study.tables:
            doc.paragraph(text)
            doc.table(show(study.tables[name]))
            doc.figure(study.figures[name], caption)


def score_thresholds(run: Run) -> dict[str, float]:
    """The score each top subset starts at, from the whole run's score histogram."""
    counts = passes.score_counts(run)
    return {subset: passes.score_percentile(counts, run.cont_len, q)
            for subset, q in TOP_PERCENTILES.items()}


def levels(run: Run, start: int, stop: int) -> np.ndarray:
    """The run's per-sequence level on [start, stop): matches, or the memorized flag as 0/1."""
    if run.matches is not None:
        return run.matches[start - run.start:stop - run.start]
    return run.memorized(start, stop).view(np.uint8)


def level_count(run: Run) -> int:
    return run.cont_len + 1 if run.matches is not None else 2


def joint_histogram(a: Run, b: Run, start: int, stop: int,
                    among: Sequence[Run]) -> np.ndarray:
    """How many sequences of [start, stop) that every run of `among` trained on have each pair
    of levels (a's, b's)."""
    rows, cols = level_count(a), level_count(b)
    joint = np.zeros(rows * cols, dtype=np.int64)
    for lo, hi in passes.chunks(start, stop):
        code = levels(a, lo, hi).astype(np.intp)
        code *= cols
        code += levels(b, lo, hi)
        if (trained := passes.trained_mask(among, lo, hi)) is not None:
            code = code[trained]
        joint += np.bincount(code, minlength=rows * cols)
    return joint.reshape(rows, cols)


def subset_values(run: Run, subset: str, thresholds: dict[str, dict[str, float]]) -> np.ndarray:
    """Each level's value in `subset` (integers, so the moments below stay exact)."""
    if run.matches is None:  # levels are the memorized flag
        return np.array([0, 1], dtype=np.int64)
    matches = np.arange(run.cont_len + 1, dtype=np.int64)
    if subset == "score":  # r is the same on matches as on matches / cont_len
        return matches
    if subset == "memorized":
        return (matches == run.cont_len).astype(np.int64)
    return (matches / run.cont_len >= thresholds[run.name][subset]).astype(np.int64)


def pearson(joint: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """Pearson's r of the series whose levels have the values u (rows) and v (columns) and whose
    pairs of levels are counted in `joint`, from exact integer moments; NaN when either series
    is constant."""
    n = int(joint.sum())
    rows, cols = joint.sum(axis=1), joint.sum(axis=0)
    sx, sy = int(u @ rows), int(v @ cols)
    sxx, syy, sxy = int((u * u) @ rows), int((v * v) @ cols), int(u @ joint @ v)
    vx, vy = n * sxx - sx * sx, n * syy - sy * sy
    if vx == 0 or vy == 0:
        return math.nan
    return (n * sxy - sx * sy) / (math.sqrt(vx) * math.sqrt(vy))


def pair_rows(a: Run, b: Run, start: int, stop: int, thresholds: dict[str, dict[str, float]],
              among: Sequence[Run]) -> list[dict]:
    """One row per subset both runs have, over the indices of [start, stop) that every run of
    `among` trained on; none with fewer than two (no r)."""
    joint = joint_histogram(a, b, start, stop, among)
    sequences = int(joint.sum())
    if sequences < 2:
        return []
    both_scored = a.matches is not None and b.matches is not None
    return [dict(a=a.name, b=b.name, subset=subset,
                 pearson=pearson(joint, subset_values(a, subset, thresholds),
                                 subset_values(b, subset, thresholds)),
                 sequences=sequences)
            for subset in SUBSETS if both_scored or subset == "memorized"]


def model_table(runs: list[Run], thresholds: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Every pair of models of a suite at a checkpoint two or more share, on the sequences both
    evaluated (and trained on; a pair with fewer than two has no r and no row)."""
    groups: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.suite, -1 if run.step is None else run.step)].append(run)
    rows = []
    for key in sorted(groups):
        for a, b in combinations(by_size(groups[key]), 2):
            start, stop = max(a.start, b.start), min(a.stop, b.stop)
            if stop - start >= 2:
                rows += pair_rows(a, b, start, stop, thresholds, (a, b))
    return pd.DataFrame(rows, columns=COLUMNS)


def checkpoint_table(runs: list[Run], thresholds: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Every pair of checkpoints of a model, over the indices all its checkpoints evaluated (and
    trained on)."""
    rows = []
    for checkpoints in checkpoints_by_model(runs).values():
        start = max(r.start for r in checkpoints)
        stop = min(r.stop for r in checkpoints)
        if stop - start < 2:
            continue
        for a, b in combinations(checkpoints, 2):
            rows += pair_rows(a, b, start, stop, thresholds, checkpoints)
    return pd.DataFrame(rows, columns=COLUMNS)


def matrix(table: pd.DataFrame, names: list[str], subset: str) -> np.ndarray:
    """The symmetric matrix of r among `names` (1 on the diagonal, as the notebook shows it)."""
    where = {name: i for i, name in enumerate(names)}
    values = np.full((len(names), len(names)), np.nan)
    np.fill_diagonal(values, 1.0)
    for row in table[table["subset"] == subset].itertuples():
        if row.a in where and row.b in where:
            values[where[row.a], where[row.b]] = values[where[row.b], where[row.a]] = row.pearson
    return values


def heatmap(ax, values: np.ndarray, labels: list[str], title: str) -> None:
    """An annotated heatmap, values to two decimals, first label at the bottom (as the
    notebook's inverted axis)."""
    ax.imshow(values, cmap="coolwarm", vmin=-1, vmax=1, origin="lower")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    size = 8 if len(labels) <= 8 else 5
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                fontsize=size, color="white" if abs(v) > 0.6 else "black")
    ax.set_title(title, fontsize=9)


def grid(panels: int, columns: int = 4, width: float = 3.6, height: float = 3.6):
    """A figure of `panels` axes, `columns` to a row; the axes in order (the spare ones to
    hide)."""
    from matplotlib.figure import Figure

    cols = min(panels, columns)
    nrows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, cols, squeeze=False).ravel()


def by_size(runs: list[Run]) -> list[Run]:
    """Runs in the order the figures show them: by suite, size and name."""
    return sorted(runs, key=lambda r: (r.suite, r.params or 0, r.name))


def model_figure(table: pd.DataFrame, runs: dict[str, Run], path: Path) -> None:
    """Per suite, its latest checkpoint with a pair: one heatmap per subset."""
    pairs = [(runs[a], runs[b]) for a, b in table[["a", "b"]].drop_duplicates().itertuples(
        index=False)]
    latest: dict[str, int] = {}
    for a, _ in pairs:
        latest[a.suite] = max(latest.get(a.suite, -1), -1 if a.step is None else a.step)
    panels = []
    for suite, step in sorted(latest.items()):
        shown = by_size(list({r.name: r for pair in pairs for r in pair if r.suite == suite
                              and (-1 if r.step is None else r.step) == step}.values()))
        names = [r.name for r in shown]
        for subset in SUBSETS:
            rows = table[(table["subset"] == subset) & table["a"].isin(names)]
            if len(rows):
                title = f"{suite}, step {step if step >= 0 else '?'}: {subset}"
                panels.append((matrix(table, names, subset), [r.label for r in shown], title))
    fig, axes = grid(len(panels))
    for ax, (values, labels, title) in zip(axes, panels, strict=False):
        heatmap(ax, values, labels, title)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    save_cropped(fig, path)


def checkpoint_figure(table: pd.DataFrame, runs: dict[str, Run], path: Path) -> None:
    """Per model, its checkpoints' r on the score (else on memorized)."""
    models: dict[str, list[Run]] = defaultdict(list)
    for run in by_size([runs[name] for name in dict.fromkeys([*table["a"], *table["b"]])]):
        models[run.model].append(run)
    fig, axes = grid(len(models))
    for ax, checkpoints in zip(axes, models.values(), strict=False):
        checkpoints.sort(key=lambda r: r.step)
        names = [r.name for r in checkpoints]
        rows = table[table["a"].isin(names)]
        subset = "score" if (rows["subset"] == "score").any() else "memorized"
        heatmap(ax, matrix(rows, names, subset), [str(r.step) for r in checkpoints],
                f"{checkpoints[0].label}: {subset}")
    for ax in axes[len(models):]:
        ax.set_visible(False)
    save_cropped(fig, path)
