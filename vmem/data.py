"""Token datasets and their training orders (local or S3), step ↔ index arithmetic, batches.

A training order maps a sequence index to its tokens; row i is the i-th sequence trained on.
The simplest order is a byte stream of N fixed-length rows split over one or more files
("pieces"): a merged `.bin`, Pythia's published shards (a row may straddle two of them), a
headerless raw `.bin` or the data of a `.npy` (after its header). Two orders are read through
their own maps instead: GPT-NeoX's index maps over a document-level `.bin/.idx` (`_IndexMaps`),
Pythia's data as `train-NNNNNN.parquet` files (`_ParquetOrder`) and OLMo's permutation of the
instances of its token files (`_OlmoOrder`, whose instance filter marks instances the model never
trained on). Local files are
memory-mapped and S3 objects are read with byte-range GETs, so a read touches only what it asks
for.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, islice

import numpy as np

from vmem import olmo
from vmem.errors import VmemError
from vmem.io import mmidx
from vmem.io.atomic import atomic_path
from vmem.io.location import Location, ReadBytes, is_s3, sizes_of, split
from vmem.pythia import SEQUENCES_PER_STEP

RAW_SEQ_LEN = 2049  # Pythia's rows: 2048 inputs + 1 shifted target
RAW_DTYPE = "uint16"
DUMP_ROWS = 4096  # rows copied at a time by `vmem data dump`
# What a file was made from, beside it: an imported dataset's PREFIX.manifest.json (its
# sequences per step is its order's batch), a merged run's NAME.manifest.json.
MANIFEST_SUFFIX = ".manifest.json"
# Each row's true length, beside a dataset whose rows were padded (an import with --packing
# document): padding is never scored.
LENGTHS_SUFFIX = ".lengths.npy"
NPY_HEAD_BYTES = 16384  # a .npy's header is read in one request: numpy's limit is 10000 bytes

_SHARD = re.compile(r"^(?P<name>.+)-(?P<number>\d{5})-of-(?P<last>\d{5})\.bin$")
# GPT-NeoX's index maps: DOCS_{split}_indexmap_{samples}ns_{seq_length}sl_{seed}s[_…]_doc_idx.npy
_MAPS = re.compile(r"^(?P<maps>(?P<base>.+)_indexmap_(?P<samples>\d+)ns_(?P<seq_length>\d+)sl_"
                   r"(?P<seed>\d+)s(?:_[^/]*?)?)_(?:doc|sample|shuffle)_idx\.npy$")
MAP_FILES = ("doc", "sample", "shuffle")
_PARQUET = re.compile(r"^train-(?P<step>\d{6})\.parquet$")  # train-{N} holds steps before N


# --- the dataset ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Piece:
    path: str
    size: int  # the bytes of rows it holds
    read: ReadBytes  # byte ranges of the file
    offset: int = 0  # where its rows start in the file (a .npy's header comes first)


def _read_span(pieces: list[_Piece], starts: list[int], first: int, last: int) -> np.ndarray:
    """Bytes [first, last) of the stream the pieces make end to end (`starts`: where each
    begins); a read-only view into a memory map when they lie in one local file."""
    parts = [piece.read(piece.offset + max(first, at) - at,
                        piece.offset + min(last, at + piece.size) - at)
             for piece, at in zip(pieces, starts, strict=False)
             if at < last and first < at + piece.size]
    if not parts:
        return np.empty(0, dtype=np.uint8)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(eq=False)
class Dataset:
    layout: str  # "merged" | "sharded" | "raw" | "npy" | "index-maps" | "parquet" | "olmo"
    location: str
    files: list[str]
    num_sequences: int
    seq_len: int
    dtype: np.dtype
    pieces: list[_Piece] = field(repr=False)  # the files of rows (none for a mapped order)
    # An order that is not rows back to back: how the manifest names it (kind, files, seed) and
    # what reads its rows [start, stop) (never empty).
    order: dict | None = None
    read_order: Callable[[int, int], np.ndarray] | None = field(default=None, repr=False)
    # An order that records its batch: its sequences per step (else the caller's, Pythia's).
    sequences_per_step: int | None = None
    # Rows that this rule marks were in the order but never trained on (OLMo's filter).
    instance_filter: olmo.InstanceFilter | None = None
    row_lengths: _Entries | None = field(default=None, repr=False)  # padded rows' true lengths

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
        if self.read_order is not None:
            return (self.read_order(start, stop) if stop > start
                    else np.empty((0, self.seq_len), dtype=self.dtype))
        data = _read_span(self.pieces, self._piece_starts, start * self._row_bytes,
                          stop * self._row_bytes)
        return data.view(self.dtype).reshape(stop - start, self.seq_len)


def open_dataset(path: str | os.PathLike, *, seq_len: int | None = None,
                 dtype: str | np.dtype | None = None, s3_endpoint: str | None = None) -> Dataset:
    """Open a dataset, locally or at `s3://`: a `.npy` of rows (`seq_len` and `dtype`, if given,
    must agree with its header); with `seq_len` or `dtype`, a headerless raw `.bin`; otherwise a
    prefix `P` named as `P`, `P.idx`, `P.bin`, one of its shards `P-0000K-of-0000L.bin`, or the
    folder holding it. Every name of a prefix opens the same dataset: merged where `P.bin` lies
    beside `P.idx`, else its shards, read in place."""
    folder, name = split(path, s3_endpoint=s3_endpoint)
    if name == olmo.ORDER_FILE:
        return _open_olmo(folder, seq_len, dtype, s3_endpoint)
    if maps := _MAPS.match(name):
        return _open_index_maps(folder, maps["maps"], seq_len, dtype)
    if _PARQUET.match(name):
        return _open_parquet(folder, seq_len, dtype)
    if name.endswith(".npy"):
        return _open_npy(folder, name, seq_len, dtype)
    listing = folder.files() if name else {}
    if name + "_doc_idx.npy" in listing:  # the prefix of GPT-NeoX's index maps
        return _open_index_maps(folder, name, seq_len, dtype)
    if seq_len is not None or dtype is not None:
        return _open_raw(folder, name, RAW_SEQ_LEN if seq_len is None else seq_len,
                         RAW_DTYPE if dtype is None else dtype)
    if name:
        if shard := _SHARD.match(name):
            return _open_prefix(folder, shard["name"], listing, int(shard["last"]))
        if name.endswith((".bin", ".idx")):
            return _open_prefix(folder, name[:-4], listing)
        if name + ".idx" in listing or name + ".bin" in listing or _shard_sets(listing, name):
            return _open_prefix(folder, name, listing)
        folder = folder.child(name)
    inside = folder.files()  # a folder: one shard set, one merged pair, maps, parquet, OLMo
    if olmo.ORDER_FILE in inside:
        return _open_olmo(folder, seq_len, dtype, s3_endpoint)
    maps = sorted({m["maps"] for m in map(_MAPS.match, inside) if m})
    if len(maps) > 1:
        raise VmemError(f"{folder.url}: holds several sets of index maps ({', '.join(maps)}); "
                        f"name one of their files")
    if maps:
        return _open_index_maps(folder, maps[0], seq_len, dtype)
    if any(map(_PARQUET.match, inside)):
        return _open_parquet(folder, seq_len, dtype)
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
                    f"document-00000-of-00020.bin ...; a FILE.npy of rows; a headerless .bin "
                    f"with --seq-len; GPT-NeoX index maps MAPS_doc_idx.npy ...; or Pythia's "
                    f"train-NNNNNN.parquet files; or an OLMo order folder from vmem data olmo)")


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
    row_lengths = None
    if name + LENGTHS_SUFFIX in listing:
        row_lengths = _npy_entries(folder, name + LENGTHS_SUFFIX, listing[name + LENGTHS_SUFFIX], 1)
        if row_lengths.shape[0] != index.num_sequences:
            raise VmemError(f"{folder.join(name + LENGTHS_SUFFIX)}: holds {row_lengths.shape[0]} "
                            f"row lengths, but {idx_path} has {index.num_sequences} rows")
    return Dataset("merged", folder.join(name), [idx_path, bin_path],
                   index.num_sequences, index.seq_len, index.dtype,
                   [_Piece(bin_path, size, folder.reader(bin_name))],
                   sequences_per_step=_imported_step_size(folder, name, listing),
                   row_lengths=row_lengths)


def _imported_step_size(folder: Location, name: str, listing: dict[str, int]) -> int | None:
    """The sequences per step `vmem data import --sequences-per-step` recorded beside the
    dataset, if it did."""
    if name + MANIFEST_SUFFIX not in listing:
        return None
    where = folder.join(name + MANIFEST_SUFFIX)
    try:
        manifest = json.loads(folder.read_bytes(name + MANIFEST_SUFFIX))
        recorded = manifest.get("sequences_per_step") if manifest.get("kind") == "import" \
            else None
    except (ValueError, AttributeError):
        raise VmemError(f"{where}: not a manifest of vmem data import (remove it, or import "
                        f"again)") from None
    if recorded is not None and (not isinstance(recorded, int) or recorded <= 0):
        raise VmemError(f"{where}: sequences_per_step {recorded!r} is not a positive number")
    return recorded


def _open_sharded(folder: Location, name: str, last: int, listing: dict[str, int]) -> Dataset:
    idx_path = folder.join(name + ".idx")
    if name + ".idx" not in listing:
        raise VmemError(f"{idx_path}: not found (the shards {mmidx.shard_name(name, 0, last)} "
                        f"... need it beside them)")
    index = _read_index(folder, name + ".idx", listing[name + ".idx"])
    pieces = _shard_pieces(folder, name, last, listing, index.data_bytes)
    return Dataset("sharded", folder.url, [idx_path, *(p.path for p in pieces)],
                   index.num_sequences, index.seq_len, index.dtype, pieces)


def _shard_pieces(folder: Location, name: str, last: int, listing: dict[str, int],
                  data_bytes: int) -> list[_Piece]:
    """The shards `name`-0000K-of-`last`.bin, checked to hold the `data_bytes` that the
    `name`.idx beside them describes."""
    idx_path = folder.join(name + ".idx")
    shards = [mmidx.shard_name(name, k, last) for k in range(last + 1)]
    missing = [s for s in shards if s not in listing]
    if missing:
        raise VmemError(f"{folder.join(missing[0])}: missing from the shard set "
                        f"({len(missing)} of {last + 1} shards missing)")
    shard_bytes = listing[shards[0]]  # every shard but the last has shard 0's size
    for shard in shards[1:-1]:
        if listing[shard] != shard_bytes:
            raise VmemError(f"{folder.join(shard)}: {listing[shard]} bytes, but "
                            f"{shards[0]} has {shard_bytes}; every shard but the last must "
                            f"have the same size")
    last_bytes = data_bytes - last * shard_bytes
    if not 0 < last_bytes <= shard_bytes:
        raise VmemError(f"{idx_path}: describes {data_bytes} bytes of sequences, which "
                        f"{last + 1} shards of {shard_bytes} bytes (the size of {shards[0]}) "
                        f"cannot hold exactly")
    if listing[shards[-1]] != last_bytes:
        hint = " (truncated download?)" if listing[shards[-1]] < last_bytes else ""
        raise VmemError(f"{folder.join(shards[-1])}: {listing[shards[-1]]} bytes, "
                        f"expected {last_bytes} to complete the {data_bytes} bytes "
                        f"{idx_path} describes{hint}")
    return [_Piece(folder.join(s), listing[s], folder.reader(s)) for s in shards]


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


# --- orders read through maps: GPT-NeoX index maps, Pythia's parquet files -----------------------

def _no_row_flags(seq_len: int | None, dtype: str | np.dtype | None, what: str) -> None:
    if seq_len is not None or dtype is not None:
        raise VmemError(f"--seq-len / --data-dtype: {what} says its own sequence length and "
                        f"dtype; leave them out")


@dataclass(frozen=True)
class _Entries:
    """An integer array stored in a file from byte `at` (rows of `shape[1:]`), read by index:
    locally one memory map, on S3 one ranged GET per run of consecutive indices."""
    read: ReadBytes
    at: int
    dtype: np.dtype
    shape: tuple[int, ...]
    remote: bool

    def take(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        if not self.remote:
            whole = self.read(self.at, self.at + self.shape[0] * row)
            return whole.view(self.dtype).reshape(self.shape)[ids]
        unique, inverse = np.unique(ids, return_inverse=True)
        runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
        data = np.concatenate([self.read(self.at + int(run[0]) * row,
                                         self.at + (int(run[-1]) + 1) * row) for run in runs])
        return data.view(self.dtype).reshape(-1, *self.shape[1:])[inverse.reshape(-1)]


def _npy_entries(folder: Location, name: str, size: int, ndim: int) -> _Entries:
    """The integer array of the .npy `name` (of `ndim` dimensions), read in place."""
    path = folder.join(name)
    read = folder.reader(name)
    shape, fortran_order, found, offset = _npy_header(read, size, path)
    if len(shape) != ndim or found.kind not in "iu" or (fortran_order and ndim > 1):
        raise VmemError(f"{path}: holds a {'Fortran-order ' if fortran_order else ''}{found} "
                        f"array of shape {shape}; expected a {ndim}-D integer array as GPT-NeoX "
                        f"writes it")
    if offset + int(np.prod(shape, dtype=np.int64)) * found.itemsize != size:
        raise VmemError(f"{path}: {size} bytes do not match its header's {found} array of shape "
                        f"{shape} (truncated download?)")
    return _Entries(read, offset, found, tuple(shape), folder.remote)


def _find_documents(folder: Location, base: str) -> tuple[Location, str, dict[str, int]]:
    """The document dataset GPT-NeoX's maps `base`_indexmap_… were built over: `DOCS.idx`, DOCS
    being `base` less a split name (`_train_0`), in the maps' folder or the one above it (where
    PolyPythias keep it, above `seed0/` … `seed9/`)."""
    parts = base.split("_")
    candidates = ["_".join(parts[:k]) for k in range(len(parts), 0, -1)]
    above = split(folder.url, s3_endpoint=folder.s3_endpoint)[0]
    for place in (folder, above):
        listing = place.files()
        for docs in candidates:
            if docs + ".idx" in listing:
                return place, docs, listing
    raise VmemError(f"{folder.join(base)}_indexmap_…: no document dataset found for these index "
                    f"maps (expected DOCS.idx, with DOCS.bin or its shards beside it, where "
                    f"{base} starts with DOCS, in {folder.url} or {above.url})")


def _open_index_maps(folder: Location, maps: str, seq_len: int | None,
                     dtype: str | np.dtype | None) -> Dataset:
    """GPT-NeoX's order: `maps`_{doc,sample,shuffle}_idx.npy over its document dataset."""
    names = {kind: f"{maps}_{kind}_idx.npy" for kind in MAP_FILES}
    _no_row_flags(seq_len, dtype, folder.join(names["doc"]))
    listing = folder.files()
    for name in names.values():
        if name not in listing:
            raise VmemError(f"{folder.join(name)}: not found (GPT-NeoX index maps are three "
                            f"files, MAPS_doc_idx.npy, MAPS_sample_idx.npy and "
                            f"MAPS_shuffle_idx.npy)")
    found = _MAPS.match(names["doc"])
    doc_idx = _npy_entries(folder, names["doc"], listing[names["doc"]], 1)
    sample_idx = _npy_entries(folder, names["sample"], listing[names["sample"]], 2)
    shuffle_idx = _npy_entries(folder, names["shuffle"], listing[names["shuffle"]], 1)
    if sample_idx.shape[1] != 2 or sample_idx.shape[0] < 2:
        raise VmemError(f"{folder.join(names['sample'])}: holds an array of shape "
                        f"{sample_idx.shape}; expected (samples + 1, 2)")
    docs_folder, docs, docs_listing = _find_documents(folder, found["base"])
    idx_name = docs + ".idx"
    read = docs_folder.reader(idx_name)
    n, _, token_dtype = mmidx.read_header(read, docs_listing[idx_name], docs_folder.join(idx_name))
    sizes = _Entries(read, mmidx.HEADER.size, np.dtype("<i4"), (n,), docs_folder.remote)
    pointers = _Entries(read, mmidx.HEADER.size + 4 * n, np.dtype("<i8"), (n,),
                        docs_folder.remote)
    data_bytes = int(pointers.take([n - 1])[0] + sizes.take([n - 1])[0] * token_dtype.itemsize)
    if docs + ".bin" in docs_listing:
        bin_path = docs_folder.join(docs + ".bin")
        if docs_listing[docs + ".bin"] != data_bytes:
            raise VmemError(f"{bin_path}: {docs_listing[docs + '.bin']} bytes, but "
                            f"{docs_folder.join(idx_name)} describes {data_bytes}")
        pieces = [_Piece(bin_path, data_bytes, docs_folder.reader(docs + ".bin"))]
    elif sets := _shard_sets(docs_listing, docs):
        if len(sets) > 1:
            raise _several_sets(docs_folder, sets)
        pieces = _shard_pieces(docs_folder, docs, sets[0][1], docs_listing, data_bytes)
    else:
        raise VmemError(f"{docs_folder.join(docs + '.bin')}: not found, nor shards "
                        f"{docs}-NNNNN-of-LLLLL.bin beside {docs_folder.join(idx_name)}")
    files = [docs_folder.join(idx_name), *(p.path for p in pieces),
             *(folder.join(names[kind]) for kind in MAP_FILES)]
    sizes_of = {docs_folder.join(idx_name): docs_listing[idx_name],
                **{p.path: p.size for p in pieces},
                **{folder.join(names[kind]): listing[names[kind]] for kind in MAP_FILES}}
    order = {"kind": "gpt-neox-index-maps", "maps": folder.join(maps),
             "documents": docs_folder.join(docs), "seed": int(found["seed"]),
             "file_sizes": sizes_of}
    reader = _IndexMaps(doc_idx, sample_idx, shuffle_idx, sizes, pointers, pieces,
                        token_dtype, int(found["seq_length"]) + 1, folder.join(maps))
    return Dataset("index-maps", folder.join(maps), files,
                   min(shuffle_idx.shape[0], sample_idx.shape[0] - 1), reader.seq_len,
                   token_dtype, [], order, reader)


@dataclass(frozen=True)
class _IndexMaps:
    """Sample i of GPT-NeoX's order (`GPT2Dataset.__getitem__`): j = shuffle_idx[i];
    sample_idx[j] and sample_idx[j + 1] give (position in doc_idx, token offset) of its first and
    last token; between them whole documents. Read for a batch at once: one segment per
    (sample, document), then every byte gathered in one step (locally) or one range per segment
    (S3)."""
    doc_idx: _Entries
    sample_idx: _Entries
    shuffle_idx: _Entries
    sizes: _Entries  # the documents' lengths in tokens
    pointers: _Entries  # their first bytes in the .bin
    pieces: list[_Piece]
    dtype: np.dtype
    seq_len: int  # seq_length + 1
    where: str

    def __call__(self, start: int, stop: int) -> np.ndarray:
        count = stop - start
        j = self.shuffle_idx.take(np.arange(start, stop)).astype(np.int64)
        if not (0 <= j.min() and j.max() + 1 < self.sample_idx.shape[0]):
            raise VmemError(f"{self.where}_shuffle_idx.npy: names samples outside the "
                            f"{self.sample_idx.shape[0] - 1} of its sample_idx")
        ends = self.sample_idx.take(np.stack([j, j + 1], axis=1).reshape(-1))
        ends = ends.astype(np.int64).reshape(count, 2, 2)
        first, last = ends[:, 0], ends[:, 1]  # (position in doc_idx, offset) each
        per_sample = last[:, 0] - first[:, 0] + 1
        segment_start = np.cumsum(per_sample) - per_sample
        total = int(per_sample.sum())
        position = (np.repeat(first[:, 0] - segment_start, per_sample)
                    + np.arange(total, dtype=np.int64))
        docs = self.doc_idx.take(position).astype(np.int64)
        begin = np.zeros(total, dtype=np.int64)
        end = self.sizes.take(docs).astype(np.int64)
        begin[segment_start] = first[:, 1]
        end[segment_start + per_sample - 1] = last[:, 1] + 1
        lengths = end - begin
        if np.any(np.add.reduceat(lengths, segment_start) != self.seq_len):
            raise VmemError(f"{self.where}_sample_idx.npy: a sample of [{start}, {stop}) does "
                            f"not span {self.seq_len} tokens of its documents; the maps do not "
                            f"belong to this document dataset")
        itemsize = self.dtype.itemsize
        first_byte = self.pointers.take(docs) + begin * itemsize
        data = _gather(self.pieces, first_byte, lengths * itemsize, itemsize)
        return data.view(self.dtype).reshape(count, self.seq_len)


def _gather(pieces: list[_Piece], first: np.ndarray, lengths: np.ndarray,
            itemsize: int) -> np.ndarray:
    """The byte segments [first, first + length) of the pieces' stream, end to end: one range
    per segment on S3; locally gathered from the memory maps at once, a token at a time where
    no piece ends inside a token."""
    starts = list(accumulate((p.size for p in pieces), initial=0))
    if any(is_s3(p.path) for p in pieces):
        return np.concatenate([np.empty(0, np.uint8)] + [
            _read_span(pieces, starts, int(a), int(a + n)) for a, n in zip(first, lengths,
                                                                            strict=True)])
    unit = np.dtype(f"u{itemsize}") if all(at % itemsize == 0 for at in starts) else np.uint8
    size = np.dtype(unit).itemsize
    first, lengths = first // size, lengths // size
    out_start = np.cumsum(lengths) - lengths
    where = (np.repeat(first - out_start, lengths)
             + np.arange(int(lengths.sum()), dtype=np.int64))
    views = [piece.read(piece.offset, piece.offset + piece.size).view(unit) for piece in pieces]
    if len(pieces) == 1:
        return views[0][where].view(np.uint8)
    data = np.empty(len(where), dtype=unit)
    owner = np.searchsorted([at // size for at in starts], where, side="right") - 1
    for k, view in enumerate(views):
        mine = owner == k
        data[mine] = view[where[mine] - starts[k] // size]
    return data.view(np.uint8)


class _RangeFile(io.RawIOBase):
    """A file read through byte ranges (an S3 object), for pyarrow's reader."""

    def __init__(self, read: ReadBytes, size: int):
        self._read, self._size, self._at = read, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._at = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence] + offset
        return self._at

    def readinto(self, buffer) -> int:
        stop = min(self._at + len(buffer), self._size)
        data = self._read(self._at, stop) if stop > self._at else np.empty(0, np.uint8)
        buffer[:len(data)] = data.tobytes()
        self._at += len(data)
        return len(data)


def _open_parquet(folder: Location, seq_len: int | None, dtype: str | np.dtype | None) -> Dataset:
    """Pythia's data as parquet: `train-{N:06d}.parquet` holds steps [N − W, N) (W the first
    file's N: 1000 as published), rows in training order, column `token_ids`."""
    import pyarrow as pa  # costs start-up time that other datasets never pay
    import pyarrow.parquet as pq

    _no_row_flags(seq_len, dtype, f"{folder.url} (train-NNNNNN.parquet files)")
    listing = folder.files()
    numbered = sorted((int(m["step"]), m.string) for m in map(_PARQUET.match, listing) if m)
    width = numbered[0][0]
    for k, (step, name) in enumerate(numbered, start=1):
        if step != k * width:
            raise VmemError(f"{folder.url}: {name} follows {numbered[k - 2][1]}, but "
                            f"train-{k * width:06d}.parquet is missing (the files must cover "
                            f"steps [0, N) without a gap: train-{width:06d}.parquet first)")
    files = []
    for _, name in numbered:
        path = folder.join(name)
        handle = (path if not folder.remote
                  else _RangeFile(folder.reader(name), listing[name]))
        try:
            opened = pq.ParquetFile(handle, memory_map=not folder.remote)
        except Exception as err:  # pyarrow's own errors: one line naming the file
            raise VmemError(f"{path}: not a readable parquet file "
                            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                            ) from None
        files.append(_ParquetFile(path, opened, threading.Lock()))
    schema = files[0].file.schema_arrow
    tokens = getattr(schema.field("token_ids").type, "value_type", None) \
        if "token_ids" in schema.names else None
    if tokens is None or not pa.types.is_integer(tokens):
        raise VmemError(f"{files[0].path}: expected a column token_ids of integer lists (uid, "
                        f"batch_idx, token_ids as Pythia's parquet files hold), found "
                        f"{', '.join(f'{f.name}: {f.type}' for f in schema)}")
    reader = _ParquetOrder(files, np.dtype(tokens.to_pandas_dtype()))
    order = {"kind": "pythia-parquet", "steps_per_file": width,
             "file_sizes": {f.path: listing[name] for f, (_, name) in zip(files, numbered,
                                                                          strict=True)}}
    return Dataset("parquet", folder.url, [f.path for f in files], reader.num_sequences,
                   reader.seq_len, reader.dtype, [], order, reader)


@dataclass(frozen=True)
class _ParquetFile:
    path: str
    file: object  # pyarrow.parquet.ParquetFile
    lock: threading.Lock  # pyarrow reads one file from one thread at a time


class _ParquetOrder:
    """Rows of the parquet files end to end, each read from the row groups that hold it."""

    def __init__(self, files: list[_ParquetFile], dtype: np.dtype):
        self.files, self.dtype = files, dtype
        self._groups = [[f.file.metadata.row_group(g).num_rows
                         for g in range(f.file.metadata.num_row_groups)] for f in files]
        self._starts = list(accumulate((sum(g) for g in self._groups), initial=0))
        self.num_sequences = self._starts[-1]
        self.seq_len = self.rows(files[0], 0, 1).shape[1]

    def rows(self, file: _ParquetFile, first: int, last: int) -> np.ndarray:
        """Rows [first, last) of one file."""
        groups = self._groups[self.files.index(file)]
        bounds = list(accumulate(groups, initial=0))
        wanted = [g for g in range(len(groups)) if bounds[g] < last and first < bounds[g + 1]]
        with file.lock:
            table = file.file.read_row_groups(wanted, columns=["token_ids"])
        column = table.column("token_ids").combine_chunks()
        lengths = np.diff(np.asarray(column.offsets))
        tokens = np.asarray(column.flatten())
        if len(lengths) and np.any(lengths != lengths[0]):
            raise VmemError(f"{file.path}: its token_ids are not all the same length "
                            f"({lengths.min()} to {lengths.max()} tokens)")
        skip = first - bounds[wanted[0]]
        return tokens.reshape(len(lengths), -1)[skip:skip + last - first].astype(self.dtype)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        parts = []
        for file, at, rows in zip(self.files, self._starts[:-1], np.diff(self._starts),
                                  strict=True):
            if at < stop and start < at + rows:
                parts.append(self.rows(file, max(start, at) - at, min(stop, at + rows) - at))
                if parts[-1].shape[1] != self.seq_len:
                    raise VmemError(f"{file.path}: holds rows of {parts[-1].shape[1]} tokens, "
                                    f"{self.files[0].path} rows of {self.seq_len}")
        return np.concatenate(parts)


def _open_olmo(folder: Location, seq_len: int | None, dtype: str | np.dtype | None,
               s3_endpoint: str | None) -> Dataset:
    """OLMo's order (an order folder `vmem data olmo` wrote): slot i is instance
    global_indices[i], row k of a token file's whole rows; files and permutation checked to be
    the ones recorded."""
    where = folder.join(olmo.ORDER_FILE)
    _no_row_flags(seq_len, dtype, where)
    order = olmo.read_order(folder)
    record = order["global_indices"]
    if record["source"] == "built":
        indices_folder, indices_name = folder, record["file"]
    else:
        indices_folder, indices_name = split(record["file"], s3_endpoint=s3_endpoint)
    indices_size, *sizes = sizes_of([indices_folder.join(indices_name),
                                     *(entry["path"] for entry in order["files"])],
                                    s3_endpoint=s3_endpoint)
    if indices_size != record["entries"] * olmo.INDEX_DTYPE.itemsize:
        raise VmemError(f"{indices_folder.join(indices_name)}: "
                        f"{'missing' if indices_size is None else f'{indices_size} bytes'}, but "
                        f"{where} records {record['entries']} uint32 indices; rebuild the order "
                        f"with vmem data olmo")
    token_dtype, length = np.dtype(order["dtype"]), int(order["seq_len"])
    files = []
    for entry, size in zip(order["files"], sizes, strict=True):
        parent, name = split(entry["path"], s3_endpoint=s3_endpoint)
        if size != entry["bytes"]:
            raise VmemError(f"{entry['path']}: {'missing' if size is None else f'{size} bytes'}"
                            f", but {where} records {entry['bytes']} (the order was built over "
                            f"other files)")
        files.append(_Entries(parent.reader(name), 0, token_dtype, (entry["instances"], length),
                              parent.remote))
    indices = _Entries(indices_folder.reader(indices_name), 0, olmo.INDEX_DTYPE,
                       (record["entries"],), indices_folder.remote)
    rule = order.get("instance_filter")
    recorded = {"kind": "olmo", "order_file": where, "seed": record.get("seed", order["seed"]),
                "epoch": record.get("epoch", order["epoch"]),
                "global_indices": {k: record[k] for k in ("source", "entries", "sha256")},
                "config_sha256": order["config_sha256"], "instance_filter": rule}
    return Dataset("olmo", folder.url, [where, indices_folder.join(indices_name),
                                        *(e["path"] for e in order["files"])],
                   record["entries"], length, token_dtype, [], recorded,
                   _OlmoOrder(indices, files), int(order["sequences_per_step"]),
                   None if rule is None else olmo.InstanceFilter(**rule))


@dataclass(frozen=True)
class _OlmoOrder:
    """Rows of OLMo's order: slot i is instance global_indices[i]; instances are numbered
    through the token files in order, each file's whole rows only."""
    indices: _Entries
    files: list[_Entries]

    def __call__(self, start: int, stop: int) -> np.ndarray:
        instance = self.indices.take(np.arange(start, stop)).astype(np.int64)
        firsts = np.cumsum([0] + [f.shape[0] for f in self.files])
        owner = np.searchsorted(firsts, instance, side="right") - 1
        first = self.files[0]
        out = np.empty((stop - start, first.shape[1]), dtype=first.dtype)
        for k in np.unique(owner):
            mine = owner == k
            out[mine] = self.files[k].take(instance[mine] - firsts[k])
        return out


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


def step_size(dataset: Dataset, given: int | None) -> int:
    """Sequences per training step: the order's own batch where it records one (a different
    --sequences-per-step is refused), else `given`, else Pythia's."""
    own = dataset.sequences_per_step
    if own is not None and given not in (None, own):
        raise VmemError(f"--sequences-per-step {given}: {dataset.location} records its training "
                        f"batch, {own} sequences per step; leave the flag out")
    if own is not None:
        return own
    return SEQUENCES_PER_STEP if given is None else given


def selected_range(start: int | None, stop: int | None, step: int | None = None,
                   checkpoint: int | None = None,
                   sequences_per_step: int | None = None,
                   available: str = "") -> tuple[int, int]:
    """The index range that --start/--stop, --step or --checkpoint select (not yet checked
    against a dataset), `sequences_per_step` by default Pythia's. With --step or --checkpoint,
    --start/--stop may narrow the range inside it. `available` ends the message that asks for a
    range."""
    if sequences_per_step is None:
        sequences_per_step = SEQUENCES_PER_STEP
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
                  sequences_per_step: int | None = None) -> tuple[int, int]:
    """`selected_range` (steps of `step_size`), checked against the dataset."""
    has = f"sequences [0, {dataset.num_sequences})"
    start, stop = selected_range(start, stop, step, checkpoint,
                                 step_size(dataset, sequences_per_step),
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
    trained: np.ndarray | None = None  # bool (n,), where the order's filter marks untrained rows


def untrained(dataset: Dataset, rows: np.ndarray) -> np.ndarray | None:
    """Per row (whole instances of the dataset), whether the order's instance filter kept it out
    of training; None for an order without one."""
    rule = dataset.instance_filter
    return None if rule is None else olmo.masked(rows, rule)


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


def check_lengths(dataset: Dataset, start: int, stop: int, end: int) -> None:
    """Refuse a window ending at token `end` where a row of [start, stop) is padded before it."""
    if dataset.row_lengths is None:
        return
    lengths = dataset.row_lengths.take(np.arange(start, stop))
    short = np.flatnonzero(lengths < end)
    if short.size:
        row = start + int(short[0])
        raise VmemError(f"{dataset.location}: {short.size} of the rows [{start}, {stop}) hold "
                        f"fewer than the {end} tokens the window needs before padding (row "
                        f"{row} has {lengths[short[0]]}; padding is never scored): narrow "
                        f"--start/--stop or shorten --offset/--prompt-len/--cont-len")


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
        masked = untrained(dataset, window)
        return Batch(np.arange(first, first + len(window), dtype=np.int64),
                     np.array(window[:, offset:offset + prompt_len], dtype=np.int64),
                     np.array(window[:, offset + prompt_len:end], dtype=np.int64),
                     None if masked is None else ~masked)

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

def describe(dataset: Dataset, sequences_per_step: int | None = None) -> str:
    sequences_per_step = step_size(dataset, sequences_per_step)
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
    if dataset.order:
        seed = dataset.order.get("seed")
        lines.append(f"order      {dataset.order['kind']}"
                     + (f" (seed {seed})" if seed is not None else ""))
    if dataset.instance_filter is not None:
        rule = dataset.instance_filter
        lines.append(f"filter     instances repeating a period of {rule.min_period}-"
                     f"{rule.max_period} tokens {rule.max_count}+ times were never trained on")
    files = dataset.files
    if len(files) > 5:  # the .idx, the first two shards, the last
        files = [*files[:3], f"... {len(files) - 4} more", files[-1]]
    lines += [f"{'files' if i == 0 else '':10} {path}" for i, path in enumerate(files)]
    return "\n".join(lines)


def manifest_entry(dataset: Dataset) -> dict:
    """How a run's manifest records its dataset (`settings.data`); the location is absolute.
    An order read through maps adds `order`: its kind, files with their sizes, and seed."""
    entry = {"location": dataset.location, "layout": dataset.layout,
             "num_sequences": dataset.num_sequences, "seq_len": dataset.seq_len,
             "dtype": np.dtype(dataset.dtype).name}
    if dataset.order:
        entry["order"] = dataset.order
    return entry


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
