"""Why it was memorized: each run's memorized sequences by category (recitation, reconstruction,
recollection; see taxonomy.py, which classifies them), as a table and the paper's figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study.context import Study
from vmem.study.display import count, percent
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.plots import DPI
from vmem.study.taxonomy import (
    NOT_RECITATION,
    RECITATION,
    RECOLLECTION,
    RECONSTRUCTION,
    UNLISTED,
    classify,
    taxonomy_table,
)

COLORS = {RECITATION: "tab:red", RECONSTRUCTION: "tab:green", RECOLLECTION: "tab:blue",
          NOT_RECITATION: "tab:purple", UNLISTED: "tab:gray"}


def tables(study: Study) -> dict[str, pd.DataFrame]:
    """The taxonomy table; the classified runs go in `study.notes` for the examples."""
    if study.duplicates is None:
        return {}
    classified = classify(study.runs, study.duplicates, study.sequences,
                          study.recitation_threshold)
    study.notes["classified"] = classified
    return {"taxonomy": taxonomy_table(classified)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if not len(study.tables.get("taxonomy", ())):
        return {}
    taxonomy_figure(study.tables["taxonomy"], study.runs, folder / "taxonomy.png")
    return {"taxonomy": "taxonomy.png"}


def section(doc: Document, study: Study) -> None:
    if "taxonomy" not in study.tables:
        return
    doc.section("Why it was memorized: recitation, reconstruction, recollection")
    doc.paragraph(
        f"Each memorized sequence, in this order (Prashanth et al. 2024): recitation if its "
        f"continuation occurs at least {study.recitation_threshold} times in the training data "
        f"(`--recitation-threshold`), else reconstruction if its text is templated "
        f"(incrementing or repeating, the rules of EleutherAI/semantic-memorization), else "
        f"recollection. A count includes every epoch: data seen E times gives each sequence a "
        f"count of at least E, so with several epochs recitation takes in sequences stored only "
        f"once (Pythia saw its data about once, 1.5 times for the deduped models). Memorized "
        f"sequences the table does not list are unlisted. All values: `tables/taxonomy.csv`.")
    if study.sequences is None:
        doc.paragraph("No reconstruction category: templating is decided on the text, which "
                      "needs `--tokenizer`; shown are recitation and the rest (not recitation).")
    table = study.tables["taxonomy"]
    if not len(table):
        doc.paragraph("No run has memorized sequences the table lists.")
        return
    wide = table.pivot_table(index="run", columns="category", values="sequences", sort=False)
    shares = table.pivot_table(index="run", columns="category", values="share", sort=False)
    shown = pd.DataFrame({"run": wide.index})
    for category in wide.columns:
        shown[category] = [f"{count(n)} ({percent(v)})" for n, v in
                           zip(wide[category], shares[category], strict=True)]
    doc.table(shown)
    doc.figure(study.figures["taxonomy"], "Memorized sequences per category against model size "
                                          "and against checkpoint.")


def taxonomy_figure(table: pd.DataFrame, runs: list[Run], path: Path) -> None:
    """As the paper's: memorized sequences per category, stacked, against model size (each
    model's latest checkpoint) and against checkpoint (the model with the most checkpoints)."""
    from matplotlib.figure import Figure

    by_name = {run.name: run for run in runs}
    shown = [by_name[name] for name in dict.fromkeys(table["run"])]
    latest = {}
    for run in sorted(shown, key=lambda r: r.step or 0):
        latest[run.label] = run  # the last one per model wins
    sized = sorted(latest.values(), key=lambda r: (r.params or 0, r.label))
    per_model = {}
    for run in shown:
        per_model.setdefault(run.label, []).append(run)
    widest = max(per_model.values(), key=len)
    timed = sorted(widest, key=lambda r: r.step or 0)
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    for ax, group, ticks, label in (
        (axes[0], sized, [r.label for r in sized], "model (its latest checkpoint evaluated)"),
        (axes[1], timed, [str(r.step) for r in timed], f"checkpoint step ({timed[0].label})"),
    ):
        bottom = np.zeros(len(group))
        for category in dict.fromkeys(table["category"]):
            counts = np.array([_sequences(table, r.name, category) for r in group], dtype=float)
            ax.bar(range(len(group)), counts, bottom=bottom, color=COLORS[category],
                   label=category)
            bottom += counts
        ax.set_xticks(range(len(group)), ticks, rotation=30, fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("memorized sequences")
        ax.legend(fontsize=8)
    fig.suptitle("Memorized sequences by category: recitation, reconstruction, recollection")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})


def _sequences(table: pd.DataFrame, run: str, category: str) -> int:
    rows = table[(table["run"] == run) & (table["category"] == category)]
    return int(rows["sequences"].sum())
