"""A run's output folder: manifest, durable score shards, task completion markers, S3 staging.

    OUT/manifest.json                    settings + range of the whole run (all tasks share it)
    OUT/scores-<fp>-<start>-<stop>.csv   one chunk of rows; exists whole or not at all
    OUT/tasks/task-<start>-<stop>.json   a finished task slice, with its counts and throughput

What is done is the union of the shard files' ranges, so a run killed at any moment resumes exactly
where it stopped. `<fp>` fingerprints the settings, so shards of different runs never mix unnoticed.
With `OUT = s3://bucket/prefix`, files are written to a local staging folder first and uploaded as
each completes; a failed upload keeps the local file, and the next start uploads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from vmem import s3
from vmem.errors import VmemError, first_line
from vmem.mmidx import atomic_path

SHARD_NAME = re.compile(r"^scores-(?P<fp>[0-9a-f]{10})-(?P<start>\d{12})-(?P<stop>\d{12})\.csv$")
MANIFEST = "manifest.json"
TASKS = "tasks"


def fingerprint(settings: dict) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def shard_name(fp: str, start: int, stop: int) -> str:
    return f"scores-{fp}-{start:012d}-{stop:012d}.csv"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    match = SHARD_NAME.match(name)
    if not match:
        return None
    return match.group("fp"), int(match.group("start")), int(match.group("stop"))


def task_marker_name(start: int, stop: int) -> str:
    return f"{TASKS}/task-{start:012d}-{stop:012d}.json"


def columns_for(logprobs: bool) -> list[str]:
    return ["index", "score", "matches", "prefix_match"] + (["cont_logprob"] if logprobs else [])


COLUMN_TYPES = {"index": pa.int64(), "score": pa.float64(), "matches": pa.int64(),
                "prefix_match": pa.int64(), "cont_logprob": pa.float64()}


class DamagedScoreFile(VmemError):
    """A score file that does not parse, does not hold exactly the rows its name claims, or holds
    values no scoring gives."""


def read_score_file(source: str | os.PathLike | bytes, name: str, start: int, stop: int,
                    settings: dict) -> pa.Table:
    """The score file's rows, checked: the run's columns, indices exactly [start, stop) in order,
    matches within 0..cont_len, prefix_match <= matches and score = matches / cont_len."""
    columns, cont_len = columns_for(settings["logprobs"]), settings["cont_len"]
    raw = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        table = pacsv.read_csv(raw, convert_options=pacsv.ConvertOptions(
            column_types={c: COLUMN_TYPES[c] for c in columns}))
    except (pa.ArrowInvalid, OSError) as err:
        reason = first_line(err)
        raise DamagedScoreFile(f"score file {name} does not parse ({reason})") from None
    if table.column_names != columns:
        raise DamagedScoreFile(f"score file {name} has columns {table.column_names}, expected "
                               f"{columns}")
    index = table["index"].to_numpy()
    if len(index) != stop - start or (len(index) and (
            index[0] != start or np.any(np.diff(index) != 1))):
        raise DamagedScoreFile(f"score file {name} does not hold exactly the rows [{start}, "
                               f"{stop}) its name claims ({len(index)} rows)")
    if any(column.null_count for column in table.columns):
        raise DamagedScoreFile(f"score file {name} has empty cells")
    matches, prefix = table["matches"].to_numpy(), table["prefix_match"].to_numpy()
    if (np.any(matches < 0) or np.any(matches > cont_len) or np.any(prefix < 0)
            or np.any(prefix > matches)
            or not np.array_equal(table["score"].to_numpy(), matches / cont_len)):
        raise DamagedScoreFile(f"score file {name} holds values no scoring gives (matches "
                               f"outside 0..{cont_len}, prefix_match > matches or score != "
                               f"matches/{cont_len})")
    return table


def write_atomic(path: Path, data: bytes) -> None:
    """The file exists whole or not at all, even after SIGKILL or a power cut."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def shard_csv(indices: np.ndarray, matches: np.ndarray, prefix_match: np.ndarray, cont_len: int,
              cont_logprob: np.ndarray | None) -> bytes:
    header = ",".join(columns_for(cont_logprob is not None))
    scores = matches / cont_len  # exact in binary for cont_len a power of two; repr round-trips
    columns = [indices.tolist(), scores.tolist(), matches.tolist(), prefix_match.tolist()]
    if cont_logprob is not None:
        columns.append(cont_logprob.tolist())
    rows = (",".join(map(repr, row)) for row in zip(*columns, strict=True))
    return ("\n".join([header, *rows]) + "\n").encode()


def first_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """The first setting (dotted path) whose value differs, as 'key: old != new'."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} != {b!r}"
    return None


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def gaps(start: int, stop: int, done: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [start, stop) not covered by the (merged, sorted) done ranges."""
    todo, cursor = [], start
    for a, b in done:
        if b <= cursor or a >= stop:
            continue
        if a > cursor:
            todo.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < stop:
        todo.append((cursor, stop))
    return todo


class RunFolder:
    """OUT on local disk, or s3://bucket/prefix through a local staging folder. Nothing is
    created in OUT before the first file is written into it."""

    def __init__(self, out: str, *, staging_dir: str | None = None, s3_endpoint: str | None = None):
        self.out = out
        self.remote = None
        if s3.is_s3(out):
            bucket, prefix = s3.parse_s3_url(out)
            self.client = s3.client(s3_endpoint)
            self.remote = (bucket, prefix.rstrip("/") + "/" if prefix else "")
            digest = hashlib.sha256(out.encode()).hexdigest()[:12]
            staging_dir = staging_dir or os.path.join(tempfile.gettempdir(), "vmem-staging", digest)
            self.local = Path(staging_dir)
        else:
            self.local = Path(out)
        self._check_writable()

    def _check_writable(self) -> None:
        """Fail now, not after an engine start, where OUT (or the folder it would be made in)
        cannot be written."""
        where = self.local
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
            raise VmemError(f"--out {self.out}: cannot write there ({where} is not a writable "
                            f"folder)")

    # -- manifest -----------------------------------------------------------------------------
    def recorded_settings(self) -> dict | None:
        """The settings of the run this folder holds, if any."""
        existing = self._read_json(MANIFEST)
        return existing.get("settings") if existing else None

    def check_claim(self, manifest: dict) -> bool:
        """Refuse a folder that holds another run; writes nothing. True when the folder already
        holds this run's manifest."""
        existing = self._read_json(MANIFEST)
        if existing is not None:
            diff = first_difference(existing.get("settings", {}), manifest["settings"])
            if diff:
                raise VmemError(f"--out {self.out} holds a run with different settings ({diff}); "
                                f"use another --out")
            return True
        foreign = {p[0] for p in map(parse_shard_name, self._names()) if p}
        foreign.discard(manifest["fingerprint"])
        if foreign:
            raise VmemError(f"--out {self.out} holds score files of another run (fingerprint "
                            f"{sorted(foreign)[0]}) but no manifest; use another --out")
        return False

    def claim(self, manifest: dict) -> None:
        """Write the manifest, or check that the one already there describes the same run."""
        if not self.check_claim(manifest):
            self._put(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

    # -- score files --------------------------------------------------------------------------
    def done_ranges(self, fp: str, settings: dict,
                    within: tuple[int, int]) -> list[tuple[int, int]]:
        """The ranges that sound score files cover. Those overlapping `within` are read and
        checked; a damaged one is removed (with a warning) so that its rows are scored again."""
        self._upload_pending()
        done = []
        for name in sorted(self._names()):
            parsed = parse_shard_name(name)
            if not parsed or parsed[0] != fp:
                continue
            _, a, b = parsed
            if a < within[1] and b > within[0]:
                try:
                    read_score_file(self._read_bytes(name), name, a, b, settings)
                except DamagedScoreFile as err:
                    print(f"vmem: warning: {err}; removing it to score [{a}, {b}) again",
                          file=sys.stderr)
                    self._delete(name)
                    continue
            done.append((a, b))
        return merge_ranges(done)

    def write_shard(self, fp: str, start: int, stop: int, data: bytes) -> None:
        self._put(shard_name(fp, start, stop), data)

    # -- task markers ----------------------------------------------------------------------------
    def task_finished(self, start: int, stop: int) -> bool:
        return self._read_json(task_marker_name(start, stop)) is not None

    def finish_task(self, start: int, stop: int, stats: dict) -> None:
        self._put(task_marker_name(start, stop),
                  (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode())

    # -- storage ------------------------------------------------------------------------------
    def _put(self, name: str, data: bytes) -> None:
        write_atomic(self.local / name, data)
        if self.remote:
            bucket, prefix = self.remote
            s3.upload_file(self.client, str(self.local / name), bucket, prefix + name)

    def _read_bytes(self, name: str) -> bytes:
        path = self.local / name
        if path.exists():
            return path.read_bytes()
        bucket, prefix = self.remote
        return s3.get_bytes(self.client, bucket, prefix + name)

    def _delete(self, name: str) -> None:
        (self.local / name).unlink(missing_ok=True)
        if self.remote and name in self._remote_names():
            bucket, prefix = self.remote
            s3.delete_key(self.client, bucket, prefix + name)

    def _read_json(self, name: str) -> dict | None:
        path = self.local / name
        if path.exists():
            return json.loads(path.read_text())
        if self.remote:
            bucket, prefix = self.remote
            if prefix + name in set(s3.list_keys(self.client, bucket, prefix + name)):
                data = s3.get_bytes(self.client, bucket, prefix + name)
                write_atomic(path, data)
                return json.loads(data)
        return None

    def _local_names(self) -> set[str]:
        if not self.local.is_dir():
            return set()
        return {p.name for p in self.local.iterdir() if p.is_file()}

    def _remote_names(self) -> set[str]:
        if not self.remote:
            return set()
        bucket, prefix = self.remote
        return {k[len(prefix):] for k in s3.list_keys(self.client, bucket, prefix)}

    def _names(self) -> set[str]:
        return self._local_names() | self._remote_names()

    def _upload_pending(self) -> None:
        """Score files staged locally whose upload failed last time go up now, before anything
        new."""
        if not self.remote:
            return
        bucket, prefix = self.remote
        for name in sorted(self._local_names() - self._remote_names()):
            if parse_shard_name(name):
                s3.upload_file(self.client, str(self.local / name), bucket, prefix + name)
