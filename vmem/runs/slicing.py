"""A task's contiguous slice of the index range, from `--task-id/--num-tasks` or Slurm's variables.

Slices are balanced: the first `(stop - start) % num_tasks` tasks get one sequence more, so sizes
differ by at most one, and together the slices cover `[start, stop)` exactly once, in order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vmem.errors import VmemError


def task_slice(start: int, stop: int, task_id: int, num_tasks: int) -> tuple[int, int]:
    """The slice `[a, b)` of `[start, stop)` that task `task_id` of `num_tasks` evaluates."""
    if start < 0 or stop < start:
        raise VmemError(f"--start/--stop: expected 0 <= start <= stop, got [{start}, {stop})")
    _check_task(task_id, num_tasks, "--task-id", "--num-tasks")
    size, extra = divmod(stop - start, num_tasks)
    a = start + task_id * size + min(task_id, extra)
    return a, a + size + (task_id < extra)


def task_from_env(
    task_id: int | None, num_tasks: int | None, environ: Mapping[str, str] = os.environ
) -> tuple[int, int]:
    """This task's `(task_id, num_tasks)`: the flags, else Slurm's variables, else `(0, 1)`.

    Without flags an array's size and ids come from Slurm: id = ID - MIN (in steps of STEP),
    count = COUNT (or the number of ids in MIN..MAX); else, inside an `srun` step, SLURM_PROCID of
    SLURM_NTASKS. A batch script itself is no step: there SLURM_NTASKS counts the allocation's
    tasks, not ways to split the work, so it is one task. `--num-tasks N` alone takes the id from
    SLURM_ARRAY_TASK_ID (or a step's SLURM_PROCID) as is, so `sbatch --array=1,3 ... --num-tasks 4`
    reruns just slices 1 and 3 of a 4-way run.
    """
    if task_id is not None:
        if num_tasks is None:
            raise VmemError("--task-id: expected --num-tasks as well")
        _check_task(task_id, num_tasks, "--task-id", "--num-tasks")
        return task_id, num_tasks
    in_step = "SLURM_STEP_ID" in environ
    if num_tasks is not None:
        for name in ["SLURM_ARRAY_TASK_ID"] + (["SLURM_PROCID"] if in_step else []):
            if name in environ:
                task_id = _env_int(environ, name)
                _check_task(task_id, num_tasks, name, "--num-tasks")
                return task_id, num_tasks
        raise VmemError("--num-tasks: expected --task-id too (or a Slurm array task or srun step)")
    if "SLURM_ARRAY_TASK_ID" in environ:
        return _array_task(environ)
    if in_step:
        task_id, num_tasks = _env_int(environ, "SLURM_PROCID"), _env_int(environ, "SLURM_NTASKS")
        _check_task(task_id, num_tasks, "SLURM_PROCID", "SLURM_NTASKS")
        return task_id, num_tasks
    return 0, 1


def _array_task(environ: Mapping[str, str]) -> tuple[int, int]:
    array_id = _env_int(environ, "SLURM_ARRAY_TASK_ID")
    low = _env_int(environ, "SLURM_ARRAY_TASK_MIN")
    high = _env_int(environ, "SLURM_ARRAY_TASK_MAX")
    step = _env_int(environ, "SLURM_ARRAY_TASK_STEP", default=1)
    if step < 1 or high < low:
        raise VmemError(
            f"SLURM_ARRAY_TASK_MIN/MAX/STEP: expected MIN <= MAX and STEP >= 1, "
            f"got {low}/{high}/{step}"
        )
    if not (low <= array_id <= high and (array_id - low) % step == 0):
        raise VmemError(
            f"SLURM_ARRAY_TASK_ID: expected an id in {low}..{high} (step {step}), got {array_id}"
        )
    span = (high - low) // step + 1
    count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT", default=span)
    if count != span:
        # Ids like --array=0,2,7 do not map onto slices 0..COUNT-1; say how to run such a subset.
        raise VmemError(
            f"SLURM_ARRAY_TASK_COUNT: expected {span} ids in {low}..{high} (a range like "
            f"--array=0-{span - 1}), got {count}; for a subset of slices pass --num-tasks"
        )
    return (array_id - low) // step, count


def _check_task(task_id: int, num_tasks: int, id_name: str, count_name: str) -> None:
    if num_tasks < 1:
        raise VmemError(f"{count_name}: expected at least 1, got {num_tasks}")
    if not 0 <= task_id < num_tasks:
        raise VmemError(f"{id_name}: expected 0 <= id < {num_tasks} ({count_name}), got {task_id}")


def _env_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is not None:
            return default
        raise VmemError(f"{name}: expected it to be set alongside the other Slurm task variables")
    try:
        return int(value)
    except ValueError:
        raise VmemError(f"{name}: expected an integer, got {value!r}") from None
