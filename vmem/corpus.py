"""`vmem data import`: a corpus of one's own → a merged dataset (`PREFIX.bin` + `PREFIX.idx`) in
training order, with `PREFIX.manifest.json` saying what it was made from.

Sources are rows already (a `.npy`, a raw or merged `.bin`: any dataset vmem reads) or documents
(token id lists in a parquet column or a jsonl key; jsonl text with a tokenizer). Documents become
rows by the rule the training used: all of one length as they are, `concat` (joined, each followed
by end-of-text, cut into rows; the remainder dropped) or `document` (one per row, padded). Padding
is never scored: the true length of each padded row is kept in `PREFIX.lengths.npy`, and
`vmem.data.check_lengths` refuses a window that would reach into it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from vmem.data import LENGTHS_SUFFIX, MANIFEST_SUFFIX
from vmem.errors import VmemError, first_line
from vmem.io import mmidx
from vmem.io.atomic import atomic_path
from vmem.io.checksum import sha256_of
from vmem.io.location import is_s3

PACKINGS = ("concat", "document")
ROW_SUFFIXES = (".npy", ".bin", ".idx")
DOCUMENT_SUFFIXES = (".parquet", ".jsonl")
TOKENS_FIELD = "token_ids"  # parquet's default column, as in Pythia's parquet copy
JSONL_FIELDS = (TOKENS_FIELD, "text")  # without --field, a jsonl line's first of these keys
TOKENIZE_BATCH = 1024  # documents tokenized per call


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


@dataclass
class _Documents:
    """Token id lists back to back: document k is values[offsets[k]:offsets[k + 1]]."""
    values: np.ndarray  # int64
    offsets: np.ndarray  # int64, one more than there are documents

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def import_corpus(imp: Import) -> dict:
    """Check everything, then write the dataset and its manifest (each file whole or not at all);
    returns the manifest."""
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
    lengths = None
    dropped = truncated = 0
    if kind == "rows":
        rows, files = _read_rows(imp)
        if tokenizer is not None:
            _check_vocabulary(rows.reshape(-1), tokenizer, imp)
    else:
        docs = _read_documents(imp, tokenizer)
        files = list(imp.sources)
        if packing == "rows":
            rows = _equal_rows(docs, imp)
        elif packing == "concat":
            rows, dropped = _concat(docs, eos, imp.seq_len)
        else:
            rows, lengths, truncated = _one_per_row(docs, eos, pad, imp.seq_len)
    rows = _narrowest(rows, imp)
    manifest = {
        "kind": "import",
        "sources": [_file_entry(path) for path in files],
        "field": imp.field,
        "packing": packing,
        "tokenizer": imp.tokenizer,
        "eos_id": eos,
        "pad_id": pad,
        "seq_len": int(rows.shape[1]),
        "dtype": rows.dtype.name,
        "num_sequences": int(rows.shape[0]),
        "dropped_tokens": dropped,
        "truncated_documents": truncated,
        "lengths": os.path.basename(imp.output) + LENGTHS_SUFFIX if lengths is not None else None,
        "sequences_per_step": imp.sequences_per_step,
    }
    _write(imp.output, rows, lengths, manifest)
    return manifest


# --- what is asked -------------------------------------------------------------------------------

def _check_request(imp: Import) -> None:
    if not imp.sources:
        raise VmemError("SOURCE: give at least one file to import")
    for path in imp.sources:
        if is_s3(path):
            raise VmemError(f"{path}: vmem data import reads local files (download it first)")
        if not os.path.isfile(path):
            raise VmemError(f"{path}: no such file")
    if (is_s3(imp.output) or imp.output.endswith((*ROW_SUFFIXES, ".json"))
            or not os.path.basename(imp.output)):
        raise VmemError(f"-o {imp.output}: expected a local prefix (PREFIX writes PREFIX.bin, "
                        f"PREFIX.idx and PREFIX.manifest.json)")
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

def _read_rows(imp: Import) -> tuple[np.ndarray, list[str]]:
    """Every source's rows (any dataset vmem reads), one after the other."""
    from vmem.data import open_dataset

    if imp.packing is not None:
        raise VmemError(f"--packing {imp.packing}: {imp.sources[0]} holds rows already; "
                        f"packing applies to documents (.parquet, .jsonl)")
    if imp.field is not None:
        raise VmemError(f"--field {imp.field}: {imp.sources[0]} holds rows, not named columns")
    datasets = [open_dataset(path, seq_len=imp.seq_len, dtype=imp.data_dtype)
                for path in imp.sources]
    for dataset in datasets[1:]:
        if dataset.seq_len != datasets[0].seq_len:
            raise VmemError(f"{dataset.location}: rows of {dataset.seq_len} tokens, but "
                            f"{datasets[0].location} has rows of {datasets[0].seq_len}")
    rows = np.concatenate([d.read(0, d.num_sequences).astype(np.int64) for d in datasets])
    return rows, [path for d in datasets for path in d.files]


def _read_documents(imp: Import, tokenizer) -> _Documents:
    parts = [_read_parquet(path, imp.field or TOKENS_FIELD)
             if path.endswith(".parquet") else _read_jsonl(path, imp, tokenizer)
             for path in imp.sources]
    values = np.concatenate([p.values for p in parts])
    lengths = np.concatenate([p.lengths for p in parts])
    if len(lengths) == 0 or not values.size:
        raise VmemError(f"{', '.join(imp.sources)}: no tokens to import (empty input)")
    docs = _Documents(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    if tokenizer is not None:
        _check_vocabulary(docs.values, tokenizer, imp)
    return docs


def _read_parquet(path: str, column: str) -> _Documents:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=[column])
    except (pa.ArrowInvalid, KeyError, OSError) as err:
        raise VmemError(f"{path}: cannot read the column {column!r} ({first_line(err)}); name "
                        f"the column of token id lists with --field") from None
    array = table.column(column).combine_chunks()
    kind = array.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(
            kind.value_type):
        raise VmemError(f"{path}: column {column!r} holds {kind}; expected lists of integer "
                        f"token ids")
    if array.null_count or array.values.null_count:
        raise VmemError(f"{path}: column {column!r} has null rows or token ids")
    offsets = np.asarray(array.offsets, dtype=np.int64)
    values = np.asarray(array.values.slice(offsets[0], offsets[-1] - offsets[0])
                        .to_numpy(zero_copy_only=False), dtype=np.int64)
    return _Documents(values, offsets - offsets[0])


def _jsonl_records(path: str) -> Iterator[tuple[str, object]]:
    """(path:line, the line's JSON value) for each line that is not blank."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise VmemError(f"{path}:{number}: not a JSON line ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise VmemError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start} of a "
                        f"line)") from None


def _read_jsonl(path: str, imp: Import, tokenizer) -> _Documents:
    """One JSON object a line: token ids (a list of integers) or, with a tokenizer, text."""
    keys = (imp.field,) if imp.field is not None else JSONL_FIELDS
    lists, texts = [], []
    for where, record in _jsonl_records(path):
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
        else:
            raise VmemError(f"{where}: {key!r} is neither a list of integer token ids nor text")
        if lists and texts:
            raise VmemError(f"{where}: {path} mixes text and token id lists")
    if texts:
        lists = [np.array(ids, dtype=np.int64) for first in range(0, len(texts), TOKENIZE_BATCH)
                 for ids in tokenizer(texts[first:first + TOKENIZE_BATCH])["input_ids"]]
    lengths = [len(ids) for ids in lists]
    values = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
    return _Documents(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _check_vocabulary(values: np.ndarray, tokenizer, imp: Import) -> None:
    vocabulary = len(tokenizer)
    outside = np.flatnonzero((values < 0) | (values >= vocabulary))
    if outside.size:
        raise VmemError(f"{', '.join(imp.sources)}: token id {values[outside[0]]} lies outside "
                        f"the vocabulary of --tokenizer {imp.tokenizer} (ids 0 to "
                        f"{vocabulary - 1}); {outside.size} ids in all")


# --- packing -------------------------------------------------------------------------------------

def _equal_rows(docs: _Documents, imp: Import) -> np.ndarray:
    lengths = docs.lengths
    if (lengths != lengths[0]).any():
        k = int(np.flatnonzero(lengths != lengths[0])[0])
        raise VmemError(f"{', '.join(imp.sources)}: ragged rows (row {k} has {lengths[k]} "
                        f"tokens, row 0 has {lengths[0]}); give --packing concat or document "
                        f"and --seq-len, as the training packed them")
    if imp.seq_len is not None and imp.seq_len != lengths[0]:
        raise VmemError(f"--seq-len {imp.seq_len}: the rows hold {lengths[0]} tokens; give "
                        f"--packing to cut them to another length")
    return docs.values.reshape(len(lengths), int(lengths[0]))


def _concat(docs: _Documents, eos: int, seq_len: int) -> tuple[np.ndarray, int]:
    """Each document followed by `eos`, all joined and cut into rows; returns the rows and the
    tokens left over at the end (dropped)."""
    stream = np.insert(docs.values, docs.offsets[1:], eos)
    n = len(stream) // seq_len
    if n == 0:
        raise VmemError(f"--seq-len {seq_len}: the corpus has {len(stream)} tokens with "
                        f"end-of-text, not one whole row")
    return stream[:n * seq_len].reshape(n, seq_len), len(stream) - n * seq_len


def _one_per_row(docs: _Documents, eos: int | None, pad: int,
                 seq_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One document a row (followed by `eos` if given), cut at `seq_len`, padded with `pad`;
    returns the rows, each row's true length and how many documents were cut."""
    lengths = docs.lengths + (eos is not None)
    kept = np.minimum(lengths, seq_len)
    rows = np.full((len(kept), seq_len), pad, dtype=np.int64)
    for k, (first, stop) in enumerate(zip(docs.offsets[:-1], docs.offsets[1:], strict=True)):
        tokens = docs.values[first:stop]
        if eos is not None:
            tokens = np.append(tokens, eos)
        rows[k, :kept[k]] = tokens[:seq_len]
    return rows, kept.astype(np.int32), int((lengths > seq_len).sum())


def _narrowest(rows: np.ndarray, imp: Import) -> np.ndarray:
    """uint16 where every id fits (Pythia's), else int32: the token dtypes an .idx names."""
    low, high = int(rows.min()), int(rows.max())
    if low < 0 or high > np.iinfo(np.int32).max:
        raise VmemError(f"{', '.join(imp.sources)}: token id {low if low < 0 else high} lies "
                        f"outside the token dtypes the .idx format names (uint16, int32: ids 0 "
                        f"to {np.iinfo(np.int32).max})")
    return rows.astype(np.uint16 if high <= np.iinfo(np.uint16).max else np.int32)


# --- writing -------------------------------------------------------------------------------------

def _file_entry(path: str) -> dict:
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path),
            "sha256": sha256_of(path)}


def _write(prefix: str, rows: np.ndarray, lengths: np.ndarray | None, manifest: dict) -> None:
    """The dataset, then its lengths and manifest: each renamed into place only once all are
    written; an earlier import's lengths at this prefix are removed."""
    stale = prefix + LENGTHS_SUFFIX
    with ExitStack() as renames:
        manifest_tmp = renames.enter_context(atomic_path(prefix + MANIFEST_SUFFIX))
        with open(manifest_tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
        if lengths is not None:
            lengths_tmp = renames.enter_context(atomic_path(stale))
            with open(lengths_tmp, "wb") as f:
                np.save(f, lengths)
        mmidx.write_merged(prefix, rows)
    if lengths is None and os.path.exists(stale):
        os.unlink(stale)
