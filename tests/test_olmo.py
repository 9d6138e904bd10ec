"""OLMo's training order rules against transcriptions of allenai/OLMo's own code (59a53e3f)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vmem import olmo


# --- allenai/OLMo olmo/data/util.py, transcribed (Apache-2.0): the reference for the filter ---
def _end_first_true(arr):
    if not arr[0]:
        return 0
    prog = np.cumsum(arr)
    if prog[-1] == len(arr):
        return len(arr)
    return np.where(prog[:-1:] == prog[1::])[0][0] + 1


def _start_last_true(arr):
    reverse = _end_first_true(arr[::-1])
    return len(arr) - reverse if reverse > 0 else -1


def _find_periodic_sequences(arr, max_period, min_period=1, mask_value=-1):
    max_period = min(max_period, len(arr) // 3)
    for period in range(min_period, max_period + 1):
        padded = np.pad(arr, (0, period - (len(arr) % period)), constant_values=mask_value)
        shaped = padded.reshape(-1, period)
        is_equal = shaped == np.roll(shaped, shift=1, axis=0)
        rows, *_ = np.where(is_equal.all(axis=1))
        if len(rows) == 0:
            continue
        for sequence in np.split(rows, np.where(np.diff(rows) != 1)[0] + 1):
            start_row, end_row = sequence[0], sequence[-1]
            start_offset = _start_last_true(is_equal[start_row - 1])
            start_offset = period - start_offset if start_offset > 0 else 0
            end_offset = _end_first_true(is_equal[end_row + 1])
            start = (start_row - 1) * period - start_offset
            end = ((end_row + 1) * period) + end_offset
            times = (end - start) // period
            if times > 2:
                yield times


def _olmo_masks(row, max_period=13, min_period=1, max_count=32):
    return any(times >= max_count for times in _find_periodic_sequences(
        row.astype(np.int64), max_period=max_period, min_period=min_period))
# --- end of the transcription ---


def _planted_instances(rng, n, length):
    """Random instances, most with one repeat planted: periods 1–15, counts around 32, at
    offsets that start and end mid-row, some two repeats in one instance."""
    rows = rng.integers(0, 50_000, size=(n, length))
    for row in rows[: n * 3 // 4]:
        for _ in range(rng.integers(1, 3)):
            period = int(rng.integers(1, 16))
            times = int(rng.integers(28, 36))
            unit = rng.integers(0, 50_000, size=period)
            span = np.resize(unit, period * times + int(rng.integers(0, period)))
            if span.size >= length:
                continue
            at = int(rng.integers(0, length - span.size))
            row[at:at + span.size] = span
    return rows


def test_instance_filter_masks_exactly_what_olmos_code_masks():
    rng = np.random.default_rng(7)
    rows = _planted_instances(rng, 400, 512)
    expected = np.array([_olmo_masks(row) for row in rows])
    assert 0 < expected.sum() < len(rows)  # both kinds present
    assert (olmo.masked(rows) == expected).all()


def test_instance_filter_follows_the_configured_rule_and_short_rows():
    rng = np.random.default_rng(8)
    rows = _planted_instances(rng, 200, 300)
    rule = olmo.InstanceFilter(max_period=5, min_period=2, max_count=31)
    expected = np.array([_olmo_masks(row, 5, 2, 31) for row in rows])
    assert (olmo.masked(rows, rule) == expected).all()
    short = np.array([[5, 5, 5, 5, 5, 5, 5, 5]])  # periods capped at len // 3
    assert olmo.masked(short, olmo.InstanceFilter(max_count=3))[0] == _olmo_masks(short[0],
                                                                                  max_count=3)


def _olmo_order(n, seed, epoch, world_size, drop_last):
    """olmo/data/iterable_dataset.py IterableDataset.__init__ + _build_global_indices."""
    if drop_last and n % world_size != 0:
        total = math.ceil((n - world_size) / world_size) * world_size
    else:
        total = math.ceil(n / world_size) * world_size
    indices = np.arange(n, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed=seed + epoch)).shuffle(indices)
    if not drop_last:
        parts, padding = [indices], total - len(indices)
        while padding > 0:
            parts.append(indices[:min(padding, len(indices))])
            padding -= len(parts[-1])
        return np.concatenate(parts)
    return indices[:total]


@pytest.mark.parametrize("seed", [6198, 0])
@pytest.mark.parametrize("epoch", [0, 1])
@pytest.mark.parametrize("world_size,drop_last", [(1, True), (7, True), (7, False)])
def test_global_indices_equal_the_trainers_permutation(seed, epoch, world_size, drop_last):
    n = 10_001
    got = olmo.global_indices(n, seed=seed, epoch=epoch, world_size=world_size,
                              drop_last=drop_last)
    want = _olmo_order(n, seed, epoch, world_size, drop_last)
    assert got.dtype == np.uint32 and (got == want).all()
    other = olmo.global_indices(n, seed=seed + 1, epoch=epoch)
    assert (other[:100] != got[:100]).any()


def test_instances_drop_each_files_remainder():
    # two uint32 files of 4096-token instances: 2 whole + 100 tokens, and exactly 3
    sizes = [(2 * 4096 + 100) * 4, 3 * 4096 * 4]
    assert olmo.instances_per_file(sizes, 4, 4096) == [2, 3]


@pytest.mark.parametrize("revision,step", [("stage1-step928646-tokens3896B", 928646),
                                           ("stage2-ingredient2-step11931-tokens50B", 11931),
                                           ("step143000", None), ("main", None)])
def test_revision_steps(revision, step):
    assert olmo.revision_step(revision) == step
