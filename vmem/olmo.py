"""OLMo and OLMo-2's training order, as allenai/OLMo's trainer builds it (`../shared/docs/
training-orders.md`): instances cut from headerless token files, one seeded permutation, and the
instance filter that keeps some instances out of training.

Every rule here follows the trainer (olmo/data/memmap_dataset.py, iterable_dataset.py, util.py at
59a53e3f); the tests check each against an independent transcription of it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from vmem.errors import VmemError

# Hub revisions: stage1-step928646-tokens3896B, stage2-ingredient2-step11931-tokens50B.
REVISION = re.compile(r"^stage(?P<stage>\d+)-(?:ingredient(?P<ingredient>\d+)-)?"
                      r"step(?P<step>\d+)-tokens(?P<tokens>\d+)B$")


@dataclass(frozen=True)
class InstanceFilter:
    """OLMo's `InstanceFilterConfig`: an instance where a repeat of period min_period …
    max_period occurs max_count times or more is masked (all labels −100: never trained on)."""
    max_period: int = 13
    min_period: int = 1
    max_count: int = 32


def revision_step(revision: str) -> int | None:
    """The step of a checkpoint revision `stageK-[ingredientJ-]stepN-tokensMB`, else None."""
    found = REVISION.match(revision)
    return int(found["step"]) if found else None


def instances_per_file(sizes: list[int], itemsize: int, seq_len: int) -> list[int]:
    """Each file holds floor(bytes / (itemsize · seq_len)) instances: the tokens left at a file's
    end are dropped, not carried into the next file."""
    return [size // (itemsize * seq_len) for size in sizes]


def global_indices(instances: int, *, seed: int, epoch: int = 0, world_size: int = 1,
                   drop_last: bool = True) -> np.ndarray:
    """The instance trained on at each position: `_build_global_indices` of OLMo's
    IterableDataset (PCG64(seed + epoch) shuffles arange(N) as uint32; drop_last cuts it to a
    multiple of the world size, else its start is repeated to pad it)."""
    if instances >= np.iinfo(np.uint32).max:
        raise VmemError(f"{instances:,} instances: OLMo's order holds uint32 indices")
    if drop_last and instances % world_size:
        total = math.ceil((instances - world_size) / world_size) * world_size
    else:
        total = math.ceil(instances / world_size) * world_size
    indices = np.arange(instances, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed=seed + epoch)).shuffle(indices)
    if total <= instances:
        return indices[:total]
    return np.resize(indices, total)  # repeats the start, as the trainer's padding loop does


def masked(rows: np.ndarray, rule: InstanceFilter = InstanceFilter()) -> np.ndarray:
    """Per instance (a row of `rows`), whether OLMo's instance filter masks it: some period p
    repeats at least rule.max_count times, counted as `find_periodic_sequences` counts. It views
    the instance as rows of p tokens; a run of r rows each equal to the one before, together with
    the t tokens at the end of the row before the run and the h tokens at the start of the row
    after it that also equal their predecessors, repeats r + 1 + (t + h) // p times."""
    rows = np.asarray(rows)
    out = np.zeros(len(rows), dtype=bool)
    length = rows.shape[1]
    for period in range(rule.min_period, min(rule.max_period, length // 3) + 1):
        width = length + period - length % period  # always at least one padded position
        shaped = np.full((len(rows), width), -1, dtype=np.int64)
        shaped[:, :length] = rows
        shaped = shaped.reshape(len(rows), -1, period)
        equal = shaped == np.roll(shaped, 1, axis=1)  # row 0 meets the padded row: never equal
        whole = equal.all(axis=2)
        # The trainer counts only repeats of 3 or more times; a run of r rows repeats at most
        # r + 2 times, so fewer rows than that cannot reach the count.
        count = max(rule.max_count, 3)
        for i in np.flatnonzero(~out & (whole.sum(axis=1) >= count - 2)):
            out[i] = _repeats(equal[i], whole[i], period) >= count
    return out


def _repeats(equal: np.ndarray, whole: np.ndarray, period: int) -> int:
    """The most times any run of equal rows repeats (see `masked`)."""
    edges = np.diff(np.concatenate([[0], whole.astype(np.int8), [0]]))
    most = 0
    for first, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        # The rows around a maximal run are not all equal (row 0 and the padded last row never
        # are), so each has a first unequal position.
        tail = int(np.argmin(equal[first - 1][::-1]))
        head = int(np.argmin(equal[stop]))
        most = max(most, stop - first + 1 + (tail + head) // period)
    return most
