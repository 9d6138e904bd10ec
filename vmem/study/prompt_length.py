"""Extraction against prompt length: verification runs over several prompt lengths (at one
offset), the share memorized at each length on the same sequences (Carlini et al. 2022's
curve)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import chunks, frame, memorized_share
from vmem.study.plots import colors, legend, save


def tables(study: Study) -> dict[str, pd.DataFrame]:
    if not any(run.prefix_by_prompt_len for run in study.runs):
        return {}
    return {"prompt_length": prompt_length_table(study.runs)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "prompt_length" not in study.tables:
        return {}
    prompt_length_figure(study.tables["prompt_length"], folder / "prompt_length.png")
    return {"prompt_length": "prompt_length.png"}


def section(doc: Document, study: Study) -> None:
    if "prompt_length" not in study.figures:
        return
    doc.section("Extraction against prompt length")
    doc.paragraph("Verification runs over several prompt lengths (at one offset): the share "
                  "of sequences whose continuation greedy decoding reproduces exactly, per "
                  "prompt length, all from one teacher-forced pass per sequence.")
    doc.table(show(study.tables["prompt_length"][["run", "prompt_len", "evaluated", "memorized",
                                                   "share"]]))
    doc.figure(study.figures["prompt_length"], "Memorized share against prompt length.")


def prompt_length_table(runs: list[Run]) -> pd.DataFrame:
    """Verification runs over several prompt lengths: the share memorized (the whole continuation
    extracted) at each length, on the same sequences (Carlini et al. 2022's curve)."""
    rows = []
    for run in runs:
        for length, prefix in sorted(run.prefix_by_prompt_len.items()):
            memorized = sum(int(np.count_nonzero(prefix[a:b] == run.cont_len))
                            for a, b in chunks(0, run.span))
            rows.append(dict(run=run.name, model=run.label, step=run.step, prompt_len=length,
                             evaluated=run.evaluated, memorized=memorized,
                             share=memorized_share(memorized, run.evaluated)))
    return frame(rows, ["step"], ["run", "model", "step", "prompt_len", "evaluated",
                                  "memorized", "share"])


def prompt_length_figure(table: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for color, (run, rows) in zip(colors(table["run"].nunique()),
                                  table.groupby("run", sort=False), strict=True):
        ax.plot(rows["prompt_len"], rows["share"] * 100, marker="o", color=color, label=run)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["prompt_len"].unique()),
                  [str(p) for p in sorted(table["prompt_len"].unique())])
    ax.minorticks_off()
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("memorized, % of evaluated")
    ax.set_title("Extraction grows with prompt length")
    legend(ax)
    save(fig, path)
