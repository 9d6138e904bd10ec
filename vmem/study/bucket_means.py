"""The seed notebook's bucketed means (EleutherAI/pythia, predictable-memorization/eda.ipynb,
"Bucketed Memorization Plots"): per generation run, the mean score over consecutive buckets of
230 training steps of sequences (235,520 for Pythia), over all sequences and over those scoring
at least the run's 90th / 99th percentile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study import passes
from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.index_trend import PERCENTILES, filter_title, pass_size, top_scores
from vmem.study.merged_runs import Run
from vmem.study.plots import large_numbers, save_cropped

COLUMNS = ["run", "percentile", "bucket_start", "bucket_stop", "sequences", "mean_score"]
BUCKET_STEPS = 230  # the notebook's bucket_size=235520 sequences, 230 steps of 1024


def tables(study: Study) -> dict[str, pd.DataFrame]:
    table = bucket_table([run for run in study.runs if run.matches is not None])
    return {"bucket_means": table} if len(table) else {}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "bucket_means" not in study.tables:
        return {}
    bucket_figure(study.tables["bucket_means"], study.standing, folder / "bucket_means.png")
    return {"bucket_means": "bucket_means.png"}


def section(doc: Document, study: Study) -> None:
    if "bucket_means" not in study.tables:
        return
    table = study.tables["bucket_means"]
    doc.section("The seed's figures: bucketed mean score against sequence index")
    doc.paragraph(f"As the seed's notebook computed it: the sequences of each generation run cut "
                  f"into consecutive buckets of {BUCKET_STEPS} training steps (235,520 Pythia "
                  f"sequences; bucket_start and bucket_stop are sequence indices, within the "
                  f"run), and the mean score of each bucket over all its sequences (percentile "
                  f"0) or over those scoring at least the run's 90th or 99th percentile. Where "
                  f"the least-squares line compresses a trend to one number, these means show "
                  f"its shape: a rise toward the end of training, or a bump where some data "
                  f"was seen more often. The full table is `tables/bucket_means.csv`; the "
                  f"first rows:")
    doc.table(show(table.head(12)))
    doc.figure(study.figures["bucket_means"],
               "Mean score per bucket of 230 steps, per run and percentile filter.")


def bucket_means(run: Run, kept: np.ndarray, size: int) -> pd.DataFrame:
    """Per bucket [k·size, (k+1)·size) of indices: how many trained sequences `kept` marks and
    the sum of their matches, bincount chunk by chunk; buckets with none are left out, as the
    notebook skips them."""
    first = run.start // size
    buckets = (run.stop - 1) // size - first + 1
    sequences = np.zeros(buckets, dtype=np.int64)
    matches = np.zeros(buckets, dtype=np.int64)
    step = pass_size()
    for a in range(0, run.span, step):
        chunk = run.matches[a:a + step]
        selected = kept[chunk]
        if run.trained is not None:
            selected &= run.trained[a:a + step]
        bucket = np.flatnonzero(selected)
        weights = chunk[bucket]
        bucket += run.start + a  # in place: the bucket of each selected index
        bucket //= size
        bucket -= first
        sequences += np.bincount(bucket, minlength=buckets)
        matches += np.bincount(bucket, weights=weights, minlength=buckets).astype(np.int64)
    present = np.flatnonzero(sequences)
    starts = (present + first) * size
    return pd.DataFrame(dict(bucket_start=np.maximum(starts, run.start),
                             bucket_stop=np.minimum(starts + size, run.stop),
                             sequences=sequences[present],
                             mean_score=matches[present] / (run.cont_len * sequences[present])))


def bucket_table(runs: list[Run]) -> pd.DataFrame:
    parts = []
    for run in runs:
        counts = passes.score_counts(run)
        for q in PERCENTILES:
            means = bucket_means(run, top_scores(run, counts, q),
                                 BUCKET_STEPS * run.sequences_per_step)
            parts.append(means.assign(run=run.name, percentile=q))
    return pd.concat(parts, ignore_index=True)[COLUMNS] if parts else pd.DataFrame(
        columns=COLUMNS)


def bucket_figure(table: pd.DataFrame, standing: list[Run], path: Path) -> None:
    """One panel per percentile filter, a line per standing run, each bucket at its middle."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, len(PERCENTILES))
    names = {run.name for run in standing}
    for ax, q in zip(axes, PERCENTILES, strict=True):
        rows = table[(table["percentile"] == q) & table["run"].isin(names)]
        for name, run_rows in rows.groupby("run", sort=False):
            ax.plot((run_rows["bucket_start"] + run_rows["bucket_stop"]) / 2,
                    run_rows["mean_score"], marker=".", label=name)
        ax.set_title(filter_title(q))
        ax.set_xlabel("sequence index")
        large_numbers(ax.xaxis)
        if len(rows):
            ax.legend(fontsize=7)
    axes[0].set_ylabel("mean score in the bucket")
    save_cropped(fig, path)
