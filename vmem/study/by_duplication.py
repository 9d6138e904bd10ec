"""Memorization against duplication: the memorized share by bucket of how often a sequence's
continuation occurs in the training data, and by bucket of its rarest token's corpus frequency
(`--duplicates`; the tables are computed in duplication.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vmem.duplicates import DEFINITIONS
from vmem.study.context import Study
from vmem.study.display import count, show
from vmem.study.document import Document
from vmem.study.duplication import duplication_table, rarity_table
from vmem.study.plots import save_cropped


def tables(study: Study) -> dict[str, pd.DataFrame]:
    if study.duplicates is None:
        return {}
    table, study.notes["unlisted"] = duplication_table(study.runs, study.duplicates)
    found = {"duplication": table}
    if study.duplicates.frequencies is not None:
        found["token_rarity"] = rarity_table(study.runs, study.duplicates)
    return found


def figures(study: Study, folder: Path) -> dict[str, str]:
    drawn = {}
    if len(study.tables.get("duplication", ())):
        duplication_figure(study.tables["duplication"], folder / "duplication.png")
        drawn["duplication"] = "duplication.png"
    if len(study.tables.get("token_rarity", ())):
        rarity_figure(study.tables["token_rarity"], folder / "token_rarity.png")
        drawn["token_rarity"] = "token_rarity.png"
    return drawn


def section(doc: Document, study: Study) -> None:
    if "duplication" not in study.tables:
        return
    duplicates = study.duplicates
    doc.section("Memorization against duplication")
    unlisted = {run: n for run, n in study.notes["unlisted"].items() if n}
    doc.paragraph(f"How often each sequence's continuation occurs in the training data, from "
                  f"`{duplicates.source}` ({duplicates.layout}), in buckets by powers of two. "
                  f"All values: `tables/duplication.csv`. "
                  + (f"Counted by definition `{duplicates.definition}`: "
                     f"{DEFINITIONS[duplicates.definition]}." if duplicates.definition else
                     "The table does not say how it counted (`vmem duplicates --definition`).")
                  + (" Sequences the table does not list are left out: "
                     + ", ".join(f"{run} {count(n)}" for run, n in unlisted.items()) + "."
                     if unlisted else ""))
    table = study.tables["duplication"]
    if len(table):
        doc.table(show(table[["run", "occurrences", "sequences", "memorized", "share"]]))
        doc.figure(study.figures["duplication"], "Memorized share by the sequence's occurrences.")
    else:
        doc.paragraph("The table lists none of the evaluated sequences.")
    if "token_rarity" in study.tables:
        doc.paragraph("Against token rarity: the corpus frequency of the continuation's rarest "
                      "token (`freq_min`), in buckets by powers of ten. All values: "
                      "`tables/token_rarity.csv`.")
        rarity = study.tables["token_rarity"]
        if len(rarity):
            doc.table(show(rarity[["run", "rarest_token_frequency", "sequences", "memorized",
                                    "share"]]))
            doc.figure(study.figures["token_rarity"],
                       "Memorized share by the rarest token's frequency.")
    else:
        doc.paragraph("No token rarity: the table has no token-frequency columns "
                      "(freq_min, freq_median, freq_max: `vmem duplicates` writes them).")


def duplication_figure(table: pd.DataFrame, path: Path) -> None:
    _share_by_bucket(table, path, "occurrences_min", "occurrences",
                     "occurrences of the sequence in the training data (duplicates table)",
                     "Memorized share by duplication")


def rarity_figure(table: pd.DataFrame, path: Path) -> None:
    _share_by_bucket(table, path, "frequency_min", "rarest_token_frequency",
                     "corpus frequency of the continuation's rarest token (freq_min)",
                     "Memorized share by token rarity", rotation=30)


def _share_by_bucket(table: pd.DataFrame, path: Path, low: str, label: str, xlabel: str,
                     title: str, rotation: int = 0) -> None:
    """One line per run: the memorized share of each bucket, buckets in order of `low`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    buckets = table.drop_duplicates(low).sort_values(low)
    position = {value: i for i, value in enumerate(buckets[low])}
    for run, rows in table.groupby("run", sort=False):
        ax.plot(rows[low].map(position), rows["share"] * 100, marker="o", label=run)
    ax.set_xticks(range(len(buckets)), buckets[label], rotation=rotation,
                  fontsize=8 if rotation else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("memorized, % of the bucket's sequences")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_cropped(fig, path)
