"""A run's output folder: manifest, durable score files, task completion markers, S3 staging.

    OUT/manifest.json                    settings + range of the whole run (all tasks share it)
    OUT/scores-<fp>-<start>-<stop>.csv   a score file: one chunk of rows, whole or absent
    OUT/tasks/task-<start>-<stop>.json   a finished task slice, with its counts and throughput

What is done is the union of the score files' ranges, so a run killed at any moment resumes
exactly where it stopped. `<fp>` fingerprints the settings, so score files of different runs
never mix unnoticed. With `OUT = s3://bucket/prefix`, each file is uploaded as it completes
and S3 is the only record: nothing is kept locally between runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from vmem.errors import VmemError, first_line
from vmem.io.location import Location, Output
from vmem.runs.weights import check_unchanged
from vmem.scoring import GENERATE, TRAINED, column_type, columns, method

SCORE_FILE = re.compile(r"^scores-(?P<fp>[0-9a-f]{10})-(?P<start>\d{12})-(?P<stop>\d{12})\.csv$")
TASK_MARKER = re.compile(r"^task-(?P<start>\d{12})-(?P<stop>\d{12})\.json$")
MANIFEST = "manifest.json"
TASKS = "tasks"


def fingerprint(settings: dict) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def score_file_name(fp: str, start: int, stop: int) -> str:
    return f"scores-{fp}-{start:012d}-{stop:012d}.csv"


def parse_score_file_name(name: str) -> tuple[str, int, int] | None:
    match = SCORE_FILE.match(name)
    if not match:
        return None
    return match.group("fp"), int(match.group("start")), int(match.group("stop"))


def task_marker_name(start: int, stop: int) -> str:
    return f"{TASKS}/task-{start:012d}-{stop:012d}.json"


def is_run_file(name: str) -> bool:
    """The manifest, a score file or a task marker (not a temporary or foreign file)."""
    folder, _, base = name.rpartition("/")
    if folder == TASKS:
        return TASK_MARKER.match(base) is not None
    return not folder and (name == MANIFEST or SCORE_FILE.match(name) is not None)


class DamagedScoreFile(VmemError):
    """A score file that does not parse, does not hold exactly the rows its name claims, or holds
    values no scoring gives."""


def read_score_file(source: str | os.PathLike | bytes, name: str, start: int, stop: int,
                    settings: dict) -> pa.Table:
    """The score file's rows, checked: the run's columns, indices exactly [start, stop) in order,
    matches and prefix matches within 0..cont_len, and what ties them: prefix_match <= matches
    and score = matches / cont_len <= edit_similarity <= 1 (generation), memorized =
    prefix_match == cont_len (verification)."""
    expected, cont_len = columns(settings), settings["cont_len"]
    raw = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        # One thread: a score file is small, and Arrow's thread pool, started by a task that
        # only finds its slice finished, could still be starting when the process exits (an
        # abort at exit: "terminate called without an active exception", seen under Slurm).
        table = pacsv.read_csv(raw, read_options=pacsv.ReadOptions(use_threads=False),
                               convert_options=pacsv.ConvertOptions(
                                   column_types={c: column_type(c) for c in expected}))
    except (pa.ArrowInvalid, OSError) as err:
        reason = first_line(err)
        raise DamagedScoreFile(f"score file {name} does not parse ({reason})") from None
    if table.column_names != expected:
        raise DamagedScoreFile(f"score file {name} has columns {table.column_names}, expected "
                               f"{expected}")
    index = table["index"].to_numpy()
    if len(index) != stop - start or (len(index) and (
            index[0] != start or np.any(np.diff(index) != 1))):
        raise DamagedScoreFile(f"score file {name} does not hold exactly the rows [{start}, "
                               f"{stop}) its name claims ({len(index)} rows)")
    scored = _trained_rows(table, name) if TRAINED in expected else table
    if any(column.null_count for column in scored.columns):
        raise DamagedScoreFile(f"score file {name} has empty cells")
    counts = {c: scored[c].to_numpy() for c in expected
              if c == "matches" or c.startswith("prefix_match")}
    wrong = any(np.any(v < 0) or np.any(v > cont_len) for v in counts.values())
    if method(settings) == GENERATE:
        matches = counts["matches"]
        wrong = wrong or np.any(counts["prefix_match"] > matches) or not np.array_equal(
            scored["score"].to_numpy(), matches / cont_len)
        if "edit_similarity" in expected:  # Levenshtein never exceeds Hamming distance
            similarity = scored["edit_similarity"].to_numpy()
            wrong = wrong or np.any(similarity > 1) or np.any(similarity < matches / cont_len)
    elif "memorized" in expected:
        wrong = wrong or not np.array_equal(scored["memorized"].to_numpy(),
                                            counts["prefix_match"] == cont_len)
    if wrong:
        raise DamagedScoreFile(f"score file {name} holds values no scoring gives (counts "
                               f"outside 0..{cont_len}, or prefix_match, matches, score and "
                               f"memorized that disagree)")
    return table


def _trained_rows(table: pa.Table, name: str) -> pa.Table:
    """The rows of instances trained on; an untrained row (`trained` False) must hold no
    values, as it was never scored."""
    if table[TRAINED].null_count:
        raise DamagedScoreFile(f"score file {name} has empty cells in {TRAINED}")
    trained = table[TRAINED].to_numpy()
    for column in table.column_names:
        if column not in ("index", TRAINED) and not np.array_equal(
                table[column].is_null().to_numpy(), ~trained):
            raise DamagedScoreFile(f"score file {name}: {column} must be empty exactly in the "
                                   f"rows of instances never trained on ({TRAINED} false)")
    return table.filter(pa.array(trained))


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


def json_bytes(value: dict) -> bytes:
    """A manifest or marker as vmem writes them: indented, keys sorted."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(data: bytes, where: str) -> dict:
    """A run's manifest, checked for what every reader relies on: a JSON object whose settings
    hold the range [start, stop), and a fingerprint."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VmemError(f"{where}: not a readable JSON manifest ({err})") from None
    settings = manifest.get("settings") if isinstance(manifest, dict) else None
    if not (isinstance(settings, dict) and isinstance(settings.get("start"), int)
            and isinstance(settings.get("stop"), int)
            and isinstance(manifest.get("fingerprint"), str)):
        raise VmemError(f"{where}: not a vmem manifest (expected a JSON object with "
                        f"settings.start, settings.stop and a fingerprint)")
    return manifest


def finished_tasks(out: Location) -> set[tuple[int, int]]:
    """The slices whose completion markers are in the run folder `out` (one listing)."""
    return {(int(m["start"]), int(m["stop"]))
            for m in map(TASK_MARKER.match, out.child(TASKS).files()) if m}


class RunFolder:
    """OUT on local disk, or s3://bucket/prefix. Nothing is created in OUT before the first file
    is written into it.

    On S3 the objects are the run's only record: every read asks S3, and a file is staged on
    local disk only while it uploads (a temporary file under `staging_dir`, else the system's
    temporary folder, removed once the upload ends, succeeded or not). So nothing staged
    outlives a process, to shadow what S3 holds or to be uploaded again later; a file whose
    upload failed is scored again by the next start."""

    def __init__(self, out: str, *, staging_dir: str | None = None, s3_endpoint: str | None = None):
        self.out = out
        self.location = Location(out, s3_endpoint=s3_endpoint)
        self.s3_endpoint = s3_endpoint
        self.staging_dir = staging_dir

    def check_writable(self) -> None:
        """Fail now, not after an engine start, where OUT (or the folder it would be made in, or
        its bucket) cannot be written."""
        Output(self.out, s3_endpoint=self.s3_endpoint, flag="--out").check(folder=True)

    # -- manifest -----------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        """The manifest of the run this folder holds, if any."""
        data = self._read(MANIFEST)
        return None if data is None else parse_manifest(data, f"{self.out}/{MANIFEST}")

    def check_claim(self, manifest: dict, existing: dict | None) -> None:
        """Refuse a folder that holds another run (`existing` is its manifest), or the same run
        with weights other than it started with; writes nothing."""
        if existing is not None:
            diff = first_difference(existing.get("settings", {}), manifest["settings"])
            if diff:
                raise VmemError(f"--out {self.out} holds a run with different settings ({diff}); "
                                f"use another --out")
            check_unchanged(existing.get("weights"), manifest.get("weights"),
                            manifest["settings"]["model"])
            return
        foreign = {p[0] for p in map(parse_score_file_name, self.location.files()) if p}
        foreign.discard(manifest["fingerprint"])
        if foreign:
            raise VmemError(f"--out {self.out} holds score files of another run (fingerprint "
                            f"{sorted(foreign)[0]}) but no manifest; use another --out")

    def claim(self, manifest: dict) -> None:
        """Write the manifest, or check that the one there now (another task may have written
        it meanwhile) describes the same run."""
        existing = self.manifest()
        self.check_claim(manifest, existing)
        if existing is None:
            self._put(MANIFEST, json_bytes(manifest))

    # -- score files --------------------------------------------------------------------------
    def done_ranges(self, fp: str, settings: dict,
                    within: tuple[int, int]) -> list[tuple[int, int]]:
        """The ranges that sound score files cover. Those overlapping `within` are read and
        checked; a damaged one is removed (with a warning) so that its rows are scored again."""
        done = []
        for name in sorted(self.location.files()):
            parsed = parse_score_file_name(name)
            if not parsed or parsed[0] != fp:
                continue
            _, a, b = parsed
            if a < within[1] and b > within[0]:
                try:
                    read_score_file(self.location.read_bytes(name), name, a, b, settings)
                except DamagedScoreFile as err:
                    print(f"vmem: warning: {err}; removing it to score [{a}, {b}) again",
                          file=sys.stderr)
                    self.location.delete(name)
                    continue
            done.append((a, b))
        return merge_ranges(done)

    def write_score_file(self, fp: str, start: int, stop: int, data: bytes) -> None:
        self._put(score_file_name(fp, start, stop), data)

    # -- task markers ----------------------------------------------------------------------------
    def task_finished(self, start: int, stop: int) -> bool:
        return self.location.exists(task_marker_name(start, stop))

    def finish_task(self, start: int, stop: int, stats: dict) -> None:
        self._put(task_marker_name(start, stop), json_bytes(stats))

    # -- storage ---------------------------------------------------------------------------------
    def _put(self, name: str, data: bytes) -> None:
        if not self.location.remote:
            self.location.put_bytes(name, data)  # atomic
            return
        if self.staging_dir:
            os.makedirs(self.staging_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix="vmem-staging-", dir=self.staging_dir) as staged:
            staged.write(data)
            staged.flush()
            self.location.put_file(name, staged.name)

    def _read(self, name: str) -> bytes | None:
        """The file's bytes, or None where it is absent."""
        return self.location.read_bytes(name) if self.location.exists(name) else None
