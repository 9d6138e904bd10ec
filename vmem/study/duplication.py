"""Memorization against duplication: the memorized share by how often a sequence occurs in the
training data, from a table `index,count` (the layout of EleutherAI/semantic-memorization's
duplicate-count tables; `vmem demo` writes its own counts that way). Buckets: 0, 1, 2-3, 4-7, ...
by powers of two. Sequences the table does not list are left out (and counted)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vmem.errors import VmemError
from vmem.io.location import split
from vmem.study.merged_runs import Run

COLUMNS = ["run", "model", "step", "occurrences", "occurrences_min", "sequences", "memorized",
           "share"]


@dataclass(frozen=True)
class Duplicates:
    source: str
    index: np.ndarray  # int64, sorted, unique
    count: np.ndarray  # int64 >= 0, per index


def read_duplicates(path: str, *, s3_endpoint: str | None = None) -> Duplicates:
    """The table at `path` (.parquet or .csv, local or s3://), checked: integer columns `index`
    and `count`, each index once, counts not negative."""
    folder, name = split(path, s3_endpoint=s3_endpoint)
    if not folder.exists(name):
        raise VmemError(f"--duplicates {path}: no such file")
    with folder.local_file(name) as local:
        try:
            if name.endswith(".parquet"):
                table = pq.read_table(local)
            else:
                table = pacsv.read_csv(local)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
            raise VmemError(f"--duplicates {path}: not a readable .parquet or .csv table "
                            f"({str(err).splitlines()[0]})") from None
    found = table.column_names
    if "index" not in found or "count" not in found:
        raise VmemError(f"--duplicates {path}: expected columns index,count, found "
                        f"{','.join(found)}")
    columns = {}
    for column in ("index", "count"):
        values = table[column]
        if not pa.types.is_integer(values.type) or values.null_count:
            raise VmemError(f"--duplicates {path}: column {column} must hold integers without "
                            f"gaps, found {values.type}")
        columns[column] = values.to_numpy().astype(np.int64)
    order = np.argsort(columns["index"], kind="stable")
    index, count = columns["index"][order], columns["count"][order]
    if len(index) and (index[0] < 0 or count.min() < 0):
        raise VmemError(f"--duplicates {path}: indices and counts must not be negative")
    repeated = index[1:][np.diff(index) == 0]
    if repeated.size:
        raise VmemError(f"--duplicates {path}: index {repeated[0]} is listed more than once")
    return Duplicates(path, index, count)


def duplication_table(runs: list[Run], duplicates: Duplicates) -> tuple[pd.DataFrame, dict]:
    """Per run and bucket: sequences, memorized and the share; and per run, how many of its
    sequences the table does not list."""
    rows, unlisted = [], {}
    for run in runs:
        lo, hi = np.searchsorted(duplicates.index, [run.start, run.stop])
        index, count = duplicates.index[lo:hi], duplicates.count[lo:hi]
        unlisted[run.name] = run.evaluated - len(index)
        memorized = run.memorized()[index - run.start]
        bucket = np.where(count > 0, np.floor(np.log2(np.maximum(count, 1))) + 1, 0)
        for b in np.unique(bucket).astype(np.int64):
            inside = bucket == b
            low, high = (0, 0) if b == 0 else (2 ** (b - 1), 2 ** b - 1)
            rows.append(dict(run=run.name, model=run.label, step=run.step,
                             occurrences=str(low) if low == high else f"{low}-{high}",
                             occurrences_min=int(low), sequences=int(inside.sum()),
                             memorized=int(memorized[inside].sum()),
                             share=float(memorized[inside].mean())))
    return pd.DataFrame(rows, columns=COLUMNS).astype({"step": "Int64"}), unlisted


def duplication_figure(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    buckets = table.drop_duplicates("occurrences_min").sort_values("occurrences_min")
    position = {low: i for i, low in enumerate(buckets["occurrences_min"])}
    for run, rows in table.groupby("run", sort=False):
        ax.plot(rows["occurrences_min"].map(position), rows["share"] * 100, marker="o",
                label=run)
    ax.set_xticks(range(len(buckets)), buckets["occurrences"])
    ax.set_xlabel("occurrences of the sequence in the training data (duplicates table)")
    ax.set_ylabel("memorized, % of the bucket's sequences")
    ax.set_title("Memorized share by duplication")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
