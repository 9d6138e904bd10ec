"""`vmem data import`: a corpus of one's own → a merged dataset (`PREFIX.bin` + `PREFIX.idx`) in
training order, with `PREFIX.manifest.json` saying what it was made from.

Sources are rows already (a `.npy`, a raw or merged `.bin`: any dataset vmem reads) or documents
(token id lists in a parquet column or a jsonl key; jsonl text with a tokenizer), local or on S3.
Documents become rows by the rule the training used: all of one length as they are, `concat`
(joined, each followed by end-of-text, cut into rows; the remainder dropped) or `document` (one
per row, padded). Padding is never scored: the true length of each padded row is kept in
`PREFIX.lengths.npy`, and `vmem.data.check_lengths` refuses a window that reaches into it.

The corpus flows through in chunks (source → documents → rows → files), so memory stays bounded
whatever its size: rows go to the `.bin`'s temporary file as int32 and are narrowed to uint16 in
place at the end when every id fits; each source's checksum is taken from the bytes read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from vmem.data import LENGTHS_SUFFIX, MANIFEST_SUFFIX, Dataset
from vmem.errors import VmemError, first_line
from vmem.io import mmidx
from vmem.io.atomic import atomic_path
from vmem.io.checksum import sha256_of
from vmem.io.location import Output, is_s3, split

PACKINGS = ("concat", "document")
ROW_SUFFIXES = (".npy", ".bin", ".idx")
DOCUMENT_SUFFIXES = (".parquet", ".jsonl")
TOKENS_FIELD = "token_ids"  # parquet's default column, as in Pythia's parquet copy
JSONL_FIELDS = (TOKENS_FIELD, "text")  # without --field, a jsonl line's first of these keys
TOKENIZE_BATCH = 1024  # documents tokenized per call
CHUNK_TOKENS = 1 << 23  # tokens held at a time: rows read, token id lists gathered, ids narrowed
CHUNK_DOCUMENTS = 4096  # parquet rows or jsonl lines gathered at most before they are packed
READ_BYTES = 8 << 20  # a source read front to back (jsonl, a checksum, a download): per request
UINT16_MAX, INT32_MAX = int(np.iinfo(np.uint16).max), int(np.iinfo(np.int32).max)


@dataclass(frozen=True)
class Import:
    sources: list[str]
    output: str  # the prefix written: OUTPUT.bin, .idx, .manifest.json (and .lengths.npy)
    seq_len: int | None = None  # rows' length: of a raw .bin source, or of packed rows
    data_dtype: str | None = None  # of a raw .bin source
    field: str | None = None  # parquet column or jsonl key
    tokenizer: str | None = None
    packing: str | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    sequences_per_step: int | None = None
    s3_endpoint: str | None = None


@dataclass
class _Documents:
    """Token id lists back to back: document k is values[offsets[k]:offsets[k + 1]]."""
    values: np.ndarray  # int64
    offsets: np.ndarray  # int64, one more than there are documents

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def of(cls, lists: list) -> _Documents:
        lengths = [len(ids) for ids in lists]
        values = np.concatenate(lists).astype(np.int64) if lists else np.empty(0, np.int64)
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def import_corpus(imp: Import) -> dict:
    """Check the request, then stream the corpus into the dataset's files (each renamed into
    place, whole, only once all are written; nothing is left on error); returns the manifest."""
    _check_request(imp)
    kind = _kind(imp.sources)
    tokenizer = None
    if imp.tokenizer is not None:
        from vmem.study.taxonomy import load_tokenizer

        tokenizer = load_tokenizer(imp.tokenizer)
    packing = imp.packing or "rows"
    eos, pad = imp.eos_id, None
    if packing == "concat":
        eos = _id_or_tokenizers(imp.eos_id, tokenizer, "eos_token_id",
                                "--packing concat: joins documents with end-of-text; give "
                                "--eos-id (or a --tokenizer that has one)")
    elif packing == "document":
        pad = _id_or_tokenizers(imp.pad_id, tokenizer, "pad_token_id",
                                "--packing document: pads each row; give --pad-id (the id the "
                                "training padded with; it is never scored)")
    sources: list[dict] = []  # each source file's manifest entry, made as it is read through
    tally = {"dropped_tokens": 0, "truncated_documents": 0}
    if kind == "rows":
        blocks = ((rows, None) for dataset in _row_datasets(imp)
                  for rows in _dataset_rows(dataset, tokenizer, imp, sources))
    else:
        docs = _documents(imp, tokenizer, sources)
        if packing == "rows":
            blocks = _equal_rows(docs, imp)
        elif packing == "concat":
            blocks = _concat(docs, eos, imp.seq_len, tally)
        else:
            blocks = _one_per_row(docs, eos, pad, imp.seq_len, tally)
    with _DatasetFiles(imp.output, packing == "document", ", ".join(imp.sources)) as out:
        for rows, lengths in blocks:
            out.add(rows, lengths)
        out.finish()
        manifest = {
            "kind": "import",
            "sources": sources,
            "field": imp.field,
            "packing": packing,
            "tokenizer": imp.tokenizer,
            "eos_id": eos,
            "pad_id": pad,
            "seq_len": out.seq_len,
            "dtype": out.dtype.name,
            "num_sequences": out.num_sequences,
            **tally,
            "lengths": (os.path.basename(imp.output) + LENGTHS_SUFFIX
                        if packing == "document" else None),
            "sequences_per_step": imp.sequences_per_step,
        }
        out.write_manifest(manifest)
    return manifest


# --- what is asked -------------------------------------------------------------------------------

def _check_request(imp: Import) -> None:
    if not imp.sources:
        raise VmemError("SOURCE: give at least one file to import")
    for path in imp.sources:
        _size(path, imp.s3_endpoint)
    if not is_s3(imp.output) and (imp.output.endswith((*ROW_SUFFIXES, ".json"))
                                  or not os.path.basename(imp.output)):
        raise VmemError(f"-o {imp.output}: expected a local prefix (PREFIX writes PREFIX.bin, "
                        f"PREFIX.idx and PREFIX.manifest.json)")
    Output(imp.output, local_only="vmem data import writes local files; copy them to S3 "
                                  "afterwards").check()
    if imp.packing is not None and imp.packing not in PACKINGS:
        raise VmemError(f"--packing {imp.packing}: expected one of {', '.join(PACKINGS)}")
    if imp.packing is not None and imp.seq_len is None:
        raise VmemError(f"--packing {imp.packing}: give --seq-len, the length of the rows the "
                        f"training cut")
    if imp.seq_len is not None and imp.seq_len <= 0:
        raise VmemError(f"--seq-len {imp.seq_len}: must be a positive number of tokens")
    if imp.sequences_per_step is not None and imp.sequences_per_step <= 0:
        raise VmemError(f"--sequences-per-step {imp.sequences_per_step}: must be a positive "
                        f"number of sequences")
    for flag, value in (("--eos-id", imp.eos_id), ("--pad-id", imp.pad_id)):
        if value is not None and value < 0:
            raise VmemError(f"{flag} {value}: token ids are at least 0")


def _kind(sources: list[str]) -> str:
    """"rows" (.npy, .bin, .idx) or "documents" (.parquet, .jsonl), the same for every source."""
    kinds = set()
    for path in sources:
        if path.endswith(ROW_SUFFIXES):
            kinds.add("rows")
        elif path.endswith(DOCUMENT_SUFFIXES):
            kinds.add("documents")
        else:
            raise VmemError(f"{path}: expected a .npy or .bin of token rows, a .parquet of token "
                            f"id lists, or a .jsonl of token id lists or text")
    if len(kinds) > 1:
        raise VmemError(f"{', '.join(sources)}: mixes rows (.npy, .bin) with documents "
                        f"(.parquet, .jsonl); import one kind at a time")
    return kinds.pop()


def _id_or_tokenizers(given: int | None, tokenizer, attribute: str, missing: str) -> int:
    """A special token's id: as given, else the tokenizer's (`missing` is the error without)."""
    found = given if given is not None else getattr(tokenizer, attribute, None)
    if found is None:
        raise VmemError(missing)
    return int(found)


# --- reading -------------------------------------------------------------------------------------

def _size(path: str, s3_endpoint: str | None) -> int:
    """The bytes of a source file, local or on S3 (one line where there is none)."""
    folder, name = split(path, s3_endpoint=s3_endpoint)
    size = folder.files().get(name) if name else None
    if size is None:
        raise VmemError(f"{path}: no such file")
    return size


def _read_through(path: str, s3_endpoint: str | None, sources: list[dict]) -> Iterator[np.ndarray]:
    """The file's bytes front to back, READ_BYTES at a time (a ranged GET each on S3); once all
    are read, its manifest entry, hashed from them, joins `sources`."""
    folder, name = split(path, s3_endpoint=s3_endpoint)
    size = _size(path, s3_endpoint)
    read = folder.reader(name) if size else None  # an empty file cannot be memory-mapped
    digest = hashlib.sha256()
    for at in range(0, size, READ_BYTES):
        block = read(at, min(at + READ_BYTES, size))
        digest.update(block)
        yield block
    sources.append(_entry(folder.join(name), size, digest))


def _entry(path: str, size: int, digest) -> dict:
    return {"path": path, "bytes": size, "sha256": digest.hexdigest()}


def _row_datasets(imp: Import) -> list[Dataset]:
    """Every source opened as a dataset of rows (any dataset vmem reads), all of one length."""
    from vmem.data import open_dataset

    if imp.packing is not None:
        raise VmemError(f"--packing {imp.packing}: {imp.sources[0]} holds rows already; "
                        f"packing applies to documents (.parquet, .jsonl)")
    if imp.field is not None:
        raise VmemError(f"--field {imp.field}: {imp.sources[0]} holds rows, not named columns")
    datasets = [open_dataset(path, seq_len=imp.seq_len, dtype=imp.data_dtype,
                             s3_endpoint=imp.s3_endpoint) for path in imp.sources]
    for dataset in datasets[1:]:
        if dataset.seq_len != datasets[0].seq_len:
            raise VmemError(f"{dataset.location}: rows of {dataset.seq_len} tokens, but "
                            f"{datasets[0].location} has rows of {datasets[0].seq_len}")
    return datasets


def _dataset_rows(dataset: Dataset, tokenizer, imp: Import,
                  sources: list[dict]) -> Iterator[np.ndarray]:
    """The dataset's rows, CHUNK_TOKENS at a time; then its files' manifest entries. A file of
    rows is hashed from the bytes read (after its header); any other (the .idx) is read whole."""
    pieces = dataset.pieces
    digests = [hashlib.sha256() for _ in pieces]
    for piece, digest in zip(pieces, digests, strict=True):
        digest.update(piece.read(0, piece.offset))  # a .npy's header
    starts = list(accumulate((p.size for p in pieces), initial=0))
    step = max(1, CHUNK_TOKENS // dataset.seq_len)
    for first in range(0, dataset.num_sequences, step):
        rows = dataset.read(first, min(first + step, dataset.num_sequences))
        data = rows.reshape(-1).view(np.uint8)
        at = first * dataset.seq_len * dataset.dtype.itemsize  # where `data` starts in the pieces
        for digest, begin, end in zip(digests, starts, starts[1:], strict=False):
            if begin < at + len(data) and at < end:
                digest.update(data[max(begin - at, 0):min(end - at, len(data))])
        if tokenizer is not None:
            _check_vocabulary(rows.reshape(-1), tokenizer, imp)
        yield rows
    hashed = {p.path: _entry(p.path, p.offset + p.size, d)
              for p, d in zip(pieces, digests, strict=True)}
    sources.extend(hashed.get(path) or _whole_file(path, imp.s3_endpoint)
                   for path in dataset.files)


def _whole_file(path: str, s3_endpoint: str | None) -> dict:
    """The manifest entry of a file read for its checksum alone."""
    if is_s3(path):
        entries: list[dict] = []
        for _ in _read_through(path, s3_endpoint, entries):
            pass
        return entries[0]
    path = os.path.abspath(path)
    return {"path": path, "bytes": os.path.getsize(path), "sha256": sha256_of(path)}


def _documents(imp: Import, tokenizer, sources: list[dict]) -> Iterator[_Documents]:
    """Every source's documents in order, a chunk at a time, checked against the tokenizer's
    vocabulary; an empty corpus is refused once all are read."""
    documents = tokens = 0
    for path in imp.sources:
        chunks = (_parquet_documents(path, imp.field or TOKENS_FIELD, imp.s3_endpoint, sources)
                  if path.endswith(".parquet") else _jsonl_documents(path, imp, tokenizer, sources))
        for docs in chunks:
            documents += len(docs.lengths)
            tokens += docs.values.size
            if tokenizer is not None:
                _check_vocabulary(docs.values, tokenizer, imp)
            yield docs
    if documents == 0 or tokens == 0:
        raise VmemError(f"{', '.join(imp.sources)}: no tokens to import (empty input)")


def _parquet_documents(path: str, column: str, s3_endpoint: str | None,
                       sources: list[dict]) -> Iterator[_Documents]:
    """A parquet file's column of token id lists, CHUNK_DOCUMENTS rows at a time. pyarrow reads a
    file's footer first, so one on S3 is downloaded (to $TMPDIR, hashed on the way) first."""
    if not is_s3(path):
        yield from _parquet_batches(path, path, column)
        sources.append(_whole_file(path, s3_endpoint))
        return
    with tempfile.TemporaryDirectory(prefix="vmem-import-") as tmp:
        local = os.path.join(tmp, "source.parquet")
        with open(local, "wb") as f:
            for block in _read_through(path, s3_endpoint, sources):
                f.write(block)
        yield from _parquet_batches(local, path, column)


def _parquet_batches(local: str, path: str, column: str) -> Iterator[_Documents]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(err: BaseException) -> VmemError:
        return VmemError(f"{path}: cannot read the column {column!r} ({first_line(err)}); name "
                         f"the column of token id lists with --field")

    try:
        file = pq.ParquetFile(local, memory_map=True)
        kind = file.schema_arrow.field(column).type
    except (pa.ArrowInvalid, KeyError, OSError) as err:
        raise unreadable(err) from None
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(
            kind.value_type):
        raise VmemError(f"{path}: column {column!r} holds {kind}; expected lists of integer "
                        f"token ids")
    batches = file.iter_batches(batch_size=CHUNK_DOCUMENTS, columns=[column])
    while True:
        try:
            array = next(batches).column(0)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as err:
            raise unreadable(err) from None
        if array.null_count or array.values.null_count:
            raise VmemError(f"{path}: column {column!r} has null rows or token ids")
        offsets = np.asarray(array.offsets, dtype=np.int64)
        values = np.asarray(array.values.slice(offsets[0], offsets[-1] - offsets[0])
                            .to_numpy(zero_copy_only=False), dtype=np.int64)
        yield _Documents(values, offsets - offsets[0])


def _jsonl_records(path: str, s3_endpoint: str | None,
                   sources: list[dict]) -> Iterator[tuple[str, object]]:
    """(path:line, the line's JSON value) for each line that is not blank."""
    number, tail = 0, b""

    def record(line: bytes) -> tuple[str, object] | None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise VmemError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} "
                            f"of the line)") from None
        if not text.strip():
            return None
        try:
            return f"{path}:{number}", json.loads(text)
        except json.JSONDecodeError as err:
            raise VmemError(f"{path}:{number}: not a JSON line ({err.msg})") from None

    for block in _read_through(path, s3_endpoint, sources):
        *lines, tail = (tail + block.tobytes()).split(b"\n")
        for line in lines:
            number += 1
            if found := record(line):
                yield found
    number += 1
    if found := record(tail):
        yield found


def _jsonl_documents(path: str, imp: Import, tokenizer,
                     sources: list[dict]) -> Iterator[_Documents]:
    """One JSON object a line: token ids (a list of integers) or, with a tokenizer, text (the
    same in every line of a file); CHUNK_DOCUMENTS lists or TOKENIZE_BATCH texts at a time."""
    keys = (imp.field,) if imp.field is not None else JSONL_FIELDS
    lists, texts, tokens, holds = [], [], 0, None
    for where, record in _jsonl_records(path, imp.s3_endpoint, sources):
        key = next((k for k in keys if isinstance(record, dict) and k in record), None)
        if key is None:
            raise VmemError(f"{where}: has no key {' or '.join(map(repr, keys))}; name the key "
                            f"with --field")
        value = record[key]
        if isinstance(value, str):
            if tokenizer is None:
                raise VmemError(f"{where}: {key!r} is text; give the --tokenizer the training "
                                f"used")
            texts.append(value)
        elif isinstance(value, list) and all(type(v) is int for v in value):
            if any(abs(v) >= 2**63 for v in value):
                raise VmemError(f"{where}: a token id beyond 64 bits")
            lists.append(np.array(value, dtype=np.int64))
            tokens += len(value)
        else:
            raise VmemError(f"{where}: {key!r} is neither a list of integer token ids nor text")
        holds = holds or type(value)
        if type(value) is not holds:
            raise VmemError(f"{where}: {path} mixes text and token id lists")
        if len(texts) == TOKENIZE_BATCH:
            yield _Documents.of(tokenizer(texts)["input_ids"])
            texts = []
        if len(lists) == CHUNK_DOCUMENTS or tokens >= CHUNK_TOKENS:
            yield _Documents.of(lists)
            lists, tokens = [], 0
    if texts:
        yield _Documents.of(tokenizer(texts)["input_ids"])
    if lists:
        yield _Documents.of(lists)


def _check_vocabulary(values: np.ndarray, tokenizer, imp: Import) -> None:
    vocabulary = len(tokenizer)
    outside = np.flatnonzero((values < 0) | (values >= vocabulary))
    if outside.size:
        raise VmemError(f"{', '.join(imp.sources)}: token id {values[outside[0]]} lies outside "
                        f"the vocabulary of --tokenizer {imp.tokenizer} (ids 0 to "
                        f"{vocabulary - 1})")


# --- packing: chunks of documents → (rows, their true lengths or None) ---------------------------

def _equal_rows(chunks: Iterator[_Documents],
                imp: Import) -> Iterator[tuple[np.ndarray, None]]:
    first, seen = None, 0
    for docs in chunks:
        lengths = docs.lengths
        if first is None:
            first = int(lengths[0])
        if (lengths != first).any():
            k = int(np.flatnonzero(lengths != first)[0])
            raise VmemError(f"{', '.join(imp.sources)}: ragged rows (row {seen + k} has "
                            f"{lengths[k]} tokens, row 0 has {first}); give --packing concat or "
                            f"document and --seq-len, as the training packed them")
        if imp.seq_len is not None and imp.seq_len != first:
            raise VmemError(f"--seq-len {imp.seq_len}: the rows hold {first} tokens; give "
                            f"--packing to cut them to another length")
        seen += len(lengths)
        yield docs.values.reshape(len(lengths), first), None


def _concat(chunks: Iterator[_Documents], eos: int, seq_len: int,
            tally: dict) -> Iterator[tuple[np.ndarray, None]]:
    """Each document followed by `eos`, all joined and cut into rows; the tokens left over at the
    end are dropped (counted in `tally`)."""
    left, made = np.empty(0, dtype=np.int64), 0
    for docs in chunks:
        stream = np.concatenate([left, np.insert(docs.values, docs.offsets[1:], eos)])
        n = len(stream) // seq_len
        if n:
            yield stream[:n * seq_len].reshape(n, seq_len), None
        left, made = stream[n * seq_len:], made + n
    if made == 0:
        raise VmemError(f"--seq-len {seq_len}: the corpus has {len(left)} tokens with "
                        f"end-of-text, not one whole row")
    tally["dropped_tokens"] = len(left)


def _one_per_row(chunks: Iterator[_Documents], eos: int | None, pad: int, seq_len: int,
                 tally: dict) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One document a row (followed by `eos` if given), cut at `seq_len`, padded with `pad`; with
    each row's true length (the documents cut are counted in `tally`)."""
    for docs in chunks:
        lengths = docs.lengths + (eos is not None)
        kept = np.minimum(lengths, seq_len)
        rows = np.full((len(kept), seq_len), pad, dtype=np.int64)
        for k, (first, stop) in enumerate(zip(docs.offsets[:-1], docs.offsets[1:], strict=True)):
            tokens = docs.values[first:stop]
            if eos is not None:
                tokens = np.append(tokens, eos)
            rows[k, :kept[k]] = tokens[:seq_len]
        tally["truncated_documents"] += int((lengths > seq_len).sum())
        yield rows, kept


# --- writing -------------------------------------------------------------------------------------

class _DatasetFiles:
    """PREFIX.bin, .idx, (.lengths.npy) and .manifest.json, each filled in a temporary file beside
    it and renamed into place only when all are whole; on error none is left, nor a folder made
    for them. An earlier import's lengths at this prefix are removed when there are none now.

    Rows arrive in blocks and go to the `.bin` as int32; `finish` narrows them in place to uint16
    (the dtype Pythia's data has) when every id fits, writes the `.idx` and the lengths."""

    def __init__(self, prefix: str, with_lengths: bool, where: str):
        self.prefix, self.with_lengths, self.where = prefix, with_lengths, where
        self.seq_len = self.num_sequences = 0
        self.dtype = np.dtype("<i4")
        self._high = 0
        self._stack = ExitStack()

    def __enter__(self) -> _DatasetFiles:
        folder = os.path.dirname(os.path.abspath(self.prefix))
        self._made = []  # the folders this import creates, deepest first
        while not os.path.exists(folder):
            self._made.append(folder)
            folder = os.path.dirname(folder)
        enter = self._stack.enter_context
        try:
            self._manifest = enter(atomic_path(self.prefix + MANIFEST_SUFFIX))
            if self.with_lengths:
                self._lengths = enter(atomic_path(self.prefix + LENGTHS_SUFFIX))
                self._lengths_raw = enter(tempfile.TemporaryFile(dir=os.path.dirname(
                    self._lengths)))
            self._idx = enter(atomic_path(self.prefix + ".idx"))
            self._bin = enter(open(enter(atomic_path(self.prefix + ".bin")), "w+b"))
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            if isinstance(err, OSError):  # a folder that cannot be made (a full disk: VmemError)
                raise VmemError(f"-o {self.prefix}: cannot write there ({err.strerror})") from None
            raise
        return self

    def __exit__(self, kind, err, trace) -> bool:
        try:
            if err is None:
                self._stack.close()
            else:
                self._stack.__exit__(kind, err, trace)
        except BaseException:
            self._remove_made()
            raise
        if err is not None:
            self._remove_made()
        elif not self.with_lengths and os.path.exists(self.prefix + LENGTHS_SUFFIX):
            os.unlink(self.prefix + LENGTHS_SUFFIX)
        return False

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: someone else's files are there now
                return

    def add(self, rows: np.ndarray, lengths: np.ndarray | None) -> None:
        if rows.size == 0:
            return
        low, high = int(rows.min()), int(rows.max())
        if low < 0 or high > INT32_MAX:
            raise VmemError(f"{self.where}: token id {low if low < 0 else high} lies outside the "
                            f"token dtypes the .idx format names (uint16, int32: ids 0 to "
                            f"{INT32_MAX})")
        self.seq_len = rows.shape[1]
        self.num_sequences += rows.shape[0]
        self._high = max(self._high, high)
        self._bin.write(rows.astype("<i4").tobytes())
        if lengths is not None:
            self._lengths_raw.write(lengths.astype("<i4").tobytes())

    def finish(self) -> None:
        if self._high <= UINT16_MAX:
            self._narrow()
        self._bin.close()
        with open(self._idx, "wb") as f:
            for block in mmidx.index_blocks(self.num_sequences, self.seq_len, self.dtype):
                f.write(block)
        if self.with_lengths:
            self._lengths_raw.seek(0)
            with open(self._lengths, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)),
                    "fortran_order": False, "shape": (self.num_sequences,)})
                shutil.copyfileobj(self._lengths_raw, f, READ_BYTES)

    def _narrow(self) -> None:
        """The int32 ids as uint16, in place: each chunk is written before the bytes it was read
        from, never over ids still to be read."""
        total, f = self.num_sequences * self.seq_len, self._bin
        for first in range(0, total, CHUNK_TOKENS):
            f.seek(4 * first)
            ids = np.frombuffer(f.read(4 * min(CHUNK_TOKENS, total - first)), dtype="<i4")
            f.seek(2 * first)
            f.write(ids.astype("<u2").tobytes())
        f.truncate(2 * total)
        self.dtype = np.dtype("<u2")

    def write_manifest(self, manifest: dict) -> None:
        with open(self._manifest, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
