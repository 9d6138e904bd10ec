"""What several analyses compute on the runs' index-aligned arrays: passes in fixed-size chunks,
so a 146M-sequence run costs a few temporary megabytes per pass, never a Python loop over
sequences; and tables whose optional integer columns stay integers."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import reduce

import numpy as np
import pandas as pd

from vmem.study.merged_runs import Run

CHUNK = 1 << 22  # sequences per vectorised pass: bounds the temporaries to a few tens of MB


def chunks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, CHUNK):
        yield a, min(a + CHUNK, stop)


def filters_instances(runs: Sequence[Run]) -> bool:
    """Whether any of `runs` was read through an order with an instance filter."""
    return any(run.trained is not None for run in runs)


def trained_mask(runs: Sequence[Run], start: int, stop: int) -> np.ndarray | None:
    """Whether every one of `runs` trained on each index of [start, stop) (their orders'
    instance filters); None when none has a filter: all did. Read-only: it may be a view."""
    masks = [run.trained[start - run.start:stop - run.start] for run in runs
             if run.trained is not None]
    return reduce(np.logical_and, masks) if masks else None


def trained_count(runs: Sequence[Run], start: int, stop: int) -> int:
    """How many indices of [start, stop) every one of `runs` trained on."""
    return sum(b - a if (mask := trained_mask(runs, a, b)) is None
               else int(np.count_nonzero(mask)) for a, b in chunks(start, stop))


def joint_memorized(x: Run, y: Run, start: int, stop: int) -> tuple[int, int, int]:
    """Over the indices of [start, stop) both runs trained on: how many both memorized, how many
    `x` did, how many `y` did."""
    both = by_x = by_y = 0
    for a, b in chunks(start, stop):
        mx, my = x.memorized(a, b), y.memorized(a, b)
        if (trained := trained_mask((x, y), a, b)) is not None:
            mx, my = mx & trained, my & trained
        both += int(np.count_nonzero(mx & my))
        by_x += int(np.count_nonzero(mx))
        by_y += int(np.count_nonzero(my))
    return both, by_x, by_y


def memorized_share(memorized: int, evaluated: int) -> float:
    return memorized / evaluated


def memorized_count(run: Run) -> int:
    return sum(int(np.count_nonzero(run.memorized(a, b))) for a, b in chunks(run.start, run.stop))


def score_counts(run: Run) -> np.ndarray:
    """How many sequences reached each number of matches 0..cont_len (a generation run)."""
    counts = np.zeros(run.cont_len + 1, dtype=np.int64)
    for a, b in chunks(0, run.span):
        counts += np.bincount(run.matches[a:b], minlength=run.cont_len + 1)
    counts[0] -= run.untrained  # an untrained index holds 0 matches and is no sequence scored
    return counts


def score_percentile(counts: np.ndarray, cont_len: int, q: float) -> float:
    """np.percentile(scores, q), numpy's default (linear) method, of the scores
    matches / cont_len whose histogram over 0..cont_len is `counts`: the same value, bit for
    bit, interpolated the way numpy's _lerp does."""
    n = int(counts.sum())
    position = (n - 1) * (q / 100)
    below = min(math.floor(position), n - 1)
    a, b = np.searchsorted(np.cumsum(counts), [below, min(below + 1, n - 1)],
                           side="right") / cont_len
    t = position - below
    return float(b - (b - a) * (1 - t)) if t >= 0.5 else float(a + (b - a) * t)


def frame(rows: list[dict], nullable_ints: list[str],
          columns: list[str] | None = None) -> pd.DataFrame:
    """A table whose optional integer columns stay integers (Int64) when some values are missing."""
    table = pd.DataFrame(rows, columns=columns or (list(rows[0]) if rows else None))
    for column in nullable_ints:
        table[column] = table[column].astype("Int64")
    return table
