"""`vmem import-released`: EleutherAI's published list of a final model's memorized sequences
(EleutherAI/pythia-memorized-evals: parquet rows `index,tokens`, memorized sequences only) → a
flags-only merged run over the checkpoint's range, which `vmem report` reads like any other.

The table has one row `index,memorized` per sequence of [0, step · sequences per step): 146M for
a final Pythia checkpoint. It is written in batches; `index` is delta-encoded (consecutive numbers
cost next to nothing) and the flags are mostly false, so it takes a few MB.
"""

from __future__ import annotations

import hashlib
import os
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
from vmem.io.location import Output, split
from vmem.runs.folder import fingerprint, json_bytes
from vmem.runs.merge import manifest_beside
from vmem.scoring import PAPER_PROMPT_LEN, RELEASED
from vmem.study.export import first_tokens
from vmem.study.merged_runs import model_and_label, run_name

PAPER_CONT_LEN = 32  # the lists hold each sequence's first 64 tokens: prompt 32 + continuation 32
FLAG_ROWS = 1 << 20  # table rows written at a time
TOKEN_ROWS = 65_536  # listed sequences whose tokens are checked at a time (with --data)
SHOWN = 5  # indices named in an error


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


def import_released(source: str, *, model: str, step: int, out: str, data: Dataset | None = None,
                    sequences_per_step: int = pythia.SEQUENCES_PER_STEP,
                    s3_endpoint: str | None = None) -> dict:
    """Write OUT/NAME.parquet + NAME.manifest.json from the list at `source` (local or s3://);
    NAME is the run's name in the report (`pythia-12b-step143000-released`). With `data`, each
    listed sequence's tokens are checked against it first. Returns the manifest; nothing is
    written when a check fails."""
    results = check_request(step, sequences_per_step, out, s3_endpoint=s3_endpoint)
    if (hub := hub_model(model)) != model:
        print(f"vmem import-released: --model {model} taken as {hub}", file=sys.stderr)
        model = hub
    _, stop = checkpoint_range(step, sequences_per_step)
    if data is not None and data.num_sequences < stop:
        raise VmemError(f"{data.location}: has {data.num_sequences} sequences, but checkpoint "
                        f"step{step} has seen [0, {stop}); is it the model's training data?")
    folder, name = split(source, s3_endpoint=s3_endpoint)
    with folder.local_file(name) as path:
        listing = _open_list(path, source)
        memorized = _sorted_indices(listing, source, step, stop)
        if data is not None:
            _check_tokens(listing, source, data)
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
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
        "source": {"file": folder.join(name), "sha256": digest, "rows": int(memorized.size),
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
