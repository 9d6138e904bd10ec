"""The report's figures, drawn from its tables with matplotlib (no pyplot: no global state).

PNGs are written without the software/version metadata, so the same tables give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from vmem.study.analysis import ComputeFit
from vmem.study.comparisons import FAMILIES

DPI = 110
FAMILY_COLORS = {"A": "tab:blue", "B": "tab:orange"}


def memorization_rates(rates: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 1.2 + 0.32 * len(rates)))
    ax = fig.subplots()
    labels = [_run_label(r) for r in rates.itertuples()]
    ax.barh(range(len(rates)), rates["share"] * 100, color="tab:blue")
    ax.set_yticks(range(len(rates)), labels, fontsize=8)
    ax.invert_yaxis()
    for y, (share, n) in enumerate(zip(rates["share"], rates["memorized"], strict=True)):
        ax.annotate(f" {share:.3%} ({n:,})", (share * 100, y), va="center", fontsize=7)
    ax.set_xlabel("memorized sequences (score = 1), % of evaluated")
    ax.set_title("Memorized share per run")
    ax.margins(x=0.25)
    _save(fig, path)


def score_distribution(distribution: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for color, (run, rows) in zip(_colors(distribution["run"].nunique()),
                                  distribution.groupby("run", sort=False), strict=True):
        shown = rows[rows["sequences"] > 0]  # log scale: empty score values have no point
        ax.plot(shown["score"], shown["share"], marker="o", markersize=3, lw=1, color=color,
                label=run)
    ax.set_yscale("log")
    ax.set_xlabel("memorization score (share of the continuation's tokens matched)")
    ax.set_ylabel("share of evaluated sequences (log scale)")
    ax.set_title("Distribution of memorization scores")
    _legend(ax)
    _save(fig, path)


def predictability(table: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, family, x_column, x_label in (
        (axes[0], "A", "cheap_params", "parameters of the cheap (smaller) model"),
        (axes[1], "B", "cheap_step", "training step of the cheap (earlier) checkpoint"),
    ):
        rows = table[table["family"] == family]
        series = list(rows.groupby("target", sort=True))
        for color, (target, group) in zip(_colors(len(series)), series, strict=True):
            group = group.sort_values(x_column)
            x = group[x_column].astype(float)
            ax.plot(x, group["recall"], marker="o", color=color, label=f"recall → {target}")
            ax.plot(x, group["precision"], marker="s", ls="--", color=color,
                    label=f"precision → {target}")
        if family == "A" and len(rows):
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_title(f"Family {family}: {FAMILIES[family]}", fontsize=9)
        if series:
            _legend(ax)
        else:
            ax.text(0.5, 0.5, "no comparison of this family", ha="center",
                    transform=ax.transAxes)
    axes[0].set_ylabel("precision / recall of 'memorized by cheap run'")
    axes[0].set_ylim(-0.02, 1.02)
    fig.suptitle("Predicting the target run's memorized sequences from a cheaper run")
    _save(fig, path)


def recall_vs_compute(table: pd.DataFrame, fits: dict[tuple[str, str], ComputeFit],
                      path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    markers = dict(zip(sorted(table["target"].unique()), "osD^v<>p*hX", strict=False))
    for (family, target), rows in table.groupby(["family", "target"], sort=True):
        rows = rows[(rows["cheap_compute"] > 0) & (rows["recall"] > 0)]
        ax.scatter(rows["cheap_compute"], rows["recall"], color=FAMILY_COLORS[family],
                   marker=markers.get(target, "o"), label=f"family {family} → {target}")
        if (family, target) in fits:
            fit = fits[(family, target)]
            x = np.geomspace(fit.compute_min, fit.compute_max, 50)
            ax.plot(x, fit.law(x), color=FAMILY_COLORS[family], lw=1,
                    label=f"fit: recall ∝ compute^{fit.law.exponent:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute of the cheap run (FLOPs ≈ 6 · parameters · tokens seen)")
    ax.set_ylabel("recall (log scale)")
    ax.set_title("Recall against the cheap run's compute (A: smaller models, B: checkpoints)")
    _legend(ax)
    _save(fig, path)


def score_by_step(table: pd.DataFrame, trend: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    slopes = dict(zip(trend["run"], trend["slope_per_1000_steps"], strict=True))
    for color, (run, rows) in zip(_colors(table["run"].nunique()),
                                  table.groupby("run", sort=False), strict=True):
        middle = (rows["step_start"] + rows["step_stop"]) / 2
        ax.plot(middle, rows["mean_score"], marker=".", lw=1, color=color,
                label=f"{run} (slope {slopes[run]:+.2e} per 1000 steps)")
    ax.set_xlabel("training step at which the sequence was seen (index // sequences per step)")
    ax.set_ylabel("mean memorization score")
    ax.set_title("Memorization score against when the sequence was seen")
    _legend(ax)
    _save(fig, path)


def logprob_histograms(histogram: pd.DataFrame, path: Path) -> None:
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
    _save(fig, path)


def prompt_length(table: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for color, (run, rows) in zip(_colors(table["run"].nunique()),
                                  table.groupby("run", sort=False), strict=True):
        ax.plot(rows["prompt_len"], rows["share"] * 100, marker="o", color=color, label=run)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["prompt_len"].unique()),
                  [str(p) for p in sorted(table["prompt_len"].unique())])
    ax.minorticks_off()
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("memorized, % of evaluated")
    ax.set_title("Extraction grows with prompt length")
    _legend(ax)
    _save(fig, path)


def _run_label(row) -> str:
    step = "" if pd.isna(row.step) else f", step {row.step}"
    return f"{row.run} ({row.model}{step})"


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7 if len(handles) <= 12 else 5, loc="best")


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
