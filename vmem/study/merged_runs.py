"""Merged runs (`NAME.parquet|csv` + `NAME.manifest.json`) loaded into index-aligned numpy arrays.

A run keeps one uint8 of matches per sequence (plus a float32 log-prob when recorded), so dozens
of 146M-sequence runs fit in memory; tables are read in record batches straight into the arrays.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vmem import pythia
from vmem.data import MANIFEST_SUFFIX
from vmem.errors import VmemError
from vmem.io.location import Location, split
from vmem.runs.merge import manifest_beside
from vmem.scoring import (
    GENERATE,
    METHODS,
    PAPER_PROMPT_LEN,
    TRAINED,
    columns,
    memorized_column,
    memorized_flags,
    method,
    primary_prompt_len,
    prompt_lens,
)

TABLE_SUFFIXES = (".parquet", ".csv")
BATCH_ROWS = 1 << 20
OTHER_SUITE = "other"  # every non-Pythia model: one suite, compared among themselves
# A local checkpoint folder MODEL/stepN (as `vmem demo` saves them) is a checkpoint of MODEL.
CHECKPOINT_FOLDER = re.compile(r"^(?P<model>.*[^/])/step\d+/*$")


@dataclass
class Run:
    name: str  # from the manifest: model, checkpoint and method (see `run_name`)
    table: str
    settings: dict  # the manifest's settings: what the run claims to be
    model: str  # settings.model (and the order read through, if any): groups runs into one model
    label: str  # short display name of the model
    suite: str  # models compared with each other (duped and deduped Pythia are two suites)
    step: int | None
    params: int | None
    start: int
    stop: int
    cont_len: int
    sequences_per_step: int
    tokens_per_sequence: int
    method: str  # "generate", "verify" or "released" (an imported list of memorized sequences)
    prompt_len: int  # the prompt length of the flags below (a verify run may have several)
    # Per sequence, index i for sequence start + i: a generation run's matches (uint8), or the
    # memorized flags (bool) of a verification or released run.
    matches: np.ndarray | None
    flags: np.ndarray | None
    cont_logprob: np.ndarray | None  # float32, when the run recorded --logprobs
    edit_similarity: np.ndarray | None  # float32, generation runs that recorded it
    # A verification run over several prompt lengths: prefix_match (uint8) per length.
    prefix_by_prompt_len: dict[int, np.ndarray]
    weights_sha256: str | None = None  # of the weights it loaded (None: not recorded)
    # An order with an instance filter: whether each index was trained on (None: no filter, all
    # were). An untrained index was never evaluated; the arrays above hold 0 / False / NaN there.
    trained: np.ndarray | None = None
    untrained: int = 0  # how many indices of [start, stop) the filter masked

    @property
    def span(self) -> int:
        """The indices of [start, stop): the length of every array above."""
        return self.stop - self.start

    @property
    def evaluated(self) -> int:
        """The sequences evaluated: the trained ones of [start, stop)."""
        return self.span - self.untrained

    def memorized(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Memorized flags of sequences [start, stop) (default: all the run's)."""
        a = self.start if start is None else start
        b = self.stop if stop is None else stop
        if self.flags is not None:
            return self.flags[a - self.start:b - self.start]
        return self.matches[a - self.start:b - self.start] == self.cont_len

    @property
    def compute(self) -> float | None:
        """Training compute of the checkpoint, when parameters and step are known."""
        if self.params is None or self.step is None:
            return None
        return pythia.training_compute(self.params, self.step,
                                       sequences_per_step=self.sequences_per_step,
                                       tokens_per_sequence=self.tokens_per_sequence)


def find_runs(folders: Sequence[str], *, s3_endpoint: str | None = None) -> list[str]:
    """The merged runs anywhere under the given folders (local or s3://): every NAME.parquet or
    NAME.csv with NAME.manifest.json beside it. Other tables (score files, report tables, a
    duplicates table) are not runs; a manifest needs its table."""
    tables = {}
    for results in folders:
        folder = Location(results, s3_endpoint=s3_endpoint)
        if not folder.is_folder():
            raise VmemError(f"{results}: not a folder of merged runs")
        names = set(folder.files(recursive=True))
        for manifest in sorted(n for n in names if n.endswith(MANIFEST_SUFFIX)):
            stem = manifest[:-len(MANIFEST_SUFFIX)]
            found = [stem + suffix for suffix in TABLE_SUFFIXES if stem + suffix in names]
            if len(found) != 1:
                raise VmemError(f"{folder.join(manifest)}: expected one table beside it "
                                f"({stem}.parquet or {stem}.csv), found {len(found)}")
            tables.setdefault(folder.join(found[0]), None)  # a folder given twice
    if not tables:
        raise VmemError(f"{', '.join(folders)}: no merged runs (NAME.parquet or NAME.csv with "
                        f"NAME{MANIFEST_SUFFIX}) found")
    return list(tables)


def load_runs(folders: Sequence[str], *, s3_endpoint: str | None = None) -> list[Run]:
    """Every merged run under `folders`. Two files claiming the same run are refused; two runs
    whose names would clash are named by their files instead."""
    runs = [load_run(table, s3_endpoint=s3_endpoint) for table in find_runs(
        folders, s3_endpoint=s3_endpoint)]
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    for clashing in (group for group in by_name.values() if len(group) > 1):
        for i, run in enumerate(clashing):
            for other in clashing[:i]:
                if other.settings == run.settings:
                    raise VmemError(f"{other.table} and {run.table} claim the same run "
                                    f"({run.model}, revision {run.settings.get('revision')}, "
                                    f"[{run.start}, {run.stop}), same settings); keep one")
        for run in clashing:
            run.name = run.table.rsplit(".", 1)[0]
    return runs


def model_and_label(model: str) -> tuple[str, str]:
    """The model a run's settings name, as runs are grouped by it (a checkpoint folder
    MODEL/stepN is MODEL), and its short display name."""
    if (folder := CHECKPOINT_FOLDER.match(model)) is not None:
        model = folder.group("model")
    return model, Path(model.rstrip("/")).name or model


def order_name(data: dict) -> str | None:
    """The training order a run's dataset was read through (`settings.data.order`: GPT-NeoX
    index maps by their file name, which holds the seed; Pythia's parquet files; OLMo's by
    seed, epoch and its permutation's checksum), or None for rows read as stored."""
    order = data.get("order")
    if not order:
        return None
    if maps := order.get("maps"):
        return f"{order['kind']} {Path(maps).name}"
    if indices := order.get("global_indices"):  # another config, stage or seed: another order
        return (f"{order['kind']} seed {order.get('seed')} epoch {order.get('epoch')} "
                f"{indices['sha256'][:8]}")
    return order["kind"]


def run_name(label: str, step: int | None, run_method: str) -> str:
    """`pythia-1b-step143000`, with `-verify` (`-released`) for a verification run (a released
    list)."""
    name = label if step is None else f"{label}-step{step}"
    return name if run_method == GENERATE else f"{name}-{run_method}"


def load_run(table: str, *, s3_endpoint: str | None = None) -> Run:
    """One merged run; its manifest is `NAME.manifest.json` beside the table."""
    if not table.endswith(TABLE_SUFFIXES):
        raise VmemError(f"{table}: expected a merged run table NAME.parquet or NAME.csv")
    manifest_path = manifest_beside(table)
    manifest = _read_manifest(manifest_path, s3_endpoint)
    run = _run_from_manifest(manifest, manifest_path, table)
    folder, name = split(table, s3_endpoint=s3_endpoint)
    with folder.local_file(name) as path:
        _fill_arrays(run, path)
    return run


def _table_settings(settings: dict, where: str) -> dict:
    """The settings that name a table's columns, checked; a manifest without `logprobs` or
    `prompt_len` recorded none and the paper's 32."""
    checked = dict(settings, logprobs=bool(settings.get("logprobs")),
                   prompt_len=settings.get("prompt_len", PAPER_PROMPT_LEN))
    lens = checked["prompt_len"]
    if method(checked) not in METHODS or not (
            isinstance(lens, int) or (isinstance(lens, list) and lens
                                      and all(isinstance(p, int) for p in lens))):
        raise VmemError(f"{where}: settings.method must be one of {', '.join(METHODS)} and "
                        f"settings.prompt_len a number of tokens or a list of them, got "
                        f"{checked.get('method')!r} and {lens!r}")
    return checked


def _run_from_manifest(manifest: dict, where: str, table: str) -> Run:
    """The run with its checked settings, arrays allocated, not filled."""
    settings = manifest.get("settings")
    if not isinstance(settings, dict):
        raise VmemError(f"{where}: expected a vmem manifest with a 'settings' object")
    settings = _table_settings(settings, where)
    try:
        model = str(settings["model"])
        start, stop, cont_len = (int(settings[k]) for k in ("start", "stop", "cont_len"))
    except (KeyError, TypeError, ValueError) as err:
        raise VmemError(f"{where}: settings.model/start/stop/cont_len missing or not a number "
                        f"({err})") from None
    if not 0 <= start < stop or not 0 < cont_len < 256:
        raise VmemError(f"{where}: expected 0 <= start < stop and 0 < cont_len < 256, got "
                        f"start={start} stop={stop} cont_len={cont_len}")
    step = manifest.get("step")
    if step is None:
        step = pythia.step_of_revision(settings.get("revision"))
    model, label = model_and_label(model)
    suite = pythia.suite_of(model) or OTHER_SUITE
    data = settings.get("data") or {}
    params = manifest.get("params")
    if params is None and (size := pythia.size_of(model)) is not None:
        params = size.params
    if order := order_name(data):
        # Index i of one order is not index i of another: runs over different orders are kept
        # apart wherever runs are grouped as one model or suite, so never compared.
        model, suite = f"{model} [{order}]", f"{suite} [{order}]"
    step = None if step is None else int(step)
    n, generated = stop - start, method(settings) == GENERATE
    several = not generated and len(prompt_lens(settings)) > 1
    return Run(
        name=run_name(label, step, method(settings)), table=table, settings=settings,
        model=model, label=label, suite=suite,
        step=step, params=None if params is None else int(params),
        start=start, stop=stop, cont_len=cont_len,
        sequences_per_step=int(settings.get("batch_size") or pythia.SEQUENCES_PER_STEP),
        tokens_per_sequence=int(data.get("seq_len") or pythia.TOKENS_PER_SEQUENCE + 1) - 1,
        method=method(settings), prompt_len=primary_prompt_len(settings),
        matches=np.empty(n, dtype=np.uint8) if generated else None,
        flags=None if generated else np.empty(n, dtype=np.bool_),
        cont_logprob=np.empty(n, dtype=np.float32) if settings.get("logprobs") else None,
        edit_similarity=np.empty(n, dtype=np.float32)
        if "edit_similarity" in columns(settings) else None,
        trained=np.empty(n, dtype=np.bool_) if TRAINED in columns(settings) else None,
        prefix_by_prompt_len={p: np.empty(n, dtype=np.uint8) for p in prompt_lens(settings)}
        if several else {},
        weights_sha256=(manifest.get("weights") or {}).get("sha256"),
    )


def _fill_arrays(run: Run, path: str) -> None:
    """Read the table in record batches; every row must be the next index of [start, stop).
    With a trained column, untrained rows hold nothing but their index and trained rows all."""
    settings = run.settings
    flag = memorized_column(settings)
    counts = {f"prefix_match_p{p}": array for p, array in run.prefix_by_prompt_len.items()}
    if run.matches is not None:
        counts[flag] = run.matches
    logprob = "cont_logprob" if "cont_logprob" in columns(settings) else \
        f"cont_logprob_p{run.prompt_len}"
    wanted = ["index", *dict.fromkeys([flag, *counts])]
    if run.cont_logprob is not None:
        wanted.append(logprob)
    if run.edit_similarity is not None:
        wanted.append("edit_similarity")
    if run.trained is not None:
        wanted.append(TRAINED)
    filled = 0
    for batch in _record_batches(path, wanted, columns(settings), run.table):
        index = _column(batch, "index", run.table)
        rows = len(index)
        if filled + rows > run.span:
            raise VmemError(f"{run.table}: more rows than the manifest's range "
                            f"[{run.start}, {run.stop}) has sequences")
        expected = np.arange(run.start + filled, run.start + filled + rows)
        wrong = np.flatnonzero(index != expected)
        if wrong.size:
            at = wrong[0]
            raise VmemError(f"{run.table}: row {filled + at} has index {index[at]}, expected "
                            f"{expected[at]} (one row per index of [{run.start}, {run.stop}), "
                            "sorted)")
        window = slice(filled, filled + rows)
        trained = None
        if run.trained is not None:
            trained = run.trained[window] = _column(batch, TRAINED, run.table)
        for name, array in counts.items():
            values = _column(batch, name, run.table, trained, index)
            if values.min() < 0 or values.max() > run.cont_len:
                raise VmemError(f"{run.table}: {name} must lie in 0..{run.cont_len} (cont_len), "
                                f"found {values.min()}..{values.max()}")
            array[window] = values
        if run.flags is not None:
            values = _column(batch, flag, run.table, trained, index)
            run.flags[window] = memorized_flags(settings, values)
        if run.cont_logprob is not None:
            run.cont_logprob[window] = _column(batch, logprob, run.table, trained, index)
        if run.edit_similarity is not None:
            values = _column(batch, "edit_similarity", run.table, trained, index)
            outside = ~((values >= 0) & (values <= 1))  # NaN is outside too
            if trained is not None:
                outside &= trained
            if outside.any():
                raise VmemError(f"{run.table}: edit_similarity must lie in 0..1, found "
                                f"{values[outside][0]}")
            run.edit_similarity[window] = values
        filled += rows
    if filled != run.span:
        raise VmemError(f"{run.table}: {filled} rows, but the manifest's range "
                        f"[{run.start}, {run.stop}) has {run.span} sequences")
    if run.trained is not None:
        run.untrained = run.span - int(np.count_nonzero(run.trained))


def _record_batches(path: str, wanted: list[str], all_columns: list[str],
                    where: str) -> Iterator[pa.RecordBatch]:
    try:
        if path.endswith(".parquet"):
            parquet = pq.ParquetFile(path, pre_buffer=False)  # else it caches whole columns
            _require_columns(parquet.schema_arrow.names, wanted, all_columns, where)
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted)
        else:
            read_options = pacsv.ReadOptions(block_size=16 << 20)
            _require_columns(pacsv.open_csv(path, read_options=read_options).schema.names,
                             wanted, all_columns, where)
            yield from pacsv.open_csv(path, read_options=read_options,
                                      convert_options=pacsv.ConvertOptions(include_columns=wanted))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
        raise VmemError(f"{where}: not a readable merged run table ({err})") from None


def _require_columns(found: list[str], needed: list[str], all_columns: list[str],
                     where: str) -> None:
    missing = [c for c in needed if c not in found]
    if missing:
        raise VmemError(f"{where}: missing column(s) {', '.join(missing)}; its manifest's "
                        f"settings give {','.join(all_columns)}")


def _column(batch: pa.RecordBatch, name: str, where: str, trained: np.ndarray | None = None,
            index: np.ndarray | None = None) -> np.ndarray:
    """The column's values; with `trained` (and the rows' `index`), empty exactly where it is
    False, and filled there: 0 or False, NaN for a float."""
    column = batch.column(name)
    if trained is None and column.null_count:
        raise VmemError(f"{where}: column {name} has empty values")
    if name in ("memorized", TRAINED):
        fits, kind = pa.types.is_boolean(column.type), "true/false values"
    elif name.startswith("cont_logprob") or name == "edit_similarity":
        fits, kind = pa.types.is_floating(column.type) or pa.types.is_integer(column.type), \
            "numbers"
    else:
        fits, kind = pa.types.is_integer(column.type), "integers"
    # A CSV batch of untrained rows only reads as a column of nulls.
    if not fits and not (trained is not None and pa.types.is_null(column.type)):
        raise VmemError(f"{where}: column {name} must hold {kind}, found {column.type}")
    if trained is None:
        return column.to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False) != trained)
    if wrong.size:
        at = wrong[0]
        state = ("is empty at trained index" if trained[at] else
                 "has a value at untrained index")
        raise VmemError(f"{where}: column {name} {state} {index[at]} (an index the order's "
                        f"instance filter masked holds no values, every other one all)")
    if kind == "numbers":
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # NaN where empty
    flags = kind == "true/false values"
    return column.cast(pa.bool_() if flags else pa.int64()).fill_null(
        False if flags else 0).to_numpy(zero_copy_only=False)


def _read_manifest(path: str, s3_endpoint: str | None) -> dict:
    folder, name = split(path, s3_endpoint=s3_endpoint)
    if not folder.exists(name):
        raise VmemError(f"{path}: no manifest; a merged run needs NAME{MANIFEST_SUFFIX} "
                        "beside its table")
    try:
        manifest = json.loads(folder.read_bytes(name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VmemError(f"{path}: not a readable JSON manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise VmemError(f"{path}: expected a JSON object")
    return manifest
