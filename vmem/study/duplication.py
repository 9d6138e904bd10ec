"""Memorization against duplication: the memorized share by how often a sequence's continuation
occurs in the training data, and by how rare its rarest token is. Counts come from a table of one
of three layouts (`read_duplicates`): `vmem duplicates`' `index,count,freq_min,freq_median,
freq_max`, a bare `index,count`, or EleutherAI's published `sequence_id,counts` (Hugging Face
`usvsnsp/generation-num-duplicates`, counted by semantic-memorization: vmem's `--definition
rows`; vmem's default, `stream`, also counts windows across row ends). Buckets by powers of two
(counts: 0, 1, 2-3, 4-7, ...) and of ten (token frequencies: 0, 1-9, 10-99, ...). Sequences the
table does not list are left out (and counted)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vmem.duplicates import DEFINITIONS, METADATA_KEY, with_definition
from vmem.errors import VmemError
from vmem.io.location import split
from vmem.study.merged_runs import Run

COLUMNS = ["run", "model", "step", "occurrences", "occurrences_min", "sequences", "memorized",
           "share"]
RARITY_COLUMNS = ["run", "model", "step", "rarest_token_frequency", "frequency_min", "sequences",
                  "memorized", "share"]
# Column names of each layout: (index, count), and the token-frequency columns where they exist.
LAYOUTS = {"index,count": ("index", "count"), "sequence_id,counts": ("sequence_id", "counts")}
FREQUENCIES = ("freq_min", "freq_median", "freq_max")


@dataclass(frozen=True)
class Duplicates:
    source: str
    layout: str  # a key of LAYOUTS
    index: np.ndarray  # int64, sorted, unique
    count: np.ndarray  # int64 >= 0, per index
    # Token frequencies of the continuation's tokens over the corpus, per index (vmem duplicates'
    # table); None where the table has none.
    frequencies: dict[str, np.ndarray] | None = None
    # How a count was counted (a key of vmem.duplicates.DEFINITIONS); None where the table does
    # not say (a .csv, or a parquet table vmem did not write).
    definition: str | None = None

    def lookup(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For sorted `indices`: whether the table lists each, and its count (0 where not)."""
        if not len(self.index):
            return np.zeros(len(indices), dtype=bool), np.zeros(len(indices), dtype=np.int64)
        at = np.minimum(np.searchsorted(self.index, indices), len(self.index) - 1)
        listed = self.index[at] == indices
        return listed, np.where(listed, self.count[at], 0)


def read_duplicates(path: str, *, s3_endpoint: str | None = None) -> Duplicates:
    """The table at `path` (.parquet or .csv, local or s3://), checked: integer columns `index`
    and `count` (or `sequence_id` and `counts`), each index once, nothing negative; the
    token-frequency columns `freq_min,freq_median,freq_max` read where all three exist; the
    counting definition where the table names it."""
    folder, name = split(path, s3_endpoint=s3_endpoint)
    if not folder.exists(name):
        raise VmemError(f"--duplicates {path}: no such file")
    with folder.local_file(name) as local:
        try:
            if name.endswith(".parquet"):
                schema = pq.read_schema(local)
                found = schema.names
                layout = _layout(path, found)
                wanted = [*LAYOUTS[layout], *(c for c in FREQUENCIES if c in found)]
                table = pq.read_table(local, columns=wanted)
                definition = _definition(path, schema.metadata)
            else:
                table = pacsv.read_csv(local)
                layout = _layout(path, table.column_names)
                definition = None
        except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
            raise VmemError(f"--duplicates {path}: not a readable .parquet or .csv table "
                            f"({str(err).splitlines()[0]})") from None
    index, count = (_integers(path, table, column) for column in LAYOUTS[layout])
    # EleutherAI's table is in index order: sorting 146M rows again would cost most of a minute.
    order = None if np.all(index[1:] > index[:-1]) else np.argsort(index, kind="stable")
    if order is not None:
        index, count = index[order], count[order]
    if len(index) and (index[0] < 0 or count.min() < 0):
        raise VmemError(f"--duplicates {path}: indices and counts must not be negative")
    repeated = index[1:][np.diff(index) == 0]
    if repeated.size:
        raise VmemError(f"--duplicates {path}: index {repeated[0]} is listed more than once")
    frequencies = None
    if all(column in table.column_names for column in FREQUENCIES):
        frequencies = {}
        for column in FREQUENCIES:
            values = _numbers(path, table, column)
            frequencies[column] = values if order is None else values[order]
    if layout == "sequence_id,counts":  # EleutherAI's counts are semantic-memorization's
        definition = "rows"
    return Duplicates(path, layout, index, count, frequencies, definition)


def _definition(path: str, metadata: dict | None) -> str | None:
    """The definition a parquet table names in `vmem duplicates`' metadata."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    try:
        definition = with_definition(json.loads(metadata[METADATA_KEY]))["definition"]
    except (ValueError, TypeError):
        definition = None
    if definition not in DEFINITIONS:
        raise VmemError(f"--duplicates {path}: its metadata names no counting definition vmem "
                        f"knows (expected {' or '.join(DEFINITIONS)})")
    return definition


def _layout(path: str, found: list[str]) -> str:
    for layout, columns in LAYOUTS.items():
        if all(column in found for column in columns):
            return layout
    raise VmemError(f"--duplicates {path}: expected columns index,count (vmem duplicates) or "
                    f"sequence_id,counts (EleutherAI's published counts), found {','.join(found)}")


def _integers(path: str, table: pa.Table, column: str) -> np.ndarray:
    values = table[column]
    if not pa.types.is_integer(values.type) or values.null_count:
        raise VmemError(f"--duplicates {path}: column {column} must hold integers without "
                        f"gaps, found {values.type}")
    return values.to_numpy().astype(np.int64)


def _numbers(path: str, table: pa.Table, column: str) -> np.ndarray:
    values = table[column]
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)) \
            or values.null_count:
        raise VmemError(f"--duplicates {path}: column {column} must hold numbers without gaps, "
                        f"found {values.type}")
    return values.to_numpy().astype(np.float64)


def duplication_table(runs: list[Run], duplicates: Duplicates) -> tuple[pd.DataFrame, dict]:
    """Per run and bucket of counts: sequences, memorized and the share; and per run, how many
    of its sequences the table does not list."""
    rows, unlisted = [], {}
    for run in runs:
        index, at = _listed(run, duplicates)
        unlisted[run.name] = run.evaluated - len(index)
        flags = run.memorized()[index - run.start]
        for low, high, memorized in _buckets(duplicates.count[at], flags, base=2):
            rows.append(dict(run=run.name, model=run.label, step=run.step,
                             occurrences=_label(low, high), occurrences_min=low,
                             sequences=memorized.size, memorized=int(memorized.sum()),
                             share=float(memorized.mean())))
    return pd.DataFrame(rows, columns=COLUMNS).astype({"step": "Int64"}), unlisted


def rarity_table(runs: list[Run], duplicates: Duplicates) -> pd.DataFrame:
    """Per run and bucket of its continuation's rarest token frequency (`freq_min`, by powers of
    ten): sequences, memorized and the share. Needs the table's frequency columns."""
    rows = []
    for run in runs:
        index, at = _listed(run, duplicates)
        rarest = duplicates.frequencies["freq_min"][at].astype(np.int64)
        for low, high, memorized in _buckets(rarest, run.memorized()[index - run.start],
                                             base=10):
            rows.append(dict(run=run.name, model=run.label, step=run.step,
                             rarest_token_frequency=_label(low, high), frequency_min=low,
                             sequences=memorized.size, memorized=int(memorized.sum()),
                             share=float(memorized.mean())))
    return pd.DataFrame(rows, columns=RARITY_COLUMNS).astype({"step": "Int64"})


def _listed(run: Run, duplicates: Duplicates) -> tuple[np.ndarray, slice | np.ndarray]:
    """The run's trained indices the table lists, and where they lie in the table."""
    lo, hi = np.searchsorted(duplicates.index, [run.start, run.stop])
    if run.trained is None:
        return duplicates.index[lo:hi], slice(lo, hi)
    trained = run.trained[duplicates.index[lo:hi] - run.start]
    return duplicates.index[lo:hi][trained], lo + np.flatnonzero(trained)


def _buckets(values: np.ndarray, memorized: np.ndarray, base: int):
    """(low, high, memorized flags) per non-empty bucket: 0, then [base^k, base^(k+1) - 1]."""
    powers = np.array([base ** k for k in range(int(math.log(2 ** 62, base)) + 1)],
                      dtype=np.int64)
    bucket = np.searchsorted(powers, values, side="right")  # 0 for 0, k + 1 in [base^k, ...)
    for b in np.unique(bucket):
        low, high = (0, 0) if b == 0 else (int(powers[b - 1]), int(powers[b - 1]) * base - 1)
        yield low, high, memorized[bucket == b]


def _label(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"
