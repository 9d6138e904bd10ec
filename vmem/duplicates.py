"""`vmem duplicates`: how often each sequence's continuation occurs in the training data.

source (dataset) → index (tokengrams suffix tables, built once into a folder) → one count per
window → durable chunk files → one table.

Two definitions of a count (`DEFINITIONS`), its own occurrence included in both:
- stream: the concatenation of all rows of the dataset, in order; a window is counted at any
  alignment, across row ends too.
- rows: semantic-memorization's: windows inside one row at offsets 0 … seq_len - cont_len - 1
  (its loop `range(2049 - 32)`: the row's last window is not counted), over rows
  [0, ROWS_COUNTED) (all rows of a dataset that has fewer). Its index is the stream's, built
  over a copy of those rows whose last token is the token type's largest id (the manifest's
  `separator`; see `_mark_row_ends`).

The index is one suffix table per part of the stream:
one part for a merged, raw or .npy dataset, one per shard of a sharded one. A part's tokens run on
`cont_len - 1` tokens into the next part, so a window across a boundary lies whole in exactly
one part (an overlap of n - 1 tokens holds no whole n-gram): the sum over parts is exact.

    INDEX/manifest.json            what the index was built from (checked on every use)
    INDEX/part-KKKKK.tokens        a part's tokens, where the dataset has no such local file
    INDEX/part-KKKKK.table         its suffix table (tokengrams: 8 bytes a token)
    INDEX/part-KKKKK.counts.npy    token id counts over the part's own tokens (overlap excluded)
    INDEX/part-KKKKK.json          the part is built (written last)
    INDEX/token_counts.npy         the count of every token id over the whole stream

    COUNTS.parquet.parts/settings.json, counts-<start>-<stop>.parquet: chunks until assembled
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vmem.data import (
    Dataset,
    check_lengths,
    check_window,
    iter_batches,
    manifest_entry,
    open_dataset,
    resolve_range,
)
from vmem.errors import VmemError, first_line
from vmem.io.atomic import atomic_path, write_atomic
from vmem.io.location import Output, is_s3
from vmem.pythia import FINAL_STEP, SEQUENCES_PER_STEP
from vmem.runs.folder import first_difference, gaps, json_bytes, merge_ranges
from vmem.runs.slicing import task_from_env, task_slice

VOCAB = {"uint16": 2**16, "uint32": 2**32}  # the token files tokengrams reads
TABLE_BYTES = 8  # a suffix table entry per token
MANIFEST = "manifest.json"
TOKEN_COUNTS = "token_counts.npy"
COLUMNS = ["index", "count", "freq_min", "freq_median", "freq_max"]
METADATA_KEY = b"vmem.duplicates"  # the counting settings, in the table's schema metadata
DEFAULT_CHUNK = 65536  # windows per durable chunk file
READ_ROWS = 4096  # rows read at a time while copying tokens or counting token ids
ROWS_COUNTED = FINAL_STEP * SEQUENCES_PER_STEP  # the rows semantic-memorization counted over
DEFINITIONS = {
    "stream": "windows anywhere in the token stream, across row ends too",
    "rows": f"windows inside rows at offsets 0 … seq_len − cont_len − 1 (the row's last "
            f"window not), over rows [0, {ROWS_COUNTED:,}) or all rows of data that has fewer "
            f"(semantic-memorization's)",
}


@dataclass(frozen=True)
class Counting:
    """Everything `vmem duplicates` needs; the CLI fills it from its flags."""

    data: str
    index: str
    output: str
    start: int | None = None
    stop: int | None = None
    checkpoint: int | None = None
    sequences_per_step: int | None = None  # the order's own, else Pythia's
    offset: int = 0
    prompt_len: int = 32
    cont_len: int = 32
    seq_len: int | None = None
    data_dtype: str | None = None
    s3_endpoint: str | None = None
    task_id: int | None = None
    num_tasks: int | None = None
    progress: bool = True
    chunk_size: int = DEFAULT_CHUNK
    definition: str = "stream"  # a key of DEFINITIONS


# --- the index -----------------------------------------------------------------------------------

def with_definition(written: object) -> object:
    """An index manifest or counting settings as read: those written before there were two
    definitions counted the stream."""
    return {"definition": "stream", **written} if isinstance(written, dict) else written


def _part_name(number: int, suffix: str) -> str:
    return f"part-{number:05d}.{suffix}"


def rows_counted(dataset: Dataset, definition: str) -> int:
    """The rows [0, N) whose windows the definition counts."""
    if definition not in DEFINITIONS:
        raise VmemError(f"--definition {definition}: expected {' or '.join(DEFINITIONS)}")
    if definition == "rows":
        return min(dataset.num_sequences, ROWS_COUNTED)
    return dataset.num_sequences


def plan_index(dataset: Dataset, cont_len: int, definition: str = "stream") -> dict:
    """The manifest of the index of `dataset` for windows of `cont_len` tokens counted by
    `definition`: its parts, each a token range of the stream [start, stop) (overlap included)
    and the file holding it."""
    dtype = np.dtype(dataset.dtype).name
    if dtype not in VOCAB:
        raise VmemError(f"{dataset.location}: tokens are {dtype}; the duplicate index "
                        f"(tokengrams) takes uint16 or uint32 tokens")
    itemsize = np.dtype(dtype).itemsize
    # A mapped order (index maps, parquet) has no files of rows: one part, copied in row order.
    pieces = dataset.pieces or [None]
    sizes = ([piece.size for piece in dataset.pieces] if dataset.pieces
             else [dataset.num_sequences * dataset.seq_len * itemsize])
    starts = np.cumsum([0, *sizes])
    if any(start % itemsize for start in starts):
        raise VmemError(f"{dataset.location}: a shard ends inside a {dtype} token "
                        f"({sizes[0]} bytes); cannot index its shards one by one")
    overlap = cont_len - 1 if len(sizes) > 1 else 0
    rows = rows_counted(dataset, definition)
    total = rows * dataset.seq_len
    parts = []
    for k, piece in enumerate(pieces):
        start, end = int(starts[k]) // itemsize, int(starts[k + 1]) // itemsize
        if start >= total:  # past the rows counted
            break
        stop = min(end + overlap, total)
        # tokengrams maps a local file of tokens alone (no .npy header) in place; else a copy
        # (always for rows: its row ends are marked).
        own = (definition == "stream" and piece is not None and stop == end
               and not is_s3(piece.path) and piece.offset == 0)
        parts.append({"start": start, "stop": stop, "own_stop": min(end, total),
                      "tokens": os.path.abspath(piece.path) if own else _part_name(k, "tokens")})
    data = dict(manifest_entry(dataset), file_sizes=sizes)
    manifest = {"format": 1, "tokengrams": version("tokengrams"), "data": data,
                "vocab": VOCAB[dtype], "cont_len": cont_len if overlap else None,
                "overlap": overlap, "definition": definition, "parts": parts}
    if definition == "rows":
        manifest.update(rows=rows, separator=VOCAB[dtype] - 1)
    return manifest


def _itemsize(manifest: dict) -> int:
    """Bytes per token of the index's token files (uint16 or uint32, from its vocabulary)."""
    return 2 if manifest["vocab"] == VOCAB["uint16"] else 4


def _copied(part: dict) -> bool:
    return not os.path.isabs(part["tokens"])


def _tokens_path(index: str, part: dict) -> str:
    return part["tokens"] if not _copied(part) else os.path.join(index, part["tokens"])


def check_index_folder(index: str, planned: dict) -> None:
    """Refuse an index folder that is not this dataset's, or was built for another overlap."""
    if is_s3(index):
        raise VmemError(f"--index {index}: expected a local folder (tokengrams memory-maps its "
                        f"files)")
    path = os.path.join(index, MANIFEST)
    if not os.path.exists(path):
        # Dot files are locks and temporary files: another task may be starting this index.
        if os.path.isdir(index) and any(not n.startswith(".") for n in os.listdir(index)):
            raise VmemError(f"--index {index}: holds files but no {MANIFEST}, so it is no "
                            f"duplicate index (or a damaged one); name a new or empty folder")
        return
    try:
        existing = json.loads(open(path, "rb").read())
    except (OSError, ValueError):
        existing = None
    if not (isinstance(existing, dict) and isinstance(existing.get("data"), dict)
            and isinstance(existing.get("parts"), list)):
        raise VmemError(f"{path}: not a duplicate index manifest; the index is damaged: "
                        f"remove {index} and build it again")
    existing = with_definition(existing)
    if existing["data"] != planned["data"]:
        raise VmemError(f"--index {index}: an index of {existing['data'].get('location')}, not "
                        f"of {planned['data']['location']} "
                        f"({first_difference(existing['data'], planned['data'])}); name another "
                        f"--index folder")
    if existing["definition"] != planned["definition"]:
        raise VmemError(f"--index {index}: built for --definition {existing['definition']}; "
                        f"--definition {planned['definition']} needs an index of its own "
                        f"(another --index)")
    if existing.get("overlap") != planned["overlap"]:
        raise VmemError(f"--index {index}: built for --cont-len {existing.get('cont_len')} (its "
                        f"shards overlap by {existing.get('overlap')} tokens); --cont-len "
                        f"{planned['cont_len']} needs an index of its own (another --index)")
    difference = first_difference(existing, planned)
    if difference:
        raise VmemError(f"--index {index}: built differently ({difference}); name another "
                        f"--index folder")


def _built(index: str, manifest: dict, k: int) -> bool:
    """Part k is built: its marker exists and its files have their sizes (else one line)."""
    if not os.path.exists(os.path.join(index, _part_name(k, "json"))):
        return False
    part = manifest["parts"][k]
    tokens = part["stop"] - part["start"]
    itemsize = _itemsize(manifest)
    expected = [(os.path.join(index, _part_name(k, "table")), tokens * TABLE_BYTES),
                (os.path.join(index, _part_name(k, "counts.npy")), None)]
    if _copied(part):
        expected.append((_tokens_path(index, part), tokens * itemsize))
    for path, size in expected:
        found = os.path.getsize(path) if os.path.exists(path) else None
        if found is None or (size is not None and found != size):
            what = "missing" if found is None else f"{found} bytes, expected {size}"
            raise VmemError(f"{path}: {what}; the index is damaged: remove {index} and build it "
                            f"again")
    return True


def build_index(dataset: Dataset, index: str, cont_len: int, *, definition: str = "stream",
                part: int | None = None, progress: bool = True) -> dict:
    """Build the parts of the index not yet built (only `part` where given) into `index`, after
    saying how big they are and checking the disk holds them. Returns the manifest."""
    manifest = plan_index(dataset, cont_len, definition)
    check_index_folder(index, manifest)
    parts = manifest["parts"]
    if part is not None and not 0 <= part < len(parts):
        raise VmemError(f"--shard {part}: {dataset.location} has {len(parts)} index parts "
                        f"(0..{len(parts) - 1})")
    wanted = range(len(parts)) if part is None else [part]
    todo = [k for k in wanted if not _built(index, manifest, k)]
    if todo:
        _check_space(index, manifest, todo)
        os.makedirs(index, exist_ok=True)
        if not os.path.exists(os.path.join(index, MANIFEST)):
            write_atomic(os.path.join(index, MANIFEST), json_bytes(manifest))
        for k in todo:
            with _part_lock(index, k):
                if _built(index, manifest, k):  # by a task that held the lock before this one
                    print(f"vmem: index part {k} was built meanwhile by another task; reusing "
                          f"it", file=sys.stderr)
                else:
                    _build_part(dataset, index, manifest, k, progress)
    if all(_built(index, manifest, k) for k in range(len(parts))):
        _save_token_counts(index, manifest)
    return manifest


@contextmanager
def _part_lock(index: str, k: int):
    """Held while part k is built: tasks started together on one index wait for each other
    instead of building the part twice (and removing each other's temporary files). The kernel
    releases the lock of a killed task."""
    with open(os.path.join(index, f".{_part_name(k, 'lock')}"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_space(index: str, manifest: dict, todo: list[int]) -> None:
    itemsize = _itemsize(manifest)
    parts = [manifest["parts"][k] for k in todo]
    tokens = sum(p["stop"] - p["start"] for p in parts)
    copies = sum((p["stop"] - p["start"]) * itemsize for p in parts if _copied(p))
    need = tokens * TABLE_BYTES + copies
    probe = os.path.abspath(index)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    size = (f"{len(parts)} of {len(manifest['parts'])} index parts: {tokens:,} tokens x 8 bytes "
            f"= {tokens * TABLE_BYTES / 1e9:.3f} GB of suffix tables + {copies / 1e9:.3f} GB of "
            f"token copies = {need / 1e9:.3f} GB")
    if need > free:
        raise VmemError(f"--index {index}: {size}, but its disk has {free / 1e9:.3f} GB free; "
                        f"nothing was written")
    print(f"vmem: building {size} into {index} ({free / 1e9:.1f} GB free)", file=sys.stderr)


def _stream(dataset: Dataset, start: int, stop: int):
    """The stream's tokens [start, stop) in blocks of at most READ_ROWS rows."""
    seq_len = dataset.seq_len
    for first in range(start // seq_len, -(-stop // seq_len), READ_ROWS):
        last = min(first + READ_ROWS, -(-stop // seq_len))
        block = dataset.read(first, last).reshape(-1)
        yield block[max(start - first * seq_len, 0):stop - first * seq_len]


def _build_part(dataset: Dataset, index: str, manifest: dict, k: int, progress: bool) -> None:
    part = manifest["parts"][k]
    for leftover in glob.glob(os.path.join(glob.escape(index), f".part-{k:05d}.*.tmp")):
        os.unlink(leftover)  # what a killed build left
    started = time.time()
    tokens = part["stop"] - part["start"]
    bar = _bar(progress, tokens, "tok", f"vmem duplicates: index part {k} tokens")
    counts = np.zeros(0, dtype=np.int64)
    with atomic_path(_tokens_path(index, part)) if _copied(part) else nullcontext() as tmp:
        out = open(tmp, "wb") if tmp else None
        at = part["start"]
        for block in _stream(dataset, part["start"], part["stop"]):
            own = block[:max(part["own_stop"] - at, 0)]
            found = np.bincount(own, minlength=len(counts))
            found[:len(counts)] += counts
            counts = found
            if out:
                if manifest["definition"] == "rows":
                    block = _mark_row_ends(block, at, dataset.seq_len, manifest["separator"])
                out.write(block.astype(block.dtype.newbyteorder("<"), copy=False).tobytes())
            at += len(block)
            if bar:
                bar.update(len(block))
        if out:
            out.close()
    if bar:
        bar.close()
    _sort(_tokens_path(index, part), os.path.join(index, _part_name(k, "table")),
          manifest["vocab"], progress)
    with atomic_path(os.path.join(index, _part_name(k, "counts.npy"))) as tmp, \
            open(tmp, "wb") as f:
        np.save(f, counts)
    seconds = time.time() - started
    write_atomic(os.path.join(index, _part_name(k, "json")), json_bytes(
        {"start": part["start"], "stop": part["stop"], "seconds": round(seconds, 3)}))
    print(f"vmem: index part {k} of {len(manifest['parts'])} ({tokens:,} tokens) built in "
          f"{seconds:.1f} s", file=sys.stderr)


def _mark_row_ends(block: np.ndarray, at: int, seq_len: int, separator: int) -> np.ndarray:
    """The stream's tokens [at, at + len(block)) with each row's last token replaced by
    `separator`. Why the count of a window w free of the separator (`_count` refuses others) in
    this stream M is exactly the rows definition's: a window of M equal to w holds no separator,
    so no row's last token: it lies inside one row's first seq_len - 1 tokens, where M is the
    data, i.e. it starts at an offset j with j + n <= seq_len - 1, j <= seq_len - n - 1.
    Conversely every window of the data at such an offset is unchanged in M. The windows at
    offset seq_len - n and those across a row end hold a separator, so equal no w."""
    marked = block.copy()
    marked[(seq_len - 1 - at) % seq_len::seq_len] = separator
    return marked


def _sort(tokens_path: str, table_path: str, vocab: int, progress: bool) -> None:
    import tokengrams

    with atomic_path(table_path) as tmp, _stdout_to_stderr(progress):
        tokengrams.MemmapIndex.build(tokens_path, tmp, vocab=vocab, verbose=progress)


@contextmanager
def _stdout_to_stderr(keep: bool):
    """tokengrams prints its stages on stdout (even when not verbose): send them to stderr as
    progress, or nowhere, so that stdout stays vmem's."""
    sys.stdout.flush()
    saved = os.dup(1)
    target = os.dup(2) if keep else os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(target, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


def _save_token_counts(index: str, manifest: dict) -> None:
    path = os.path.join(index, TOKEN_COUNTS)
    if os.path.exists(path):
        return
    parts = [np.load(os.path.join(index, _part_name(k, "counts.npy")))
             for k in range(len(manifest["parts"]))]
    total = np.zeros(max(len(p) for p in parts), dtype=np.int64)
    for counts in parts:
        total[:len(counts)] += counts
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, total)


def token_counts(index: str) -> np.ndarray:
    """The count of every token id over the whole stream (int64, indexed by id)."""
    try:
        return np.load(os.path.join(index, TOKEN_COUNTS))
    except (OSError, ValueError) as err:
        raise VmemError(f"{os.path.join(index, TOKEN_COUNTS)}: cannot read "
                        f"({first_line(err)}); the index is damaged: remove {index} and build "
                        f"it again") from None


def open_index(index: str, manifest: dict):
    """The built index as one tokengrams index whose counts sum over the parts."""
    import tokengrams

    paths = [(_tokens_path(index, p), os.path.join(index, _part_name(k, "table")))
             for k, p in enumerate(manifest["parts"])]
    return tokengrams.ShardedMemmapIndex(paths, vocab=manifest["vocab"])


# --- counting ------------------------------------------------------------------------------------

def _settings(dataset: Dataset, c: Counting, start: int, stop: int) -> dict:
    settings = {"data": manifest_entry(dataset), "start": start, "stop": stop,
                "offset": c.offset, "prompt_len": c.prompt_len, "cont_len": c.cont_len,
                "definition": c.definition}
    if c.definition == "rows":
        settings["rows"] = rows_counted(dataset, c.definition)
    return settings


def check_definition(dataset: Dataset, c: Counting, stop: int) -> None:
    """Under the rows definition, every window counted must be one it counts: inside the rows
    counted, ending before its row's last token (so it is counted at least once, itself)."""
    rows = rows_counted(dataset, c.definition)  # also checks the definition's name
    if c.definition != "rows":
        return
    first = c.offset + c.prompt_len
    if first + c.cont_len > dataset.seq_len - 1:
        raise VmemError(f"--definition rows: counts windows at offsets 0 … "
                        f"{dataset.seq_len - c.cont_len - 1} of a row; the continuation starts "
                        f"at {first}: use --definition stream")
    if stop > rows:
        raise VmemError(f"--definition rows: counts over rows [0, {rows}); the range ends at "
                        f"{stop}")


def _check_output(output: str) -> None:
    target = Output(output, local_only="its chunks are kept beside it until the last task "
                                       "assembles them; copy the table to S3 afterwards")
    if not output.endswith(".parquet"):
        raise VmemError(f"-o {output}: expected a local FILE.parquet")
    target.check()


def _finished(output: str, settings: dict) -> bool:
    """The output exists with these settings (else absent, or refused in one line)."""
    if not os.path.exists(output):
        return False
    try:
        meta = pq.read_schema(output).metadata or {}
        found = with_definition(json.loads(meta[METADATA_KEY]))
    except (OSError, pa.ArrowException, KeyError, ValueError):
        raise VmemError(f"-o {output}: exists and is no vmem duplicates table; choose another "
                        f"file or remove it") from None
    if found != settings:
        raise VmemError(f"-o {output}: holds counts of other settings "
                        f"({first_difference(found, settings)}); choose another file or "
                        f"remove it")
    return True


def count_duplicates(c: Counting) -> str:
    """Count (or resume counting) this task's slice of the range; once the whole range is
    counted, write the table. Returns the output's path."""
    _check_output(c.output)
    if c.chunk_size < 1:
        raise VmemError(f"--chunk-size {c.chunk_size}: expected a positive number")
    dataset = open_dataset(c.data, seq_len=c.seq_len, dtype=c.data_dtype,
                           s3_endpoint=c.s3_endpoint)
    start, stop = resolve_range(dataset, c.start, c.stop, checkpoint=c.checkpoint,
                                sequences_per_step=c.sequences_per_step)
    check_window(dataset, c.prompt_len, c.cont_len, c.offset)
    # Windows in padding are never scored, so never counted either.
    check_lengths(dataset, start, stop, c.offset + c.prompt_len + c.cont_len)
    check_definition(dataset, c, stop)
    lo, hi = task_slice(start, stop, *task_from_env(c.task_id, c.num_tasks))
    settings = _settings(dataset, c, start, stop)
    if _finished(c.output, settings):
        print(f"vmem: {c.output} is already finished", file=sys.stderr)
        return c.output
    work = c.output + ".parts"
    claimed = _check_work(work, settings)  # before the index is built: it may take hours
    manifest = build_index(dataset, c.index, c.cont_len, definition=c.definition,
                           progress=c.progress)
    if not claimed:
        write_atomic(os.path.join(work, "settings.json"), json_bytes(settings))
    done = _done_ranges(work, lo, hi)
    todo = gaps(lo, hi, done)
    if todo:
        _count(dataset, c, manifest, work, todo, hi - lo)
    covered = gaps(start, stop, _done_ranges(work, start, stop))
    if covered:
        left = sum(b - a for a, b in covered)
        print(f"vmem: counted [{lo}, {hi}); {left:,} sequences of [{start}, {stop}) are left to "
              f"other tasks: the last to finish writes {c.output}", file=sys.stderr)
        return c.output
    _assemble(work, c.output, settings)
    return c.output


def _check_work(work: str, settings: dict) -> bool:
    """Whether the work folder is claimed for these settings (refused where for others)."""
    path = os.path.join(work, "settings.json")
    if not os.path.exists(path):
        return False
    try:
        found = with_definition(json.loads(open(path, "rb").read()))
    except (OSError, ValueError):
        found = None
    if found != settings:
        difference = first_difference(found, settings) if isinstance(found, dict) else "unreadable"
        raise VmemError(f"{work}: holds counts of other settings ({difference}); remove it or "
                        f"choose another -o")
    return True


def _chunk_name(start: int, stop: int) -> str:
    return f"counts-{start:012d}-{stop:012d}.parquet"


def _chunks(work: str) -> list[tuple[int, int]]:
    found = []
    for name in os.listdir(work):
        if name.startswith("counts-") and name.endswith(".parquet"):
            a, b = name[len("counts-"):-len(".parquet")].split("-")
            found.append((int(a), int(b)))
    return sorted(found)


def _read_chunk(work: str, a: int, b: int) -> pa.Table | None:
    """A chunk's rows, or None (with a warning, the file removed) where it is damaged."""
    path = os.path.join(work, _chunk_name(a, b))
    try:
        table = pq.read_table(path)
        index = table["index"].to_numpy()
        sound = (table.column_names == COLUMNS and np.array_equal(index, np.arange(a, b))
                 and table["count"].to_numpy().min() >= 1)
    except (OSError, pa.ArrowException, KeyError) as err:
        sound, why = False, first_line(err)
    else:
        why = "not the rows its name claims"
    if sound:
        return table
    print(f"vmem: warning: {path} is damaged ({why}); counting it again", file=sys.stderr)
    os.unlink(path)
    return None


def _done_ranges(work: str, lo: int, hi: int) -> list[tuple[int, int]]:
    return merge_ranges([(a, b) for a, b in _chunks(work) if a < hi and b > lo
                         and _read_chunk(work, a, b) is not None])


def _count(dataset: Dataset, c: Counting, manifest: dict, work: str,
           todo: list[tuple[int, int]], total: int) -> None:
    index = open_index(c.index, manifest)
    frequencies = token_counts(c.index)
    remaining = sum(b - a for a, b in todo)
    bar = _bar(c.progress, total, "seq", "vmem duplicates", initial=total - remaining)
    started = time.time()
    for a, b in todo:
        for batch in iter_batches(dataset, a, b, rows=c.chunk_size, prompt_len=c.prompt_len,
                                  cont_len=c.cont_len, offset=c.offset):
            windows = batch.continuations
            if manifest["definition"] == "rows":  # before the chunk: those written are right
                held = (windows == manifest["separator"]).any(axis=1)
                if held.any():
                    raise VmemError(f"--definition rows: the window of sequence "
                                    f"{int(batch.indices[np.argmax(held)])} holds token id "
                                    f"{manifest['separator']}, which the rows index marks row "
                                    f"ends with; count it with --definition stream")
            counts = np.fromiter(map(index.count, windows.tolist()), dtype=np.int64,
                                 count=len(windows))
            if counts.min() < 1:  # every window occurs at least where it was read
                missing = int(batch.indices[np.argmin(counts)])
                raise VmemError(f"--index {c.index}: does not hold the window of sequence "
                                f"{missing}; the index does not match {c.data}: remove it and "
                                f"build it again")
            freqs = frequencies[windows]
            table = pa.table({"index": batch.indices, "count": counts,
                              "freq_min": freqs.min(axis=1),
                              "freq_median": np.median(freqs, axis=1).astype(np.float64),
                              "freq_max": freqs.max(axis=1)})
            first, last = int(batch.indices[0]), int(batch.indices[-1]) + 1
            with atomic_path(os.path.join(work, _chunk_name(first, last))) as tmp:
                pq.write_table(table, tmp)
            if bar:
                bar.update(len(windows))
    if bar:
        bar.close()
    seconds = time.time() - started
    print(f"vmem: counted {remaining:,} windows in {seconds:.1f} s "
          f"({remaining / max(seconds, 1e-9):,.0f} windows/s)", file=sys.stderr)


def _assemble(work: str, output: str, settings: dict) -> None:
    tables = [_read_chunk(work, a, b) for a, b in _chunks(work)
              if a < settings["stop"] and b > settings["start"]]
    if any(t is None for t in tables):
        raise VmemError(f"{work}: a chunk was damaged while the table was assembled; run the "
                        f"same command again")
    table = pa.concat_tables(tables).sort_by("index")
    index = table["index"].to_numpy()
    keep = np.flatnonzero(np.diff(index, prepend=-1) != 0)  # chunks of other slicings overlap
    table = table.take(pa.array(keep))
    table = table.filter(pc.and_(pc.greater_equal(table["index"], settings["start"]),
                                 pc.less(table["index"], settings["stop"])))
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(settings, sort_keys=True)})
    with atomic_path(output) as tmp:
        pq.write_table(table, tmp)
    shutil.rmtree(work)
    print(f"vmem: {len(table):,} duplicate counts of [{settings['start']}, {settings['stop']}) "
          f"→ {output}", file=sys.stderr)


def _bar(progress: bool, total: int, unit: str, desc: str, initial: int = 0):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, unit_scale=True, desc=desc,
                smoothing=0.1)
