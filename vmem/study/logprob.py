"""The teacher-forced log-probability of the true continuation (runs evaluated with --logprobs),
memorized against other sequences."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import frame
from vmem.study.plots import save


def tables(study: Study) -> dict[str, pd.DataFrame]:
    if not any(run.cont_logprob is not None for run in study.runs):
        return {}
    summary, histogram = logprob_tables(study.runs)
    return {"logprob_summary": summary, "logprob_histogram": histogram}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "logprob_histogram" not in study.tables:
        return {}
    logprob_figure(study.tables["logprob_histogram"], folder / "logprob.png")
    return {"logprob": "logprob.png"}


def section(doc: Document, study: Study) -> None:
    if "logprob" not in study.figures:
        return
    doc.section("Continuation log-probability")
    doc.paragraph("Teacher-forced log-probability of the true continuation (runs evaluated "
                  "with --logprobs), memorized vs other sequences.")
    doc.table(show(study.tables["logprob_summary"]))
    doc.figure(study.figures["logprob"], "Distribution of the continuation's log-probability.")


def logprob_tables(runs: list[Run], bins: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Teacher-forced continuation log-prob of memorized vs other sequences: a summary per group
    and a histogram on bins shared by both groups of a run."""
    summary, histogram = [], []
    for run in runs:
        if run.cont_logprob is None:
            continue
        memorized = run.memorized()
        finite = run.cont_logprob[np.isfinite(run.cont_logprob)]
        edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else np.array([0.0, 1.0])
        for group, mask in (("memorized", memorized), ("not memorized", ~memorized)):
            values = run.cont_logprob[mask]
            values = values[np.isfinite(values)]  # an untrained index's NaN goes too
            summary.append(dict(run=run.name, group=group, sequences=int(values.size),
                                mean=float(values.mean()) if values.size else math.nan,
                                median=float(np.median(values)) if values.size else math.nan))
            counts, _ = np.histogram(values, bins=edges)
            histogram += [dict(run=run.name, group=group, bin_start=float(lo), bin_stop=float(hi),
                               sequences=int(n))
                          for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)]
    return (frame(summary, [], ["run", "group", "sequences", "mean", "median"]),
            frame(histogram, [], ["run", "group", "bin_start", "bin_stop", "sequences"]))


def logprob_figure(histogram: pd.DataFrame, path: Path) -> None:
    runs = list(histogram.groupby("run", sort=False))
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    fig = Figure(figsize=(max(6.5, 4.2 * columns), 3.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, (run, bins) in zip(axes, runs, strict=False):
        for group, color in (("not memorized", "tab:gray"), ("memorized", "tab:red")):
            g = bins[bins["group"] == group]
            total = g["sequences"].sum()
            share = g["sequences"] / total if total else g["sequences"] * 0.0
            ax.stairs(share, np.append(g["bin_start"].to_numpy(), g["bin_stop"].iloc[-1]),
                      color=color, label=f"{group} ({total:,})")
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("log-prob of the true continuation (nats)")
        ax.set_ylabel("share of group")
        ax.legend(fontsize=7)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    fig.suptitle("Continuation log-probability (teacher-forced): memorized vs not")
    save(fig, path)
