"""Task slices cover any range exactly once, and Slurm's variables map onto them."""

from __future__ import annotations

import os
import random

import pytest

from vmem.errors import VmemError
from vmem.runs.slicing import task_from_env, task_slice


def check_partition(start: int, stop: int, num_tasks: int) -> None:
    slices = [task_slice(start, stop, t, num_tasks) for t in range(num_tasks)]
    assert slices[0][0] == start and slices[-1][1] == stop
    for previous, current in zip(slices, slices[1:], strict=False):
        # Contiguous and disjoint: each slice starts where the previous one ended.
        assert previous[1] == current[0]
    sizes = [b - a for a, b in slices]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1
    assert sum(sizes) == stop - start


def test_exhaustive_small_grid():
    for start in range(0, 6):
        for length in range(0, 40):
            for num_tasks in range(1, 45):
                check_partition(start, start + length, num_tasks)


def test_random_large_ranges():
    rng = random.Random(20230412)
    for _ in range(500):
        start = rng.randrange(0, 146_432_000)
        stop = start + rng.randrange(0, 146_432_000)
        check_partition(start, stop, rng.randrange(1, 2000))


def test_every_index_in_exactly_one_slice():
    start, stop, num_tasks = 17, 1000, 7
    owner = {}
    for t in range(num_tasks):
        a, b = task_slice(start, stop, t, num_tasks)
        for i in range(a, b):
            assert i not in owner
            owner[i] = t
    assert sorted(owner) == list(range(start, stop))


def test_pythia_final_checkpoint_in_eight():
    # 146,432,000 = 8 x 18,304,000: equal slices, the first one starting at 0.
    assert task_slice(0, 146_432_000, 0, 8) == (0, 18_304_000)
    assert task_slice(0, 146_432_000, 7, 8) == (128_128_000, 146_432_000)


@pytest.mark.parametrize(
    "args, flag",
    [
        ((0, 10, 0, 0), "--num-tasks"),
        ((0, 10, 3, 3), "--task-id"),
        ((0, 10, -1, 3), "--task-id"),
        ((5, 4, 0, 1), "--start/--stop"),
        ((-1, 4, 0, 1), "--start/--stop"),
    ],
)
def test_bad_slice_arguments(args, flag):
    with pytest.raises(VmemError, match=f"^{flag}: expected"):
        task_slice(*args)


def test_no_flags_no_slurm_is_one_task():
    assert task_from_env(None, None, {}) == (0, 1)
    assert task_from_env(None, None, {"SLURM_JOB_ID": "7"}) == (0, 1)


def test_flags_win_over_slurm():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"}
    assert task_from_env(1, 2, env) == (1, 2)


def array_env(task: int, low: int, high: int, count: int | None = None, step: int | None = None):
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low),
           "SLURM_ARRAY_TASK_MAX": str(high)}
    if count is not None:
        env["SLURM_ARRAY_TASK_COUNT"] = str(count)
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


def test_array_from_zero():
    assert [task_from_env(None, None, array_env(t, 0, 3, 4)) for t in range(4)] == [
        (0, 4), (1, 4), (2, 4), (3, 4)]


def test_array_not_starting_at_zero_without_count():
    assert [task_from_env(None, None, array_env(t, 5, 7)) for t in (5, 6, 7)] == [
        (0, 3), (1, 3), (2, 3)]


def test_array_with_step():
    # --array=10-16:2 → ids 10, 12, 14, 16 are slices 0..3 of 4.
    assert [task_from_env(None, None, array_env(t, 10, 16, 4, 2)) for t in (10, 12, 14, 16)] == [
        (0, 4), (1, 4), (2, 4), (3, 4)]


def step_env(procid: str, ntasks: str) -> dict[str, str]:
    return {"SLURM_STEP_ID": "0", "SLURM_PROCID": procid, "SLURM_NTASKS": ntasks}


def test_array_beats_srun_variables():
    assert task_from_env(None, None, array_env(2, 0, 3, 4) | step_env("0", "1")) == (2, 4)


def test_srun_step():
    assert task_from_env(None, None, step_env("2", "3")) == (2, 3)


def test_batch_script_of_a_many_task_job_is_one_task():
    # sbatch --ntasks=4 sets these in the batch script too; only srun's steps split the work.
    assert task_from_env(None, None, {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == (0, 1)


def test_num_tasks_alone_takes_the_array_id_as_is():
    # The rerun of slices 1 and 3 of a 4-way run: sbatch --array=1,3 ... --num-tasks 4.
    env = array_env(3, 1, 3, 2)
    assert task_from_env(None, 4, env) == (3, 4)
    assert task_from_env(None, 4, step_env("1", "2")) == (1, 4)


@pytest.mark.parametrize(
    "task_id, num_tasks, env, name",
    [
        (2, None, {}, "--task-id"),
        (None, 4, {}, "--num-tasks"),
        (None, 4, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, "--num-tasks"),
        (None, 4, array_env(4, 0, 4), "SLURM_ARRAY_TASK_ID"),
        (None, 0, array_env(0, 0, 4), "--num-tasks"),
        (None, None, array_env(9, 0, 3, 4), "SLURM_ARRAY_TASK_ID"),
        (None, None, array_env(1, 2, 3, 2), "SLURM_ARRAY_TASK_ID"),
        (None, None, array_env(11, 10, 16, 4, 2), "SLURM_ARRAY_TASK_ID"),
        (None, None, array_env(2, 0, 7, 3), "SLURM_ARRAY_TASK_COUNT"),
        (None, None, array_env(2, 3, 1), "SLURM_ARRAY_TASK_MIN/MAX/STEP"),
        (None, None, array_env(2, 0, 3, step=0), "SLURM_ARRAY_TASK_MIN/MAX/STEP"),
        (None, None, {"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_MIN"),
        (None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_MIN": "0",
                      "SLURM_ARRAY_TASK_MAX": "3"}, "SLURM_ARRAY_TASK_ID"),
        (None, None, {"SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}, "SLURM_NTASKS"),
        (None, None, step_env("2", "2"), "SLURM_PROCID"),
        (None, None, step_env("0", "0"), "SLURM_NTASKS"),
    ],
)
def test_bad_task_settings_name_the_input(task_id, num_tasks, env, name):
    with pytest.raises(VmemError) as err:
        task_from_env(task_id, num_tasks, env)
    message = str(err.value)
    assert message.startswith(f"{name}: expected") and "\n" not in message


def test_reads_the_process_environment_by_default(monkeypatch):
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    assert task_from_env(None, None) == (0, 1)
    with pytest.raises(VmemError, match="^--num-tasks: expected"):
        task_from_env(None, 4)
    for name, value in array_env(6, 4, 7).items():
        monkeypatch.setenv(name, value)
    assert task_from_env(None, None) == (2, 4)
