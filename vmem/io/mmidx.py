"""The Megatron / GPT-NeoX "mmap indexed dataset" format: read and validate an `.idx`, write one.

An `.idx` is a 34-byte header (magic, version, dtype code, N, M), then N int32 sizes, N int64
byte pointers into the `.bin`, and M int64 document-index entries. As a dataset of rows vmem
reads what Pythia publishes: every sequence has the same length and the sequences lie back to
back, so the `.bin` is a plain N x seq_len matrix and sequence i starts at byte
i * seq_len * itemsize. A document-level dataset (documents of any length, which GPT-NeoX's index
maps order) is read through its header and entries (`read_header`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from vmem.errors import VmemError
from vmem.io.atomic import atomic_path
from vmem.io.location import ReadBytes

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N sequences, M document entries
DTYPES = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    8: np.dtype(np.uint16),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
ENTRIES_PER_BLOCK = 1 << 20  # sizes/pointers are checked this many at a time (12 MiB)
SAMPLED_BLOCKS = 8  # blocks checked when reading every entry is too costly (an index on S3)



@dataclass(frozen=True)
class Index:
    num_sequences: int
    seq_len: int
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return self.seq_len * self.dtype.itemsize

    @property
    def data_bytes(self) -> int:
        """Size the `.bin` must have."""
        return self.num_sequences * self.row_bytes


def read_header(read: ReadBytes, size: int, where: str) -> tuple[int, int, np.dtype]:
    """(N sequences, M document entries, token dtype) from the header of the `.idx` at `where`,
    checked to be one whose entries fit in its `size` bytes."""
    if size < HEADER.size:
        raise VmemError(f"{where}: {size} bytes is too short for an .idx header ({HEADER.size})")
    magic, version, code, n, m = HEADER.unpack(read(0, HEADER.size).tobytes())
    if magic != MAGIC:
        raise VmemError(f"{where}: not an mmap indexed dataset index (magic {magic!r}, "
                        f"expected {MAGIC!r})")
    if version != VERSION:
        raise VmemError(f"{where}: unsupported index version {version} (expected {VERSION})")
    if code not in DTYPES:
        raise VmemError(f"{where}: unknown dtype code {code} (expected one of {sorted(DTYPES)})")
    if n == 0:
        raise VmemError(f"{where}: the index lists no sequences")
    needed = HEADER.size + 12 * n + 8 * m
    if size < needed:
        raise VmemError(f"{where}: {size} bytes, but an index of {n} sequences and {m} document "
                        f"entries needs {needed} (truncated download?)")
    return n, m, DTYPES[code]


def read_index(read: ReadBytes, size: int, where: str, *, every_entry: bool = True) -> Index:
    """Parse and validate the `.idx` at `where` (`size` bytes, read through `read`).

    With `every_entry=False` only the first, last and a few evenly spaced blocks of entries are
    checked: Pythia's index is 1.75 GB, too much to fetch from S3 before every run.
    """
    n, m, dtype = read_header(read, size, where)

    def entries(first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        sizes_at, pointers_at = HEADER.size, HEADER.size + 4 * n
        sizes = read(sizes_at + 4 * first, sizes_at + 4 * stop).view("<i4")
        pointers = read(pointers_at + 8 * first, pointers_at + 8 * stop).view("<i8")
        return sizes, pointers

    seq_len = int(read(HEADER.size, HEADER.size + 4).view("<i4")[0])
    if seq_len <= 0:
        raise VmemError(f"{where}: sequence 0 has {seq_len} tokens")
    index = Index(n, seq_len, dtype)
    blocks = -(-n // ENTRIES_PER_BLOCK)
    checked = range(blocks)
    if not every_entry and blocks > SAMPLED_BLOCKS:
        checked = sorted({int(b) for b in np.linspace(0, blocks - 1, SAMPLED_BLOCKS)})
    for block in checked:
        first = block * ENTRIES_PER_BLOCK
        sizes, pointers = entries(first, min(first + ENTRIES_PER_BLOCK, n))
        wrong = np.flatnonzero(sizes != seq_len)
        if wrong.size:
            i = first + int(wrong[0])
            raise VmemError(f"{where}: sequence sizes are not all equal (sequence {i} has "
                            f"{sizes[wrong[0]]} tokens, sequence 0 has {seq_len}); only "
                            f"fixed-length sequences are supported")
        expected = np.arange(first, first + len(pointers), dtype=np.int64) * index.row_bytes
        wrong = np.flatnonzero(pointers != expected)
        if wrong.size:
            i = first + int(wrong[0])
            raise VmemError(f"{where}: sequence pointers are not contiguous (sequence {i} starts "
                            f"at byte {pointers[wrong[0]]}, expected {expected[wrong[0]]})")
    return index


def index_blocks(num_sequences: int, seq_len: int, dtype: np.dtype) -> Iterator[bytes]:
    """The `.idx` of `num_sequences` back-to-back sequences of `seq_len` tokens, in pieces of at
    most ENTRIES_PER_BLOCK entries (an index of any size is written in bounded memory)."""
    dtype = np.dtype(dtype)
    if dtype not in CODES:
        raise VmemError(f"token dtype {dtype} is not one the .idx format can name "
                        f"(expected one of {', '.join(str(d) for d in DTYPES.values())})")
    n = num_sequences
    yield HEADER.pack(MAGIC, VERSION, CODES[dtype], n, n + 1)
    for first in range(0, n, ENTRIES_PER_BLOCK):
        yield np.full(min(ENTRIES_PER_BLOCK, n - first), seq_len, dtype="<i4").tobytes()
    for first in range(0, n, ENTRIES_PER_BLOCK):
        stop = min(first + ENTRIES_PER_BLOCK, n)
        yield (np.arange(first, stop, dtype="<i8") * (seq_len * dtype.itemsize)).tobytes()
    for first in range(0, n + 1, ENTRIES_PER_BLOCK):  # one document per sequence, as Megatron
        yield np.arange(first, min(first + ENTRIES_PER_BLOCK, n + 1), dtype="<i8").tobytes()


def index_bytes(num_sequences: int, seq_len: int, dtype: np.dtype) -> bytes:
    """The `.idx` of `num_sequences` back-to-back sequences of `seq_len` tokens."""
    return b"".join(index_blocks(num_sequences, seq_len, dtype))


def _checked_rows(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0:
        raise VmemError(f"rows to write must be a non-empty 2-D array, got shape {rows.shape}")
    return rows


def write_merged(prefix: str | os.PathLike, rows: np.ndarray) -> None:
    """Write `rows` (N x seq_len) as `PREFIX.bin` + `PREFIX.idx`, each atomically (the folder
    is created if needed)."""
    rows = _checked_rows(rows)
    idx = index_bytes(*rows.shape, rows.dtype)
    prefix = os.fspath(prefix)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with ExitStack() as renames:  # the .idx is renamed last, after its .bin
        idx_tmp = renames.enter_context(atomic_path(prefix + ".idx"))
        bin_tmp = renames.enter_context(atomic_path(prefix + ".bin"))
        rows.tofile(bin_tmp)
        with open(idx_tmp, "wb") as f:
            f.write(idx)


def shard_name(name: str, number: int, last: int) -> str:
    """`document-00003-of-00020.bin`: 5-digit numbers, the second being the LAST shard's."""
    return f"{name}-{number:05d}-of-{last:05d}.bin"


def write_sharded(folder: str | os.PathLike, rows: np.ndarray, shard_bytes: int,
                  name: str = "document") -> list[str]:
    """Write `rows` as Pythia publishes them: byte-wise shards of `shard_bytes` (the last one
    shorter or equal) plus one `NAME.idx`, into `folder`. Returns the shard paths."""
    rows = _checked_rows(rows)
    if shard_bytes <= 0:
        raise VmemError(f"shard size must be a positive number of bytes, got {shard_bytes}")
    idx = index_bytes(*rows.shape, rows.dtype)
    data = rows.reshape(-1).view(np.uint8)
    last = (len(data) - 1) // shard_bytes
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, shard_name(name, k, last)) for k in range(last + 1)]
    with ExitStack() as renames:
        idx_tmp = renames.enter_context(atomic_path(os.path.join(folder, name + ".idx")))
        for k, path in enumerate(paths):
            shard_tmp = renames.enter_context(atomic_path(path))
            data[k * shard_bytes:(k + 1) * shard_bytes].tofile(shard_tmp)
        with open(idx_tmp, "wb") as f:
            f.write(idx)
    return paths
