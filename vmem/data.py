"""Token datasets (merged, sharded, raw, .npy; local or S3), step ↔ index arithmetic, batches.

Every layout is a byte stream of N fixed-length rows split over one or more files ("pieces"):
a merged `.bin`, Pythia's published shards (a row may straddle two of them), a headerless raw
`.bin` or the data of a `.npy` (after its header). Local files are memory-mapped and S3 objects
are read with byte-range GETs, so a read touches only the rows it asks for.
"""

from __future__ import annotations

import io
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, islice

import numpy as np

from vmem.errors import VmemError
from vmem.io import mmidx
from vmem.io.atomic import atomic_path
from vmem.io.location import Location, ReadBytes, split
from vmem.pythia import SEQUENCES_PER_STEP

RAW_SEQ_LEN = 2049  # Pythia's rows: 2048 inputs + 1 shifted target
RAW_DTYPE = "uint16"
DUMP_ROWS = 4096  # rows copied at a time by `vmem data dump`
NPY_HEAD_BYTES = 16384  # a .npy's header is read in one request: numpy's limit is 10000 bytes

_SHARD = re.compile(r"^(?P<name>.+)-(?P<number>\d{5})-of-(?P<last>\d{5})\.bin$")


# --- the dataset ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Piece:
    path: str
    size: int  # the bytes of rows it holds
    read: ReadBytes  # byte ranges of the file
    offset: int = 0  # where its rows start in the file (a .npy's header comes first)


@dataclass(eq=False)
class Dataset:
    layout: str  # "merged" | "sharded" | "raw" | "npy"
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
        parts = [piece.read(piece.offset + max(first, at) - at,
                            piece.offset + min(last, at + piece.size) - at)
                 for piece, at in zip(self.pieces, self._piece_starts, strict=False)
                 if at < last and first < at + piece.size]
        if not parts:
            return np.empty((0, self.seq_len), dtype=self.dtype)
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return data.view(self.dtype).reshape(stop - start, self.seq_len)


def open_dataset(path: str | os.PathLike, *, seq_len: int | None = None,
                 dtype: str | np.dtype | None = None, s3_endpoint: str | None = None) -> Dataset:
    """Open a dataset, locally or at `s3://`: a `.npy` of rows (`seq_len` and `dtype`, if given,
    must agree with its header); with `seq_len` or `dtype`, a headerless raw `.bin`; otherwise a
    prefix `P` named as `P`, `P.idx`, `P.bin`, one of its shards `P-0000K-of-0000L.bin`, or the
    folder holding it. Every name of a prefix opens the same dataset: merged where `P.bin` lies
    beside `P.idx`, else its shards, read in place."""
    folder, name = split(path, s3_endpoint=s3_endpoint)
    if name.endswith(".npy"):
        return _open_npy(folder, name, seq_len, dtype)
    if seq_len is not None or dtype is not None:
        return _open_raw(folder, name, RAW_SEQ_LEN if seq_len is None else seq_len,
                         RAW_DTYPE if dtype is None else dtype)
    if name:
        listing = folder.files()
        if shard := _SHARD.match(name):
            return _open_prefix(folder, shard["name"], listing, int(shard["last"]))
        if name.endswith((".bin", ".idx")):
            return _open_prefix(folder, name[:-4], listing)
        if name + ".idx" in listing or name + ".bin" in listing or _shard_sets(listing, name):
            return _open_prefix(folder, name, listing)
        folder = folder.child(name)
    inside = folder.files()  # a folder: one shard set, or one merged pair
    sets = _shard_sets(inside)
    if len(sets) > 1:
        raise _several_sets(folder, sets)
    if sets:
        return _open_prefix(folder, sets[0][0], inside)
    indexes = [n for n in inside if n.endswith(".idx")]
    if len(indexes) == 1:
        return _open_prefix(folder, indexes[0][:-4], inside)
    raise VmemError(f"{folder.url}: no dataset found (expected PREFIX.idx beside PREFIX.bin or "
                    f"beside its shards PREFIX-NNNNN-of-LLLLL.bin, e.g. Pythia's document.idx + "
                    f"document-00000-of-00020.bin ...; a FILE.npy of rows; or a headerless .bin "
                    f"with --seq-len)")


def _shard_sets(listing: dict[str, int], name: str | None = None) -> list[tuple[str, int]]:
    """(prefix, last shard number) of each shard set in `listing` (only `name`'s, if given)."""
    return sorted({(m["name"], int(m["last"])) for m in map(_SHARD.match, listing)
                   if m and name in (None, m["name"])})


def _several_sets(folder: Location, sets: list[tuple[str, int]]) -> VmemError:
    names = ", ".join(mmidx.shard_name(n, 0, last) for n, last in sets)
    return VmemError(f"{folder.url}: holds several shard sets ({names}); name one shard of them")


def _open_prefix(folder: Location, name: str, listing: dict[str, int],
                 last: int | None = None) -> Dataset:
    """The dataset of prefix `name` in `folder`: merged where `name.bin` exists, else the shard
    set (the one numbered up to `last`, where a shard was named)."""
    sets = _shard_sets(listing, name)
    if name + ".bin" in listing or not (sets or last is not None):
        return _open_merged(folder, name, listing, shards_beside=bool(sets))
    if last is None:
        if len(sets) > 1:
            raise _several_sets(folder, sets)
        last = sets[0][1]
    return _open_sharded(folder, name, last, listing)


def _read_index(folder: Location, name: str, size: int) -> mmidx.Index:
    # Pythia's .idx is 1.75 GB: on S3 a sample of its entries is checked (see mmidx.read_index).
    return mmidx.read_index(folder.reader(name), size, folder.join(name),
                            every_entry=not folder.remote)


def _open_merged(folder: Location, name: str, listing: dict[str, int],
                 shards_beside: bool = False) -> Dataset:
    idx_name, bin_name = name + ".idx", name + ".bin"
    idx_path, bin_path = folder.join(idx_name), folder.join(bin_name)
    if idx_name not in listing:
        raise VmemError(f"{idx_path}: not found (a dataset is PREFIX.idx beside PREFIX.bin or "
                        f"beside its shards PREFIX-NNNNN-of-LLLLL.bin; for a headerless .bin "
                        f"give --seq-len)")
    if bin_name not in listing:
        raise VmemError(f"{bin_path}: not found, nor shards {name}-NNNNN-of-LLLLL.bin beside "
                        f"{idx_path} (a dataset is PREFIX.idx beside PREFIX.bin or beside its "
                        f"shards)")
    index = _read_index(folder, idx_name, listing[idx_name])
    size = listing[bin_name]
    if size != index.data_bytes:
        hint = " (truncated download?)" if size < index.data_bytes else ""
        if shards_beside:
            hint += (f"; while {bin_name} exists it is read instead of the shards beside it: "
                     f"complete or remove it")
        raise VmemError(f"{bin_path}: {size} bytes, but {idx_path} describes "
                        f"{index.num_sequences} sequences x {index.seq_len} tokens x "
                        f"{index.dtype.itemsize} bytes = {index.data_bytes} bytes{hint}")
    return Dataset("merged", folder.join(name), [idx_path, bin_path],
                   index.num_sequences, index.seq_len, index.dtype,
                   [_Piece(bin_path, size, folder.reader(bin_name))])


def _open_sharded(folder: Location, name: str, last: int, listing: dict[str, int]) -> Dataset:
    idx_path = folder.join(name + ".idx")
    if name + ".idx" not in listing:
        raise VmemError(f"{idx_path}: not found (the shards {mmidx.shard_name(name, 0, last)} "
                        f"... need it beside them)")
    shards = [mmidx.shard_name(name, k, last) for k in range(last + 1)]
    missing = [s for s in shards if s not in listing]
    if missing:
        raise VmemError(f"{folder.join(missing[0])}: missing from the shard set "
                        f"({len(missing)} of {last + 1} shards missing)")
    index = _read_index(folder, name + ".idx", listing[name + ".idx"])
    shard_bytes = listing[shards[0]]  # every shard but the last has shard 0's size
    for shard in shards[1:-1]:
        if listing[shard] != shard_bytes:
            raise VmemError(f"{folder.join(shard)}: {listing[shard]} bytes, but "
                            f"{shards[0]} has {shard_bytes}; every shard but the last must "
                            f"have the same size")
    last_bytes = index.data_bytes - last * shard_bytes
    if not 0 < last_bytes <= shard_bytes:
        raise VmemError(f"{idx_path}: describes {index.data_bytes} bytes of sequences, which "
                        f"{last + 1} shards of {shard_bytes} bytes (the size of {shards[0]}) "
                        f"cannot hold exactly")
    if listing[shards[-1]] != last_bytes:
        hint = " (truncated download?)" if listing[shards[-1]] < last_bytes else ""
        raise VmemError(f"{folder.join(shards[-1])}: {listing[shards[-1]]} bytes, "
                        f"expected {last_bytes} to complete the {index.data_bytes} bytes "
                        f"{idx_path} describes{hint}")
    return Dataset("sharded", folder.url, [idx_path, *map(folder.join, shards)],
                   index.num_sequences, index.seq_len, index.dtype,
                   [_Piece(folder.join(s), listing[s], folder.reader(s)) for s in shards])


def _token_dtype(dtype: str | np.dtype) -> np.dtype:
    """--data-dtype as a numpy integer dtype (else one line)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise VmemError(f"--data-dtype {dtype}: not a numpy dtype name (e.g. uint16)") from None
    if dtype.kind not in "iu":
        raise VmemError(f"--data-dtype {dtype}: token ids need an integer dtype (e.g. uint16)")
    return dtype


def _open_raw(folder: Location, name: str, seq_len: int, dtype: str | np.dtype) -> Dataset:
    dtype = _token_dtype(dtype)
    if seq_len <= 0:
        raise VmemError(f"--seq-len {seq_len}: must be a positive number of tokens")
    path = folder.join(name)
    size = folder.files().get(name)
    if size is None:
        raise VmemError(f"{path}: not found (a raw dataset is one headerless .bin file)")
    row_bytes = seq_len * dtype.itemsize
    if size == 0 or size % row_bytes:
        raise VmemError(f"{path}: {size} bytes is not a whole number of rows of {seq_len} "
                        f"{dtype} tokens ({row_bytes} bytes each); check --seq-len and "
                        f"--data-dtype")
    return Dataset("raw", path, [path], size // row_bytes, seq_len, dtype,
                   [_Piece(path, size, folder.reader(name))])


def _npy_header(read: ReadBytes, size: int, path: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) from the header of the .npy at `path`, parsed
    by numpy from one byte-range read (numpy refuses headers longer than NPY_HEAD_BYTES holds)."""
    header = io.BytesIO(read(0, min(size, NPY_HEAD_BYTES)).tobytes())
    try:
        version = np.lib.format.read_magic(header)
        readers = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"format version {version[0]}.{version[1]}; vmem reads 1.0 and 2.0")
        shape, fortran_order, dtype = readers[version](header)
    except ValueError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise VmemError(f"{path}: not a readable .npy file ({reason})") from None
    return shape, fortran_order, dtype, header.tell()


def _open_npy(folder: Location, name: str, seq_len: int | None,
              dtype: str | np.dtype | None) -> Dataset:
    """A 2-D C-order integer array saved by numpy (`vmem data dump` writes them): its header gives
    the rows, their length and dtype; its data is read in place like a raw .bin's."""
    path = folder.join(name)
    size = folder.files().get(name)
    if size is None:
        raise VmemError(f"{path}: not found (a .npy dataset is one file of rows, as "
                        f"`vmem data dump` writes)")
    if size == 0:
        raise VmemError(f"{path}: not a readable .npy file (0 bytes)")
    read = folder.reader(name)
    shape, fortran_order, found, offset = _npy_header(read, size, path)
    if len(shape) != 2 or 0 in shape:
        raise VmemError(f"{path}: holds an array of shape {shape}; expected a non-empty 2-D "
                        f"array of rows (sequences x tokens)")
    if found.kind not in "iu":
        raise VmemError(f"{path}: holds {found} values; token ids need an integer dtype "
                        f"(e.g. uint16)")
    if fortran_order:
        raise VmemError(f"{path}: holds a Fortran-order array; vmem reads rows in C order "
                        f"(save np.ascontiguousarray(rows))")
    num_sequences, row_len = shape
    if seq_len is not None and seq_len != row_len:
        raise VmemError(f"--seq-len {seq_len}: {path} holds rows of {row_len} tokens (its .npy "
                        f"header says so); leave --seq-len out for a .npy")
    if dtype is not None and _token_dtype(dtype).name != found.name:
        raise VmemError(f"--data-dtype {np.dtype(dtype)}: {path} holds {found.name} tokens (its "
                        f".npy header says so); leave --data-dtype out for a .npy")
    data_bytes = num_sequences * row_len * found.itemsize
    if offset + data_bytes != size:
        hint = " (truncated download?)" if offset + data_bytes > size else ""
        raise VmemError(f"{path}: {size} bytes, but its header describes {num_sequences} "
                        f"sequences x {row_len} tokens x {found.itemsize} bytes = {data_bytes} "
                        f"bytes after a {offset}-byte header{hint}")
    return Dataset("npy", path, [path], num_sequences, row_len, found,
                   [_Piece(path, data_bytes, read, offset)])


# --- training steps ↔ sequence indices -----------------------------------------------------------

def _check_step(step: int, sequences_per_step: int) -> None:
    if sequences_per_step <= 0:
        raise VmemError(f"--sequences-per-step {sequences_per_step}: must be a positive number "
                        f"of sequences")
    if step < 0:
        raise VmemError(f"step {step}: training steps are numbered from 0")


def checkpoint_range(step: int, sequences_per_step: int = SEQUENCES_PER_STEP) -> tuple[int, int]:
    """The sequences checkpoint `step<step>` has seen: [0, step * sequences_per_step)."""
    _check_step(step, sequences_per_step)
    return 0, step * sequences_per_step


def step_range(step: int, sequences_per_step: int = SEQUENCES_PER_STEP) -> tuple[int, int]:
    """The sequences trained at `step`."""
    _check_step(step, sequences_per_step)
    return step * sequences_per_step, (step + 1) * sequences_per_step


def step_of(index: int, sequences_per_step: int = SEQUENCES_PER_STEP) -> int:
    """The step at which sequence `index` was trained."""
    _check_step(0, sequences_per_step)
    return index // sequences_per_step


def selected_range(start: int | None, stop: int | None, step: int | None = None,
                   checkpoint: int | None = None,
                   sequences_per_step: int = SEQUENCES_PER_STEP,
                   available: str = "") -> tuple[int, int]:
    """The index range that --start/--stop, --step or --checkpoint select (not yet checked
    against a dataset). With --step or --checkpoint, --start/--stop may narrow the range inside
    it. `available` ends the message that asks for a range."""
    if step is not None and checkpoint is not None:
        raise VmemError("give --step or --checkpoint, not both")
    if step is not None or checkpoint is not None:
        flag = f"--step {step}" if step is not None else f"--checkpoint {checkpoint}"
        if (step if step is not None else checkpoint) < 0:
            raise VmemError(f"{flag}: training steps are numbered from 0")
        low, high = (step_range(step, sequences_per_step) if step is not None
                     else checkpoint_range(checkpoint, sequences_per_step))
        start = low if start is None else start
        stop = high if stop is None else stop
        if not low <= start <= stop <= high:
            raise VmemError(f"--start {start} / --stop {stop}: must lie inside the range "
                            f"[{low}, {high}) that {flag} selects")
    else:
        flag = f"--start {start} --stop {stop}"
        if start is None or stop is None:
            raise VmemError(f"give --start and --stop (or --step / --checkpoint){available}")
    if stop <= start:
        raise VmemError(f"{flag}: selects no sequences (--stop must be greater than --start)")
    return start, stop


def resolve_range(dataset: Dataset, start: int | None, stop: int | None, step: int | None = None,
                  checkpoint: int | None = None,
                  sequences_per_step: int = SEQUENCES_PER_STEP) -> tuple[int, int]:
    """`selected_range`, checked against the dataset."""
    has = f"sequences [0, {dataset.num_sequences})"
    start, stop = selected_range(start, stop, step, checkpoint, sequences_per_step,
                                 available=f": {dataset.location} has {has}")
    if start < 0 or stop > dataset.num_sequences:
        flag = (f"--step {step}" if step is not None else f"--checkpoint {checkpoint}"
                if checkpoint is not None else f"--start {start} --stop {stop}")
        raise VmemError(f"{flag}: selects [{start}, {stop}), outside {dataset.location}, which "
                        f"has {has}")
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


def iter_batches(dataset: Dataset, start: int, stop: int, *, rows: int,
                 prompt_len: int = 32, cont_len: int = 32, offset: int = 0,
                 prefetch: int = 2) -> Iterator[Batch]:
    """Batches of `rows` sequences over [start, stop) in order (the last may be short), read up
    to `prefetch` batches ahead by background threads."""
    check_window(dataset, prompt_len, cont_len, offset)
    end = offset + prompt_len + cont_len
    if rows < 1:
        raise VmemError(f"{rows} rows per batch: must be at least 1")
    if not 0 <= start <= stop <= dataset.num_sequences:
        raise VmemError(f"[{start}, {stop}) is outside {dataset.location}, which has sequences "
                        f"[0, {dataset.num_sequences})")

    def load(first: int) -> Batch:
        window = dataset._rows(first, min(first + rows, stop))
        return Batch(np.arange(first, first + len(window), dtype=np.int64),
                     np.array(window[:, offset:offset + prompt_len], dtype=np.int64),
                     np.array(window[:, offset + prompt_len:end], dtype=np.int64))

    return _prefetched(load, range(start, stop, rows), max(1, prefetch))


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


# --- what `vmem data info` shows, manifests record and `vmem data dump` writes -------------------

def describe(dataset: Dataset, sequences_per_step: int = SEQUENCES_PER_STEP) -> str:
    _check_step(0, sequences_per_step)
    steps, rest = divmod(dataset.num_sequences, sequences_per_step)
    covered = f"{steps:,} full steps of {sequences_per_step} sequences"
    if rest:
        covered += f", and {rest} sequences of step {steps}"
    shards = len(dataset.pieces)
    lines = [f"location   {dataset.location}",
             f"layout     {dataset.layout}" + (f" ({shards} shards)" if shards > 1 else ""),
             f"sequences  {dataset.num_sequences:,}",
             f"seq_len    {dataset.seq_len}",
             f"dtype      {dataset.dtype}",
             f"steps      {covered}"]
    files = dataset.files
    if len(files) > 5:  # the .idx, the first two shards, the last
        files = [*files[:3], f"... {len(files) - 4} more", files[-1]]
    lines += [f"{'files' if i == 0 else '':10} {path}" for i, path in enumerate(files)]
    return "\n".join(lines)


def manifest_entry(dataset: Dataset) -> dict:
    """How a run's manifest records its dataset (`settings.data`); the location is absolute."""
    return {"location": dataset.location, "layout": dataset.layout,
            "num_sequences": dataset.num_sequences, "seq_len": dataset.seq_len,
            "dtype": np.dtype(dataset.dtype).name}


def check_dump_output(output: str) -> None:
    """What `dump` writes must be a .npy in an existing folder (checked before any read)."""
    if not output.endswith(".npy"):
        raise VmemError(f"-o {output}: expected a local FILE.npy")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise VmemError(f"-o {output}: the folder {folder} does not exist")


def dump(dataset: Dataset, start: int, stop: int, output: str) -> None:
    """Rows [start, stop) as a 2-D .npy file (see check_dump_output), written atomically."""
    with atomic_path(output) as tmp:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=dataset.dtype,
                                         shape=(stop - start, dataset.seq_len))
        for first in range(start, stop, DUMP_ROWS):
            last = min(first + DUMP_ROWS, stop)
            rows[first - start:last - start] = dataset._rows(first, last)
        rows.flush()
        del rows  # unmap before the file is synced and renamed
