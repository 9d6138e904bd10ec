"""`vmem export-memorized`: one merged run's memorized sequences with their first tokens, as
parquet rows `index,tokens`, and the caller's further columns (with --duplicates: `count`,
`category`, see `taxonomy.export_columns`)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vmem.data import Dataset
from vmem.errors import VmemError
from vmem.io.location import Output
from vmem.study.merged_runs import Run

MAX_GAP = 4  # memorized sequences this close are read in one span (cheaper than a request)
MAX_SPAN = 1024  # ... but a span never crosses a multiple of this many sequences
ROWS_PER_GROUP = 65_536


def check_output(out: str, *, s3_endpoint: str | None = None) -> Output:
    """Where the table goes (local or s3://), checked before the run and the dataset are
    loaded."""
    target = Output(out, s3_endpoint=s3_endpoint)
    if not target.name.endswith(".parquet"):
        raise VmemError(f"{out}: -o must name a .parquet file")
    target.check()
    return target


def export_memorized(run: Run, dataset: Dataset, tokens: int, out: Output,
                     columns: dict[str, pa.Array] | None = None) -> int:
    """Write the run's memorized sequences with their first `tokens` tokens, and `columns` (one
    value per memorized sequence, in index order), to `out` (from check_output); returns how
    many."""
    if not 1 <= tokens <= dataset.seq_len:
        raise VmemError(f"--tokens {tokens}: expected 1..{dataset.seq_len} (the sequence "
                        f"length of {dataset.location})")
    memorized = np.flatnonzero(run.memorized()).astype(np.int64)
    memorized += run.start
    if memorized.size and memorized[-1] >= dataset.num_sequences:
        raise VmemError(f"{dataset.location}: has {dataset.num_sequences} sequences, but "
                        f"{run.table} has memorized index {memorized[-1]}; is it the run's "
                        f"dataset?")
    write_memorized(dataset, memorized, tokens, out, columns or {})
    return int(memorized.size)


def write_memorized(dataset: Dataset, memorized: np.ndarray, tokens: int, out: Output,
                    columns: dict[str, pa.Array]) -> None:
    """Rows (index, first `tokens` tokens, `columns`), read in spans of nearby memorized
    sequences."""
    schema = pa.schema([("index", pa.int64()), ("tokens", pa.list_(pa.int64())),
                        *((name, values.type) for name, values in columns.items())])
    with out.file() as tmp, pq.ParquetWriter(tmp, schema) as writer:
        done = 0
        for group in np.array_split(memorized,
                                    max(1, math.ceil(memorized.size / ROWS_PER_GROUP))):
            rows = first_tokens(dataset, group, tokens)
            offsets = np.arange(0, rows.size + 1, tokens, dtype=np.int32)
            writer.write_table(pa.table(
                [pa.array(group), pa.ListArray.from_arrays(offsets, rows.ravel()),
                 *(values.slice(done, group.size) for values in columns.values())],
                schema=schema))
            done += group.size


def first_tokens(dataset: Dataset, indices: np.ndarray, tokens: int) -> np.ndarray:
    """The first `tokens` tokens of the sequences at sorted `indices`, int64 (n, tokens)."""
    spans = [_span_tokens(dataset, span, tokens) for span in _spans(indices)]
    return np.concatenate([np.empty((0, tokens), dtype=np.int64), *spans])


def _spans(indices: np.ndarray) -> list[np.ndarray]:
    """Split sorted indices where the gap is large or a multiple of MAX_SPAN is crossed."""
    if indices.size == 0:
        return []
    breaks = np.flatnonzero((np.diff(indices) > MAX_GAP)
                            | (np.diff(indices // MAX_SPAN) != 0)) + 1
    return np.split(indices, breaks)


def _span_tokens(dataset: Dataset, span: np.ndarray, tokens: int) -> np.ndarray:
    rows = dataset.read(int(span[0]), int(span[-1]) + 1)
    return rows[span - span[0], :tokens].astype(np.int64)
