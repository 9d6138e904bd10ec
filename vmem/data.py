"""Token datasets (merged, sharded, raw; local or S3), step ↔ index arithmetic, prefetched batches.

Every layout is a byte stream of N fixed-length rows split over one or more files ("pieces"):
a merged `.bin`, Pythia's published shards (a row may straddle two of them) or a headerless raw
`.bin`. Local files are memory-mapped and S3 objects are read with byte-range GETs, so a read
touches only the rows it asks for.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, islice

import numpy as np

from vmem import mmidx, s3
from vmem.errors import VmemError
from vmem.pythia import SEQUENCES_PER_STEP

RAW_SEQ_LEN = 2049  # Pythia's rows: 2048 inputs + 1 shifted target
RAW_DTYPE = "uint16"
DUMP_ROWS = 4096  # rows copied at a time by `vmem data dump`

_SHARD = re.compile(r"^(?P<name>.+)-(?P<number>\d{5})-of-(?P<last>\d{5})\.bin$")


# --- where the bytes are: the local file system or S3 -------------------------------------------

class _LocalStore:
    every_entry = True  # reading a whole local .idx to validate it is cheap enough

    def files(self, folder: str) -> dict[str, int]:
        """Name → size of the files directly in `folder` ({} if there is no such folder)."""
        try:
            with os.scandir(folder) as entries:
                return {e.name: e.stat().st_size for e in entries if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as err:
            raise VmemError(f"{folder}: cannot list the folder ({err.strerror})") from None

    def reader(self, path: str) -> mmidx.ReadBytes:
        try:
            mapped = np.memmap(path, dtype=np.uint8, mode="r")
        except OSError as err:
            raise VmemError(f"{path}: cannot read ({err.strerror})") from None
        return lambda start, stop: mapped[start:stop]


class _S3Store:
    every_entry = False  # Pythia's .idx is 1.75 GB: check a sample of it (see mmidx.read_index)

    def __init__(self, endpoint: str | None):
        self.client = s3.client(endpoint)

    def files(self, folder: str) -> dict[str, int]:
        bucket, key = s3.parse_s3_url(folder)
        prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
        listing = s3.list_objects(self.client, bucket, prefix, recursive=False)
        return {k[len(prefix):]: size for k, size in listing.items()}

    def reader(self, path: str) -> mmidx.ReadBytes:
        bucket, key = s3.parse_s3_url(path)
        return lambda start, stop: np.frombuffer(
            s3.get_range(self.client, bucket, key, start, stop), dtype=np.uint8)


# --- the dataset ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Piece:
    path: str
    size: int
    read: mmidx.ReadBytes


@dataclass(eq=False)
class Dataset:
    layout: str  # "merged" | "sharded" | "raw"
    location: str
    files: list[str]
    num_sequences: int
    seq_len: int
    dtype: np.dtype
    pieces: list[_Piece] = field(repr=False)

    def __post_init__(self):
        self._row_bytes = self.seq_len * self.dtype.itemsize
        self._piece_starts = list(accumulate((p.size for p in self.pieces), initial=0))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as an array of shape (stop - start, seq_len) and the file's dtype."""
        return np.array(self._rows(start, stop))

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Like `read`, but a read-only view into the memory map when the rows lie in one file."""
        if not 0 <= start <= stop <= self.num_sequences:
            raise VmemError(f"rows [{start}, {stop}) are outside {self.location}, which has "
                            f"{self.num_sequences} sequences")
        first, last = start * self._row_bytes, stop * self._row_bytes
        parts = [piece.read(max(first, at) - at, min(last, at + piece.size) - at)
                 for piece, at in zip(self.pieces, self._piece_starts, strict=False)
                 if at < last and first < at + piece.size]
        if not parts:
            return np.empty((0, self.seq_len), dtype=self.dtype)
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return data.view(self.dtype).reshape(stop - start, self.seq_len)


def open_dataset(path: str | os.PathLike, *, seq_len: int | None = None,
                 dtype: str | np.dtype | None = None, s3_endpoint: str | None = None) -> Dataset:
    """Open a merged prefix (`P`, `P.bin`, `P.idx`), a shard, a folder of shards + `.idx`, or,
    when `seq_len` or `dtype` is given, a headerless raw `.bin`; locally or at `s3://`."""
    path = os.fspath(path)
    if s3.is_s3(path):
        store = _S3Store(s3_endpoint)
        bucket, key = s3.parse_s3_url(path)
        path = s3.s3_url(bucket, key.rstrip("/"))  # the bucket itself keeps its "/": a folder
    else:
        store = _LocalStore()
        path = os.path.abspath(os.path.expanduser(path))
    if seq_len is not None or dtype is not None:
        return _open_raw(store, path, RAW_SEQ_LEN if seq_len is None else seq_len,
                         RAW_DTYPE if dtype is None else dtype)
    folder, name = posixpath.split(path)
    if name:
        if shard := _SHARD.match(name):
            return _open_sharded(store, folder, shard["name"], int(shard["last"]))
        if name.endswith((".bin", ".idx")):
            return _open_merged(store, folder, name[:-4])
        listing = store.files(folder)
        if name + ".idx" in listing or name + ".bin" in listing:
            return _open_merged(store, folder, name, listing)
    inside = store.files(path)  # a folder: one shard set, or one merged pair
    sets = sorted({(m["name"], int(m["last"])) for m in map(_SHARD.match, inside) if m})
    if len(sets) > 1:
        names = ", ".join(mmidx.shard_name(n, 0, last) for n, last in sets)
        raise VmemError(f"{path}: holds several shard sets ({names}); name one shard of them")
    if sets:
        return _open_sharded(store, path, *sets[0], inside)
    indexes = [n for n in inside if n.endswith(".idx")]
    if len(indexes) == 1:
        return _open_merged(store, path, indexes[0][:-4], inside)
    raise VmemError(f"{path}: no dataset found (expected PREFIX.bin + PREFIX.idx, a folder of "
                    f"document-NNNNN-of-LLLLL.bin shards with document.idx, or --seq-len for a "
                    f"headerless .bin)")


def _read_index(store, path: str, size: int) -> mmidx.Index:
    return mmidx.read_index(store.reader(path), size, path, every_entry=store.every_entry)


def _open_merged(store, folder: str, name: str, listing: dict[str, int] | None = None) -> Dataset:
    listing = store.files(folder) if listing is None else listing
    idx_path, bin_path = (posixpath.join(folder, name + ext) for ext in (".idx", ".bin"))
    for path in (idx_path, bin_path):
        if posixpath.basename(path) not in listing:
            raise VmemError(f"{path}: not found (a merged dataset is PREFIX.bin + PREFIX.idx; "
                            f"for a headerless .bin give --seq-len)")
    index = _read_index(store, idx_path, listing[name + ".idx"])
    size = listing[name + ".bin"]
    if size != index.data_bytes:
        hint = " (truncated download?)" if size < index.data_bytes else ""
        raise VmemError(f"{bin_path}: {size} bytes, but {idx_path} describes "
                        f"{index.num_sequences} sequences x {index.seq_len} tokens x "
                        f"{index.dtype.itemsize} bytes = {index.data_bytes} bytes{hint}")
    return Dataset("merged", posixpath.join(folder, name), [idx_path, bin_path],
                   index.num_sequences, index.seq_len, index.dtype,
                   [_Piece(bin_path, size, store.reader(bin_path))])


def _open_sharded(store, folder: str, name: str, last: int,
                  listing: dict[str, int] | None = None) -> Dataset:
    listing = store.files(folder) if listing is None else listing
    idx_path = posixpath.join(folder, name + ".idx")
    if name + ".idx" not in listing:
        raise VmemError(f"{idx_path}: not found (the shards {mmidx.shard_name(name, 0, last)} "
                        f"... need it beside them)")
    shards = [mmidx.shard_name(name, k, last) for k in range(last + 1)]
    missing = [s for s in shards if s not in listing]
    if missing:
        raise VmemError(f"{posixpath.join(folder, missing[0])}: missing from the shard set "
                        f"({len(missing)} of {last + 1} shards missing)")
    index = _read_index(store, idx_path, listing[name + ".idx"])
    shard_bytes = listing[shards[0]]  # every shard but the last has shard 0's size
    for shard in shards[1:-1]:
        if listing[shard] != shard_bytes:
            raise VmemError(f"{posixpath.join(folder, shard)}: {listing[shard]} bytes, but "
                            f"{shards[0]} has {shard_bytes}; every shard but the last must "
                            f"have the same size")
    last_bytes = index.data_bytes - last * shard_bytes
    if not 0 < last_bytes <= shard_bytes:
        raise VmemError(f"{idx_path}: describes {index.data_bytes} bytes of sequences, which "
                        f"{last + 1} shards of {shard_bytes} bytes (the size of {shards[0]}) "
                        f"cannot hold exactly")
    if listing[shards[-1]] != last_bytes:
        hint = " (truncated download?)" if listing[shards[-1]] < last_bytes else ""
        raise VmemError(f"{posixpath.join(folder, shards[-1])}: {listing[shards[-1]]} bytes, "
                        f"expected {last_bytes} to complete the {index.data_bytes} bytes "
                        f"{idx_path} describes{hint}")
    paths = [posixpath.join(folder, s) for s in shards]
    return Dataset("sharded", folder, [idx_path, *paths], index.num_sequences, index.seq_len,
                   index.dtype, [_Piece(p, listing[s], store.reader(p))
                                 for p, s in zip(paths, shards, strict=True)])


def _open_raw(store, path: str, seq_len: int, dtype: str | np.dtype) -> Dataset:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise VmemError(f"--data-dtype {dtype}: not a numpy dtype name (e.g. uint16)") from None
    if dtype.kind not in "iu":
        raise VmemError(f"--data-dtype {dtype}: token ids need an integer dtype (e.g. uint16)")
    if seq_len <= 0:
        raise VmemError(f"--seq-len {seq_len}: must be a positive number of tokens")
    size = store.files(posixpath.dirname(path)).get(posixpath.basename(path))
    if size is None:
        raise VmemError(f"{path}: not found (a raw dataset is one headerless .bin file)")
    row_bytes = seq_len * dtype.itemsize
    if size == 0 or size % row_bytes:
        raise VmemError(f"{path}: {size} bytes is not a whole number of rows of {seq_len} "
                        f"{dtype} tokens ({row_bytes} bytes each); check --seq-len and "
                        f"--data-dtype")
    return Dataset("raw", path, [path], size // row_bytes, seq_len, dtype,
                   [_Piece(path, size, store.reader(path))])


# --- training steps ↔ sequence indices -----------------------------------------------------------

def _check_step(step: int, batch_size: int) -> None:
    if batch_size <= 0:
        raise VmemError(f"--batch-size {batch_size}: must be a positive number of sequences")
    if step < 0:
        raise VmemError(f"step {step}: training steps are numbered from 0")


def checkpoint_range(step: int, batch_size: int = SEQUENCES_PER_STEP) -> tuple[int, int]:
    """The sequences checkpoint `step<step>` has seen: [0, step * batch_size)."""
    _check_step(step, batch_size)
    return 0, step * batch_size


def step_range(step: int, batch_size: int = SEQUENCES_PER_STEP) -> tuple[int, int]:
    """The sequences trained at `step`."""
    _check_step(step, batch_size)
    return step * batch_size, (step + 1) * batch_size


def step_of(index: int, batch_size: int = SEQUENCES_PER_STEP) -> int:
    """The step at which sequence `index` was trained."""
    _check_step(0, batch_size)
    return index // batch_size


def resolve_range(dataset: Dataset, start: int | None, stop: int | None, step: int | None = None,
                  checkpoint: int | None = None,
                  batch_size: int = SEQUENCES_PER_STEP) -> tuple[int, int]:
    """The index range that --start/--stop, --step or --checkpoint select, checked against the
    dataset. With --step or --checkpoint, --start/--stop may narrow the range inside it."""
    if step is not None and checkpoint is not None:
        raise VmemError("give --step or --checkpoint, not both")
    if step is not None or checkpoint is not None:
        flag = f"--step {step}" if step is not None else f"--checkpoint {checkpoint}"
        if (step if step is not None else checkpoint) < 0:
            raise VmemError(f"{flag}: training steps are numbered from 0")
        low, high = (step_range(step, batch_size) if step is not None
                     else checkpoint_range(checkpoint, batch_size))
        start = low if start is None else start
        stop = high if stop is None else stop
        if not low <= start <= stop <= high:
            raise VmemError(f"--start {start} / --stop {stop}: must lie inside the range "
                            f"[{low}, {high}) that {flag} selects")
    else:
        flag = f"--start {start} --stop {stop}"
        if start is None or stop is None:
            raise VmemError(f"give --start and --stop (or --step / --checkpoint): "
                            f"{dataset.location} has sequences [0, {dataset.num_sequences})")
    if stop <= start:
        raise VmemError(f"{flag}: selects no sequences (--stop must be greater than --start)")
    if start < 0 or stop > dataset.num_sequences:
        raise VmemError(f"{flag}: selects [{start}, {stop}), outside {dataset.location}, which "
                        f"has sequences [0, {dataset.num_sequences})")
    return start, stop


# --- batches for the engine ----------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    indices: np.ndarray  # int64 (n,)
    prompts: np.ndarray  # int64 (n, prompt_len)
    continuations: np.ndarray  # int64 (n, cont_len): the true next tokens


def check_window(dataset: Dataset, prompt_len: int, cont_len: int, offset: int) -> None:
    """The prompt and continuation must lie inside every sequence."""
    if prompt_len < 1 or cont_len < 1 or offset < 0:
        raise VmemError(f"--prompt-len {prompt_len} and --cont-len {cont_len} must be at least 1 "
                        f"and --offset {offset} at least 0")
    end = offset + prompt_len + cont_len
    if end > dataset.seq_len:
        raise VmemError(f"--offset {offset} + --prompt-len {prompt_len} + --cont-len {cont_len} "
                        f"= {end} exceeds the {dataset.seq_len}-token sequences of "
                        f"{dataset.location}")


def iter_batches(dataset: Dataset, start: int, stop: int, *, batch_size: int,
                 prompt_len: int = 32, cont_len: int = 32, offset: int = 0,
                 prefetch: int = 2) -> Iterator[Batch]:
    """Batches of `batch_size` sequences over [start, stop) in order (the last may be short),
    read up to `prefetch` batches ahead by background threads."""
    check_window(dataset, prompt_len, cont_len, offset)
    end = offset + prompt_len + cont_len
    if batch_size < 1:
        raise VmemError(f"batch size {batch_size}: must be at least 1")
    if not 0 <= start <= stop <= dataset.num_sequences:
        raise VmemError(f"[{start}, {stop}) is outside {dataset.location}, which has sequences "
                        f"[0, {dataset.num_sequences})")

    def load(first: int) -> Batch:
        rows = dataset._rows(first, min(first + batch_size, stop))
        return Batch(np.arange(first, first + len(rows), dtype=np.int64),
                     np.array(rows[:, offset:offset + prompt_len], dtype=np.int64),
                     np.array(rows[:, offset + prompt_len:end], dtype=np.int64))

    return _prefetched(load, range(start, stop, batch_size), max(1, prefetch))


def _prefetched(load: Callable[[int], Batch], firsts: range, depth: int) -> Iterator[Batch]:
    """`load(first)` for each of `firsts`, in order, with up to `depth` loads running or done
    ahead of the consumer (in parallel: S3 reads overlap). A load's error is raised here."""
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="vmem-prefetch")
    todo = iter(firsts)
    ahead = deque(pool.submit(load, first) for first in islice(todo, depth))
    try:
        while ahead:
            batch = ahead.popleft().result()
            for first in islice(todo, 1):
                ahead.append(pool.submit(load, first))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- `vmem data info` and `vmem data dump` -------------------------------------------------------

def _open_from_args(args: argparse.Namespace) -> Dataset:
    return open_dataset(args.path, seq_len=args.seq_len, dtype=args.data_dtype,
                        s3_endpoint=args.s3_endpoint)


def info_command(args: argparse.Namespace) -> int:
    dataset = _open_from_args(args)
    _check_step(0, args.batch_size)
    steps, rest = divmod(dataset.num_sequences, args.batch_size)
    covered = f"{steps:,} full steps of {args.batch_size} sequences"
    if rest:
        covered += f", and {rest} sequences of step {steps}"
    shards = len(dataset.pieces)
    print(f"location   {dataset.location}")
    print(f"layout     {dataset.layout}" + (f" ({shards} shards)" if shards > 1 else ""))
    print(f"sequences  {dataset.num_sequences:,}")
    print(f"seq_len    {dataset.seq_len}")
    print(f"dtype      {dataset.dtype}")
    print(f"steps      {covered}")
    files = dataset.files
    if len(files) > 5:  # the .idx, the first two shards, the last
        files = [*files[:3], f"... {len(files) - 4} more", files[-1]]
    for i, path in enumerate(files):
        print(f"{'files' if i == 0 else '':10} {path}")
    return 0


def dump_command(args: argparse.Namespace) -> int:
    output = args.output
    if not output.endswith(".npy"):
        raise VmemError(f"-o {output}: expected a local FILE.npy")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise VmemError(f"-o {output}: the folder {folder} does not exist")
    dataset = _open_from_args(args)
    start, stop = resolve_range(dataset, args.start, args.stop, step=args.step,
                                batch_size=args.batch_size)
    with mmidx.atomic_path(output) as tmp:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=dataset.dtype,
                                         shape=(stop - start, dataset.seq_len))
        for first in range(start, stop, DUMP_ROWS):
            last = min(first + DUMP_ROWS, stop)
            rows[first - start:last - start] = dataset._rows(first, last)
        rows.flush()
        del rows  # unmap before the file is synced and renamed
    print(f"wrote rows [{start}, {stop}) of {dataset.location} to {output}")
    return 0
