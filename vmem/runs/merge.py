"""All score files of a run → one merged table sorted by index, exactly-once coverage checked.

Pass 1 loads every score file into index-aligned arrays (a few bytes per sequence) to find gaps
and conflicting duplicates. Pass 2 streams the score files again in order of their first index and
writes each index once: with full coverage, what has been written is always a prefix of the range,
so a high-water mark is all it takes to drop the duplicates and keep the output sorted.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vmem.data import MANIFEST_SUFFIX
from vmem.errors import VmemError
from vmem.io.location import Location, Output
from vmem.runs.folder import (
    MANIFEST,
    TASKS,
    DamagedScoreFile,
    gaps,
    is_run_file,
    json_bytes,
    merge_ranges,
    parse_manifest,
    parse_score_file_name,
    read_score_file,
)
from vmem.scoring import (
    GENERATE,
    TRAINED,
    column_type,
    columns,
    memorized_column,
    memorized_flags,
    method,
    prompt_lens,
    schema,
)

ScoreFiles = list[tuple[int, int, Path]]  # (start, stop, local path), sorted


def merge_run(run: str, output: str, *, s3_endpoint: str | None = None) -> dict:
    """The run's score files → `output` (local or s3://: NAME.parquet or NAME.csv, the run's
    manifest beside it as NAME.manifest.json, written last); returns that manifest."""
    target = Output(output, s3_endpoint=s3_endpoint)
    kind = target.name.rsplit(".", 1)[-1].lower() if "." in target.name else ""
    if kind not in ("parquet", "csv"):
        raise VmemError(f"-o {output}: expected a file name ending in .parquet or .csv")
    target.check()
    location = Location(run, s3_endpoint=s3_endpoint)
    if not location.is_folder():
        raise VmemError(f"{run}: no such folder (expected a vmem evaluate --out folder)")
    with location.local_folder(is_run_file) as folder:
        manifest = _read_manifest(folder, run)
        settings, fp = manifest["settings"], manifest["fingerprint"]
        files = _score_files(folder, run, fp, settings)
        table = _load(run, files, settings)
        missing = gaps(settings["start"], settings["stop"],
                       merge_ranges([(a, b) for a, b, _ in files]))
        if missing:
            _report_missing(run, missing, settings)
        with target.file() as tmp:
            _write(run, files, settings, tmp, kind)
        merged = dict(manifest, merged_from=run, rows=settings["stop"] - settings["start"],
                      timing=_timing(folder))
        if TRAINED in table:
            merged["untrained"] = int(np.count_nonzero(~table[TRAINED]))
    target.parent.put_bytes(manifest_beside(target.name), json_bytes(merged))
    memorized = int(memorized_flags(settings, table[memorized_column(settings)]).sum())
    untrained = merged.get("untrained", 0)
    trained = merged["rows"] - untrained
    print(f"vmem: merged {len(files)} score files, {merged['rows']} rows into {output}; "
          f"memorized {memorized} ({memorized / max(trained, 1):.4%})"
          + (f"; {untrained} instances never trained on (the order's instance filter)"
             if untrained else ""), file=sys.stderr)
    return merged


def manifest_beside(table: str) -> str:
    """A merged run is NAME.parquet (or NAME.csv) with the run's manifest beside it:
    `runs/x.parquet` → `runs/x.manifest.json` (also for s3:// URLs)."""
    return table.rsplit(".", 1)[0] + MANIFEST_SUFFIX


def _timing(folder: Path) -> dict:
    """When the run's tasks ran and how fast, from their completion markers."""
    tasks = []
    for path in sorted((folder / TASKS).glob("task-*.json")):
        try:
            tasks.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # timing is a summary: an unreadable marker is left out
            continue
    # A data-parallel parent's marker only names the parts its children scored and timed.
    tasks = [t for t in tasks if isinstance(t, dict) and "scored_now" in t]
    if not tasks:
        return {}
    scored = sum(t["scored_now"] for t in tasks)
    engine_seconds = sum(t["seconds"] for t in tasks)
    return {"tasks": len(tasks), "started": min(t["started"] for t in tasks),
            "finished": max(t["finished"] for t in tasks), "sequences_scored": scored,
            "task_seconds": round(engine_seconds, 3),
            "sequences_per_task_second": round(scored / engine_seconds, 2)
            if engine_seconds else None}


def _read_manifest(folder: Path, run: str) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise VmemError(f"{run}: no {MANIFEST} (expected the output folder of vmem evaluate)")
    return parse_manifest(path.read_bytes(), f"{run}/{MANIFEST}")


def _score_files(folder: Path, run: str, fp: str, settings: dict) -> ScoreFiles:
    """(start, stop, path) of every score file, sorted; files of other settings are an error."""
    files = []
    for path in sorted(folder.iterdir()):
        parsed = parse_score_file_name(path.name)
        if parsed is None:
            continue
        file_fp, a, b = parsed
        if file_fp != fp:
            raise VmemError(f"{run}: score file {path.name} was written with other settings "
                            f"(fingerprint {file_fp}, the manifest's is {fp}); mixed runs "
                            f"cannot be merged")
        if a < settings["start"] or b > settings["stop"] or b <= a:
            raise VmemError(f"{run}: score file {path.name} lies outside the run's range "
                            f"[{settings['start']}, {settings['stop']})")
        files.append((a, b, path))
    return sorted(files, key=lambda f: (f[0], f[1]))


def _read(run: str, path: Path, a: int, b: int, settings: dict) -> pa.Table:
    try:
        return read_score_file(path, path.name, a, b, settings)
    except DamagedScoreFile as err:
        # Resuming the run re-checks every score file and scores a damaged one's rows again.
        raise VmemError(f"{run}: {err}; regenerate it with: "
                        f"{fill_command(run, settings)}") from None


def _load(run: str, files: ScoreFiles, settings: dict) -> dict[str, np.ndarray]:
    """Index-aligned arrays of the whole range; a duplicate must equal what came first."""
    start, stop = settings["start"], settings["stop"]
    n = stop - start
    arrays = {"seen": np.zeros(n, np.bool_)}
    for name in columns(settings)[1:]:
        if name != "score":  # matches / cont_len
            kind = column_type(name)
            # Counts lie in 0..cont_len: the smallest type that holds them keeps a 146M-sequence
            # run small (a byte for Pythia's 32).
            arrays[name] = np.zeros(n, np.bool_ if kind == pa.bool_() else
                                    np.float32 if pa.types.is_floating(kind) else
                                    np.min_scalar_type(settings["cont_len"]))
    duplicates = 0
    for a, b, path in files:
        table = _read(run, path, a, b, settings)
        window = slice(a - start, b - start)
        seen = arrays["seen"][window]
        for name in arrays:
            if name == "seen":
                continue
            # An untrained row's empty cells (see read_score_file) are compared as zeros.
            column = table[name]
            if column.null_count:
                column = column.fill_null(False if pa.types.is_boolean(column.type) else 0)
            values = column.to_numpy()
            values = values.astype(arrays[name].dtype)
            target = arrays[name][window]
            clash = seen & (target != values)
            if clash.any():
                index = a + int(np.flatnonzero(clash)[0])
                raise VmemError(f"conflicting duplicate: index {index} has {name} "
                                f"{target[clash][0]} in an earlier score file and "
                                f"{values[clash][0]} in {path.name}")
            target[~seen] = values[~seen]
        duplicates += int(seen.sum())
        seen[:] = True
    if duplicates:
        print(f"vmem: warning: {duplicates} duplicate rows with equal values dropped",
              file=sys.stderr)
    return arrays


def _report_missing(run: str, missing: list[tuple[int, int]], settings: dict) -> None:
    count = sum(b - a for a, b in missing)
    shown = ", ".join(f"[{a}, {b})" for a, b in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    raise VmemError(f"{run}: {count} sequences missing in {len(missing)} range(s): {shown}{more}; "
                    f"fill them with (it evaluates only what is missing): "
                    f"{fill_command(run, settings)}")


def fill_command(run: str, settings: dict) -> str:
    """The `vmem evaluate` command that resumes this run: same settings, same range, same --out."""
    data = settings["data"]
    cmd = ["vmem", "evaluate", "--model", settings["model"]]
    if settings.get("revision"):
        cmd += ["--revision", settings["revision"]]
    cmd += ["--data", data["location"]]
    if data["layout"] == "raw":
        cmd += ["--seq-len", str(data["seq_len"]), "--data-dtype", data["dtype"]]
    cmd += ["--start", str(settings["start"]), "--stop", str(settings["stop"]), "--out", run,
            "--engine", settings["engine"], "--dtype", settings["dtype"],
            "--prompt-len", ",".join(map(str, prompt_lens(settings))),
            "--cont-len", str(settings["cont_len"]),
            "--offset", str(settings["offset"]),
            "--sequences-per-step", str(settings["batch_size"])]
    if settings["eos_mode"] == "allow":
        cmd.append("--allow-eos")
    if settings["logprobs"]:
        cmd.append("--logprobs")
    if method(settings) != GENERATE:
        cmd += ["--method", method(settings)]
    return shlex.join(cmd)


def _write(run: str, files: ScoreFiles, settings: dict, path: str, kind: str) -> None:
    """Stream the score files in order into `path`; each index is written once (the first copy,
    equal to the rest)."""
    names, table_schema = columns(settings), schema(settings)
    written = settings["start"]
    writer = (pq.ParquetWriter(path, table_schema) if kind == "parquet"
              else pacsv.CSVWriter(path, table_schema))
    with writer:
        for a, b, score_file in files:
            if b <= written:
                continue
            table = _read(run, score_file, a, b, settings).select(names).cast(table_schema)
            writer.write_table(table.slice(max(written - a, 0)))
            written = b
