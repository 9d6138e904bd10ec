"""`vmem import-released`: EleutherAI's published list of a final model's memorized sequences
(EleutherAI/pythia-memorized-evals: parquet rows `index,tokens`, memorized sequences only) → a
flags-only merged run over the checkpoint's range, which `vmem report` reads like any other.

The dataset stores a split as one or more files `data/<split>-0000k-of-0000n[-<hash>].parquet`;
they are taken together (named one by one, as a folder or as a glob), checked to be the whole
split and not to overlap, and counted against the dataset card where it lists the split.

The table has one row `index,memorized` per sequence of [0, step · sequences per step): 146M for
a final Pythia checkpoint. It is written in batches; `index` is delta-encoded (consecutive numbers
cost next to nothing) and the flags are mostly false, so it takes a few MB.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import sys
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import vmem
from vmem import pythia
from vmem.data import Dataset, checkpoint_range, manifest_entry
from vmem.errors import VmemError, first_line
from vmem.io.location import Location, Output, split
from vmem.runs.folder import fingerprint, json_bytes
from vmem.runs.merge import manifest_beside
from vmem.scoring import PAPER_PROMPT_LEN, RELEASED
from vmem.study.export import first_tokens
from vmem.study.merged_runs import model_and_label, run_name

PAPER_CONT_LEN = 32  # the lists hold each sequence's first 64 tokens: prompt 32 + continuation 32
FLAG_ROWS = 1 << 20  # table rows written at a time
TOKEN_ROWS = 65_536  # listed sequences whose tokens are checked at a time (with --data)
SHOWN = 5  # indices named in an error

# A split's file in the dataset's data/ folder (the hash is absent from its older files).
PART = re.compile(r"(?P<split>.+)-(?P<part>\d{5})-of-(?P<parts>\d{5})(-[0-9a-f]+)?\.parquet")
PART_NAME = "<split>-0000k-of-0000n-<hash>.parquet"
GLOB = re.compile(r"[*?\[]")
# Memorized sequences per split, as EleutherAI/pythia-memorized-evals's dataset card lists them.
CARD_ROWS = {
    "duped.70m": 463_953, "duped.160m": 689_673, "duped.410m": 970_341, "duped.1b": 1_256_141,
    "duped.1.4b": 1_373_722, "duped.2.8b": 1_675_077, "duped.6.9b": 2_120_969,
    "duped.12b": 2_382_326, "deduped.70m": 411_448, "deduped.160m": 581_195,
    "deduped.410m": 811_039, "deduped.1.4b": 1_048_097, "deduped.2.8b": 1_355_211,
    "deduped.12b": 1_871_215,
}


def check_request(step: int, sequences_per_step: int, out: str, *,
                  s3_endpoint: str | None = None) -> Output:
    """What can be checked before any input is read; returns the output folder."""
    if step <= 0:
        raise VmemError(f"--step {step}: expected the positive training step of the checkpoint "
                        f"the list was made from (Pythia's final one: {pythia.FINAL_STEP})")
    checkpoint_range(step, sequences_per_step)  # checks the sequences per step
    target = Output(out, s3_endpoint=s3_endpoint)
    target.check(folder=True)
    return target


def hub_model(model: str) -> str:
    """`pythia-12b` → `EleutherAI/pythia-12b`, the id `vmem evaluate` records, so the imported run
    groups with evaluated ones; anything else (a hub id, a local folder) as given."""
    found = pythia.parse(model)
    if found is None or os.path.isdir(model):
        return model
    hub = pythia.hub_id(found.size.name, found.deduped, found.v0)
    return hub if hub.endswith("/" + model) else model


def import_released(sources: list[str], *, model: str, step: int, out: str,
                    data: Dataset | None = None, split_name: str | None = None,
                    sequences_per_step: int = pythia.SEQUENCES_PER_STEP,
                    s3_endpoint: str | None = None) -> dict:
    """Write OUT/NAME.parquet + NAME.manifest.json from the list in `sources` (files, folders or
    globs, local or s3://: together one split's files, `split_name` choosing the split in a
    folder of several); NAME is the run's name in the report (`pythia-12b-step143000-released`).
    With `data`, each listed sequence's tokens are checked against it first. Returns the
    manifest; nothing is written when a check fails."""
    results = check_request(step, sequences_per_step, out, s3_endpoint=s3_endpoint)
    if (hub := hub_model(model)) != model:
        print(f"vmem import-released: --model {model} taken as {hub}", file=sys.stderr)
        model = hub
    _, stop = checkpoint_range(step, sequences_per_step)
    if data is not None and data.num_sequences < stop:
        raise VmemError(f"{data.location}: has {data.num_sequences} sequences, but checkpoint "
                        f"step{step} has seen [0, {stop}); is it the model's training data?")
    split_found, files = split_files(sources, split_name, s3_endpoint=s3_endpoint)
    listed, read = [], []
    for folder, name in files:
        source = folder.join(name)
        with folder.local_file(name) as path:
            listing = _open_list(path, source)
            indices = _sorted_indices(listing, source, step, stop)
            if data is not None:
                _check_tokens(listing, source, data)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        listed.append(indices)
        read.append({"file": source, "sha256": digest, "rows": int(indices.size)})
    memorized = _without_overlap([r["file"] for r in read], listed)
    _compare_with_card(split_found, memorized.size)
    settings = {
        "model": model, "revision": f"step{step}", "start": 0, "stop": stop,
        "prompt_len": PAPER_PROMPT_LEN, "cont_len": PAPER_CONT_LEN, "offset": 0,
        "eos_mode": "paper", "logprobs": False, "method": RELEASED,
        "batch_size": sequences_per_step,  # the key merged runs read sequences per step from
        "data": None if data is None else manifest_entry(data),
    }
    size = pythia.size_of(model)
    manifest = {
        "vmem_version": vmem.__version__, "settings": settings,
        "fingerprint": fingerprint(settings), "step": step,
        "params": size.params if size else None, "rows": stop,
        "source": {"split": split_found, "files": read, "rows": int(memorized.size),
                   "tokens_checked": data is not None},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    table = Output(results.location.join(run_name(model_and_label(model)[1], step, RELEASED)
                                         + ".parquet"), s3_endpoint=s3_endpoint)
    with table.file() as tmp:
        _write_flags(tmp, memorized, stop)
    # Last: the run is complete.
    results.location.put_bytes(manifest_beside(table.name), json_bytes(manifest))
    print(f"vmem import-released: {memorized.size:,} memorized of {stop:,} sequences "
          f"({memorized.size / stop:.4%}) → {table}", file=sys.stderr)
    return manifest


def split_files(sources: list[str], split_name: str | None = None, *,
                s3_endpoint: str | None = None) -> tuple[str | None, list[tuple[Location, str]]]:
    """The files `sources` name (a file, a folder's parquet files of `split_name` or of its one
    split, or a glob's matches), checked to be one split's parts, every one once; returns the
    split's name (None for one file not named as a part) and the files, in part order."""
    files = {}
    for source in sources:
        folder, name = split(source, s3_endpoint=s3_endpoint)
        if GLOB.search(name):
            names = fnmatch.filter(folder.files(), name)
            if not names:
                raise VmemError(f"{source}: matches no file")
        elif _is_folder(folder, name):
            folder = folder.child(name) if name else folder
            names = _folder_split(folder, split_name)
        else:
            names = [name]
        files.update({folder.join(n): (folder, n) for n in sorted(names)})
    if len(files) == 1 and not PART.fullmatch(next(iter(files.values()))[1]):
        if split_name is not None:
            raise VmemError(f"--split {split_name}: {next(iter(files))} is not named as a part "
                            f"of a split ({PART_NAME})")
        return None, list(files.values())
    parts = {}
    for url, (_, name) in files.items():
        found = PART.fullmatch(name)
        if found is None:
            raise VmemError(f"{url}: not named as a part of a split ({PART_NAME}, as in "
                            f"EleutherAI/pythia-memorized-evals); several files must be the "
                            f"parts of one split")
        parts[url] = (found["split"], int(found["part"]), int(found["parts"]))
    (first, (split_found, _, count)), *rest = parts.items()
    for url, (other, _, other_count) in rest:
        if (other, other_count) != (split_found, count):
            raise VmemError(f"{first} and {url} are not parts of one split (split {split_found} "
                            f"of {count} files, split {other} of {other_count}); give one "
                            f"split's files")
    by_part = {}
    for url, (_, part, _) in parts.items():
        if part in by_part:
            raise VmemError(f"{by_part[part]} and {url} are both part {part:05d} of split "
                            f"{split_found}; give one copy of each part")
        by_part[part] = url
    if split_name not in (None, split_found):
        raise VmemError(f"--split {split_name}: the files given are of split {split_found}")
    missing = sorted(set(range(count)) - set(by_part))
    if missing:
        raise VmemError(f"split {split_found}: part(s) {', '.join(f'{k:05d}' for k in missing)} "
                        f"of its {count} file(s) missing (found "
                        f"{', '.join(f'{k:05d}' for k in sorted(by_part))}); give every file "
                        f"of the split")
    return split_found, [files[by_part[k]] for k in range(count)]


def _is_folder(folder: Location, name: str) -> bool:
    """A local folder; on S3 a prefix without an object of that name (S3 has no folders)."""
    if folder.remote:
        return not name or not (name.endswith(".parquet") or folder.exists(name))
    return os.path.isdir(folder.join(name))


def _folder_split(folder: Location, split_name: str | None) -> list[str]:
    """The folder's files of split `split_name`, or of its only split."""
    splits = {}
    for name in folder.files():
        if found := PART.fullmatch(name):
            splits.setdefault(found["split"], []).append(name)
    if split_name is not None:
        if split_name not in splits:
            raise VmemError(f"--split {split_name}: {folder.url} has no file of that split "
                            f"(found {', '.join(sorted(splits)) or 'none'})")
        return splits[split_name]
    if not splits:
        raise VmemError(f"{folder.url}: no file named as a part of a split ({PART_NAME})")
    if len(splits) > 1:
        raise VmemError(f"{folder.url}: holds the files of {len(splits)} splits "
                        f"({', '.join(sorted(splits))}); name one with --split, or give its "
                        f"files")
    return next(iter(splits.values()))


def _without_overlap(sources: list[str], listed: list[np.ndarray]) -> np.ndarray:
    """The files' indices (each sorted, listed once in its file) together, sorted; an index in
    two files is refused, naming both."""
    indices = np.concatenate([np.empty(0, dtype=np.int64), *listed])
    owner = np.repeat(np.arange(len(listed)), [a.size for a in listed])
    order = np.argsort(indices, kind="stable")
    indices, owner = indices[order], owner[order]
    twice = np.flatnonzero(np.diff(indices) == 0)
    if twice.size:
        at = twice[0]
        raise VmemError(f"{sources[owner[at]]} and {sources[owner[at + 1]]} both list index "
                        f"{indices[at]} ({twice.size} index(es) in two files); a split's files "
                        f"do not overlap")
    return indices


def _compare_with_card(split_found: str | None, rows: int) -> None:
    """A warning, not an error: a list may be imported whole though its card is out of date."""
    card = CARD_ROWS.get(split_found)
    if card is not None and card != rows:
        print(f"vmem import-released: warning: split {split_found} lists {rows:,} sequences, its "
              f"dataset card {card:,}; are all its files here?", file=sys.stderr)


def _open_list(path: str, source: str) -> pq.ParquetFile:
    try:
        listing = pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowException, OSError) as err:
        raise VmemError(f"{source}: not a readable parquet file ({first_line(err)})") from None
    names = listing.schema_arrow.names
    missing = [c for c in ("index", "tokens") if c not in names]
    if missing:
        raise VmemError(f"{source}: no column {' or '.join(missing)} (found {', '.join(names)}); "
                        f"a released list has rows index,tokens")
    kind = listing.schema_arrow.field("index").type
    if not pa.types.is_integer(kind):
        raise VmemError(f"{source}: column index must hold integers, found {kind}")
    return listing


def _sorted_indices(listing: pq.ParquetFile, source: str, step: int, stop: int) -> np.ndarray:
    """The listed indices, sorted, each inside [0, stop) and listed once."""
    column = listing.read(columns=["index"]).column("index")
    if column.null_count:
        raise VmemError(f"{source}: column index has {column.null_count} empty values")
    indices = np.sort(column.to_numpy().astype(np.int64))
    outside = indices[(indices < 0) | (indices >= stop)]
    if outside.size:
        raise VmemError(f"{source}: lists {outside.size} sequence(s) outside [0, {stop}), the "
                        f"sequences checkpoint step{step} has seen ({_some(outside)}); check "
                        f"--step and --sequences-per-step")
    repeated = np.unique(indices[1:][np.diff(indices) == 0])
    if repeated.size:
        raise VmemError(f"{source}: lists {repeated.size} sequence(s) more than once "
                        f"({_some(repeated)}); a released list has one row per sequence")
    return indices


def _check_tokens(listing: pq.ParquetFile, source: str, data: Dataset) -> None:
    """Every row's tokens must equal the first as many tokens of its sequence in `data`; the
    listed sequences are read in index order, a batch of rows at a time."""
    kind = listing.schema_arrow.field("tokens").type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)) or not pa.types.is_integer(kind.value_type):
        raise VmemError(f"{source}: column tokens must hold lists of token ids, found {kind}")
    least = PAPER_PROMPT_LEN + PAPER_CONT_LEN
    wrong = []
    for batch in listing.iter_batches(batch_size=TOKEN_ROWS, columns=["index", "tokens"]):
        indices = batch.column("index").to_numpy().astype(np.int64)
        tokens = batch.column("tokens")
        listed = pc.list_flatten(tokens)
        if tokens.null_count or listed.null_count:
            raise VmemError(f"{source}: column tokens has empty values")
        lengths = pc.list_value_length(tokens).to_numpy().astype(np.int64)
        if lengths.size and not least <= lengths.min() <= lengths.max() <= data.seq_len:
            at = np.argmin(lengths) if lengths.min() < least else np.argmax(lengths)
            raise VmemError(f"{source}: index {indices[at]} has {lengths[at]} tokens; expected "
                            f"{least} to {data.seq_len} (its prompt and continuation, within "
                            f"a sequence of {data.location})")
        order = np.argsort(indices)
        truth = np.empty((indices.size, lengths.max(initial=0)), dtype=np.int64)
        truth[order] = first_tokens(data, indices[order], truth.shape[1])
        row = np.repeat(np.arange(indices.size), lengths)
        position = np.arange(row.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        differs = listed.to_numpy().astype(np.int64) != truth[row, position]
        wrong.append(indices[np.unique(row[differs])])
    wrong = np.sort(np.concatenate([np.empty(0, dtype=np.int64), *wrong]))
    if wrong.size:
        raise VmemError(f"{source}: the tokens of {wrong.size} listed sequence(s) differ from "
                        f"{data.location} ({_some(wrong)}); is it the list of this data "
                        f"(duped or deduped)?")


def _some(indices: np.ndarray) -> str:
    """`index 7`, `indices 3, 9` or `indices 3, 9, 12, 20, 31, …` (the first SHOWN)."""
    shown = ", ".join(str(i) for i in indices[:SHOWN])
    more = ", …" if indices.size > SHOWN else ""
    return f"{'index' if indices.size == 1 else 'indices'} {shown}{more}"


def _write_flags(path: str, memorized: np.ndarray, stop: int) -> None:
    """One row per index of [0, stop), sorted: memorized where `memorized` (sorted) lists it."""
    schema = pa.schema([("index", pa.int64()), ("memorized", pa.bool_())])
    with pq.ParquetWriter(
            path, schema, compression="zstd", use_dictionary=False,
            column_encoding={"index": "DELTA_BINARY_PACKED"}) as writer:
        for a in range(0, stop, FLAG_ROWS):
            b = min(a + FLAG_ROWS, stop)
            flags = np.zeros(b - a, dtype=np.bool_)
            lo, hi = np.searchsorted(memorized, [a, b])
            flags[memorized[lo:hi] - a] = True
            writer.write_table(pa.table([np.arange(a, b), flags], schema=schema))
