"""Which task slices of a run are unfinished: what a launcher resubmits (`vmem status`).

A slice is finished when OUT/tasks/ holds its completion marker, which `vmem evaluate` writes only
once sound score files cover the whole slice. The run's range comes from its manifest; before any
task has started there is none, and the caller names the range it will ask for.
"""

from __future__ import annotations

from vmem.errors import VmemError
from vmem.evaluation.run_folder import RunFolder
from vmem.evaluation.slicing import task_slice


def unfinished_tasks(out: str, num_tasks: int, *, start: int | None = None,
                     stop: int | None = None, s3_endpoint: str | None = None) -> list[int]:
    """The ids of the `num_tasks`-way slices of the run in `out` that have no completion marker."""
    if num_tasks < 1:
        raise VmemError(f"--num-tasks {num_tasks}: expected at least 1")
    folder = RunFolder(out, s3_endpoint=s3_endpoint)
    manifest = folder.manifest()
    if manifest is not None:
        recorded = manifest["settings"]["start"], manifest["settings"]["stop"]
        if (start, stop) not in ((None, None), recorded):
            raise VmemError(f"{out}: the run's manifest records the range [{recorded[0]}, "
                            f"{recorded[1]}), not the [{start}, {stop}) asked for")
        start, stop = recorded
    elif start is None or stop is None:
        raise VmemError(f"{out}: no run has started there (no manifest); give its range "
                        f"(--start/--stop or --checkpoint) to list the tasks to run")
    finished = folder.finished_tasks()
    return [t for t in range(num_tasks) if task_slice(start, stop, t, num_tasks) not in finished]
