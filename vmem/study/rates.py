"""The memorized share per run: sequences with score 1 of those evaluated."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import frame, memorized_count, memorized_share
from vmem.study.plots import save


def tables(study: Study) -> dict[str, pd.DataFrame]:
    return {"memorization_rates": rates_table(study.runs)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    rates_figure(study.tables["memorization_rates"], folder / "memorization_rates.png")
    return {"memorization_rates": "memorization_rates.png"}


def section(doc: Document, study: Study) -> None:
    rates = study.tables["memorization_rates"]
    doc.section("Memorized share per run")
    doc.table(show(rates[["run", "model", "step", "params", "evaluated", "memorized", "share"]]))
    doc.figure(study.figures["memorization_rates"],
               "Share of evaluated sequences with score 1, per run.")


def rates_table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        memorized = memorized_count(run)
        rows.append(dict(run=run.name, model=run.label, step=run.step, params=run.params,
                         evaluated=run.evaluated, memorized=memorized,
                         share=memorized_share(memorized, run.evaluated), suite=run.suite,
                         start=run.start, stop=run.stop, cont_len=run.cont_len,
                         method=run.method, prompt_len=run.prompt_len))
    return frame(rows, ["step", "params"])


def rates_figure(rates: pd.DataFrame, path: Path) -> None:
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
    save(fig, path)


def _run_label(row) -> str:
    step = "" if pd.isna(row.step) else f", step {row.step}"
    return f"{row.run} ({row.model}{step})"
