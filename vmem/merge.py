"""All shards of a run → one table sorted by index, with exactly-once coverage checked.

Pass 1 loads every shard into index-aligned arrays (a few bytes per sequence) to find gaps and
conflicting duplicates. Pass 2 streams the shards again in order of their first index and writes
each index once: with full coverage, what has been written is always a prefix of the range, so a
high-water mark is all it takes to drop the duplicates and keep the output sorted.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vmem import s3
from vmem.errors import VmemError
from vmem.mmidx import atomic_path
from vmem.results import (
    COLUMN_TYPES,
    MANIFEST,
    TASKS,
    DamagedScoreFile,
    columns_for,
    gaps,
    merge_ranges,
    parse_shard_name,
    read_score_file,
)
from vmem.runs import manifest_beside


def merge_command(args) -> int:
    merge_run(args.run, args.output, s3_endpoint=args.s3_endpoint)
    return 0


def merge_run(run: str, output: str, *, s3_endpoint: str | None = None) -> dict:
    kind = output.rsplit(".", 1)[-1].lower() if "." in Path(output).name else ""
    if kind not in ("parquet", "csv"):
        raise VmemError(f"-o {output}: expected a file name ending in .parquet or .csv")
    with _local_run(run, s3_endpoint) as folder:
        manifest = _read_manifest(folder, run)
        settings, fp = manifest["settings"], manifest["fingerprint"]
        shards = _shards(folder, run, fp, settings)
        table = _load(run, shards, settings)
        missing = gaps(settings["start"], settings["stop"],
                       merge_ranges([(a, b) for a, b, _ in shards]))
        if missing:
            _report_missing(run, missing, settings)
        _write(run, shards, settings, output, kind)
    merged = dict(manifest, merged_from=run, rows=settings["stop"] - settings["start"],
                  timing=_timing(folder))
    with atomic_path(manifest_beside(output)) as tmp, open(tmp, "w") as f:
        f.write(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    memorized = int((table["matches"] == settings["cont_len"]).sum())
    print(f"vmem: merged {len(shards)} shards, {merged['rows']} rows into {output}; "
          f"memorized {memorized} ({memorized / max(merged['rows'], 1):.4%})", file=sys.stderr)
    return merged


@contextmanager
def _local_run(run: str, s3_endpoint: str | None) -> Iterator[Path]:
    """A local folder as is; an s3:// prefix downloaded to a temporary folder."""
    if not s3.is_s3(run):
        if not Path(run).is_dir():
            raise VmemError(f"{run}: no such folder (expected a vmem evaluate --out folder)")
        yield Path(run)
        return
    bucket, prefix = s3.parse_s3_url(run)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = s3.client(s3_endpoint)
    with tempfile.TemporaryDirectory(prefix="vmem-merge-") as tmp:
        for key in s3.list_keys(client, bucket, prefix):
            name = key[len(prefix):]
            if name == MANIFEST or parse_shard_name(name) or name.startswith(f"{TASKS}/"):
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(client, bucket, key, Path(tmp) / name)
        yield Path(tmp)


def _timing(folder: Path) -> dict:
    """When the run's tasks ran and how fast, from their completion markers."""
    tasks = [json.loads(p.read_text()) for p in sorted((folder / TASKS).glob("task-*.json"))]
    tasks = [t for t in tasks if "finished" in t]
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
    return json.loads(path.read_text())


def _shards(folder: Path, run: str, fp: str, settings: dict) -> list[tuple[int, int, Path]]:
    """(start, stop, path) of every shard, sorted; shards of other settings are an error."""
    shards = []
    for path in sorted(folder.iterdir()):
        parsed = parse_shard_name(path.name)
        if parsed is None:
            continue
        shard_fp, a, b = parsed
        if shard_fp != fp:
            raise VmemError(f"{run}: shard {path.name} was written with other settings "
                            f"(fingerprint {shard_fp}, the manifest's is {fp}); mixed runs "
                            f"cannot be merged")
        if a < settings["start"] or b > settings["stop"] or b <= a:
            raise VmemError(f"{run}: shard {path.name} lies outside the run's range "
                            f"[{settings['start']}, {settings['stop']})")
        shards.append((a, b, path))
    return sorted(shards, key=lambda s: (s[0], s[1]))


def _read_shard(run: str, path: Path, a: int, b: int, settings: dict) -> pa.Table:
    try:
        return read_score_file(path, path.name, a, b, settings)
    except DamagedScoreFile as err:
        # Resuming the run re-checks every score file and scores a damaged one's rows again.
        raise VmemError(f"{run}: {err}; regenerate it with: "
                        f"{fill_command(run, settings)}") from None


def _load(run: str, shards: list[tuple[int, int, Path]], settings: dict) -> dict[str, np.ndarray]:
    """Index-aligned arrays of the whole range; a duplicate must equal what came first."""
    start, stop = settings["start"], settings["stop"]
    n = stop - start
    arrays = {"seen": np.zeros(n, np.bool_), "matches": np.zeros(n, np.uint8),
              "prefix_match": np.zeros(n, np.uint8)}
    if settings["logprobs"]:
        arrays["cont_logprob"] = np.zeros(n, np.float32)
    duplicates = 0
    for a, b, path in shards:
        table = _read_shard(run, path, a, b, settings)
        window = slice(a - start, b - start)
        seen = arrays["seen"][window]
        for name in ("matches", "prefix_match", "cont_logprob"):
            if name not in arrays:
                continue
            values = table[name].to_numpy().astype(arrays[name].dtype)
            target = arrays[name][window]
            clash = seen & (target != values)
            if clash.any():
                index = a + int(np.flatnonzero(clash)[0])
                raise VmemError(f"conflicting duplicate: index {index} has {name} "
                                f"{target[clash][0]} in an earlier shard and {values[clash][0]} "
                                f"in {path.name}")
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
            "--prompt-len", str(settings["prompt_len"]), "--cont-len", str(settings["cont_len"]),
            "--offset", str(settings["offset"]), "--batch-size", str(settings["batch_size"])]
    if settings["eos_mode"] == "allow":
        cmd.append("--allow-eos")
    if settings["logprobs"]:
        cmd.append("--logprobs")
    return shlex.join(cmd)


def _write(run: str, shards: list[tuple[int, int, Path]], settings: dict, output: str,
           kind: str) -> None:
    """Stream shards in order; each index is written once (the first copy, equal to the rest)."""
    columns = columns_for(settings["logprobs"])
    schema = pa.schema([(c, COLUMN_TYPES[c]) for c in columns])
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    written = settings["start"]
    with atomic_path(output) as tmp:
        writer = (pq.ParquetWriter(tmp, schema) if kind == "parquet"
                  else pacsv.CSVWriter(tmp, schema))
        with writer:
            for a, b, path in shards:
                if b <= written:
                    continue
                table = _read_shard(run, path, a, b, settings).select(columns).cast(schema)
                writer.write_table(table.slice(max(written - a, 0)))
                written = b
