"""Examples of memorized sequences: a few of each run and taxonomy category, decoded (needs the
taxonomy's classified runs and a tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vmem.study.context import Study
from vmem.study.document import Document
from vmem.study.taxonomy import examples_table


def tables(study: Study) -> dict[str, pd.DataFrame]:
    if study.sequences is None or "classified" not in study.notes:
        return {}
    return {"examples": examples_table(study.notes["classified"], study.sequences)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    return {}


def section(doc: Document, study: Study) -> None:
    if not len(study.tables.get("examples", ())):
        return
    doc.section("Examples of memorized sequences")
    doc.paragraph("A few memorized sequences of each run and category, decoded: the prompt, "
                  "then `|`, then the continuation the model reproduced. ↵ marks a newline, → a "
                  "tab. All: `tables/examples.csv`.")
    for run, rows in study.tables["examples"].groupby("run", sort=False):
        doc.paragraph(f"`{run}`")
        doc.examples([(f"{row['category']} · index {row['index']:,}"
                       + ("" if pd.isna(row["count"]) else f" · count {row['count']:,}"),
                       row["prompt"], row["continuation"]) for row in rows.to_dict("records")])
