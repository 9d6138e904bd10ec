"""The demo's extra analysis: memorized share by how often a sequence's opening occurs in the
corpus, as a table, a figure and a report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study.document import Document
from vmem.study.merged_runs import Run


def duplication_table(runs: list[Run], counts: np.ndarray) -> pd.DataFrame:
    """Memorized share by how often a sequence's opening occurs in the corpus (bins 1, 2-3,
    4-7, ... by powers of two), per run."""
    rows = []
    for run in runs:
        seen = counts[run.start:run.stop]
        memorized = run.memorized()
        bins = np.floor(np.log2(seen)).astype(np.int64)
        for b in np.unique(bins):
            inside = bins == b
            low, high = 2 ** b, 2 ** (b + 1) - 1
            rows.append(dict(run=run.name, model=run.label, step=run.step,
                             occurrences=str(low) if low == high else f"{low}-{high}",
                             occurrences_min=int(low), sequences=int(inside.sum()),
                             memorized=int(memorized[inside].sum()),
                             share=float(memorized[inside].mean())))
    return pd.DataFrame(rows)


def duplication_figure(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for run, rows in table.groupby("run", sort=False):
        ax.plot(rows["occurrences_min"], rows["share"] * 100, marker="o", label=run)
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    bins = table.drop_duplicates("occurrences_min").sort_values("occurrences_min")
    ax.set_xticks(bins["occurrences_min"], bins["occurrences"])
    ax.set_xlabel("occurrences of the sequence's first 64 tokens in the corpus")
    ax.set_ylabel("memorized, % of the bin's sequences")
    ax.set_title("Duplicated text is memorized far more often")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})


def duplication_section(runs: list[Run], counts: np.ndarray, doc: Document,
                        folder: Path) -> None:
    """The report's extra section (a `report.Section`): memorization against duplication."""
    table = duplication_table(runs, counts)
    table.to_csv(folder / "tables" / "duplication.csv", index=False, lineterminator="\n")
    duplication_figure(table, folder / "figures" / "duplication.png")
    doc.heading("Memorization against duplication (demo)")
    doc.paragraph("For each sequence, how many times its first 64 tokens occur anywhere in the "
                  "corpus text (the stored epochs repeat every sequence; this counts copies "
                  "within the text itself). All values: `tables/duplication.csv`.")
    shown = table.assign(share=[f"{v:.1%}" for v in table["share"]])
    doc.table(shown[["run", "occurrences", "sequences", "memorized", "share"]].astype(str))
    doc.figure("figures/duplication.png", "Memorized share by the opening's occurrences.")
