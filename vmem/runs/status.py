"""Which task slices of a run are unfinished: what a launcher resubmits (`vmem status`).

A slice is finished when OUT/tasks/ holds its completion marker, which `vmem evaluate` writes only
once sound score files cover the whole slice. The run's range comes from its manifest; before any
task has started there is none, and the caller names the range it will ask for. Everything is read
from OUT itself (local or S3), never from a staging folder.
"""

from __future__ import annotations

import os

from vmem.errors import VmemError
from vmem.io.location import Location
from vmem.runs.folder import MANIFEST, finished_tasks, parse_manifest
from vmem.runs.slicing import task_slice


def recorded_step_size(out: str, *, s3_endpoint: str | None = None) -> int | None:
    """The sequences per step a started run recorded (its order's batch), else None."""
    folder = Location(out, s3_endpoint=s3_endpoint)
    if not folder.is_folder() or not folder.exists(MANIFEST):
        return None
    return parse_manifest(folder.read_bytes(MANIFEST), folder.join(MANIFEST))["settings"].get(
        "batch_size")


def unfinished_tasks(out: str, num_tasks: int, requested: tuple[int, int] | None = None, *,
                     s3_endpoint: str | None = None) -> list[int]:
    """The ids of the `num_tasks`-way slices of the run in `out` without a completion marker.
    `requested` is the range the caller would evaluate; the manifest's must agree with it."""
    if num_tasks < 1:
        raise VmemError(f"--num-tasks {num_tasks}: expected at least 1")
    folder = Location(out, s3_endpoint=s3_endpoint)
    if not folder.remote and os.path.exists(folder.url) and not folder.is_folder():
        raise VmemError(f"{out}: not a folder (expected a vmem evaluate --out folder)")
    if folder.exists(MANIFEST):
        settings = parse_manifest(folder.read_bytes(MANIFEST), folder.join(MANIFEST))["settings"]
        recorded = settings["start"], settings["stop"]
        if requested not in (None, recorded):
            raise VmemError(f"{out}: the run's manifest records the range [{recorded[0]}, "
                            f"{recorded[1]}), not the [{requested[0]}, {requested[1]}) asked for")
        start, stop = recorded
    elif requested is None:
        raise VmemError(f"{out}: no run has started there (no manifest); give its range "
                        f"(--checkpoint or --start/--stop) to list the tasks to run")
    else:
        start, stop = requested
    finished = finished_tasks(folder)
    return [t for t in range(num_tasks) if task_slice(start, stop, t, num_tasks) not in finished]
