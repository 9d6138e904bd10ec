"""OLMo and OLMo-2's training order, as allenai/OLMo's trainer builds it (`../shared/docs/
training-orders.md`): instances cut from headerless token files, one seeded permutation, and the
instance filter that keeps some instances out of training.

Every rule here follows the trainer (olmo/data/memmap_dataset.py, iterable_dataset.py, util.py,
olmo/data/__init__.py at 59a53e3f); the tests check each against an independent transcription.
`vmem data olmo` writes an order folder from a training config: ORDER_FILE (the files, their
sizes and instances, seed, epoch, batch, filter) and the permutation, built here or a published
one named; `vmem.data` reads it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import numpy as np

from vmem.errors import VmemError
from vmem.io.atomic import atomic_path, write_atomic
from vmem.io.checksum import sha256_of
from vmem.io.location import Location, sizes_of, split

ORDER_FILE = "olmo-order.json"
INDICES_FILE = "global_indices.npy"  # a raw uint32 memmap, as the trainer saves it
INDEX_DTYPE = np.dtype("<u4")
CHECK_ENTRIES = 1 << 24  # indices checked per pass over a published file
FILTER_ROWS = 256  # instances the filter checks at a time

# Hub revisions: stage1-step928646-tokens3896B, stage2-ingredient2-step11931-tokens50B.
REVISION = re.compile(r"^stage(?P<stage>\d+)-(?:ingredient(?P<ingredient>\d+)-)?"
                      r"step(?P<step>\d+)-tokens(?P<tokens>\d+)B$")


@dataclass(frozen=True)
class InstanceFilter:
    """OLMo's `InstanceFilterConfig`: an instance where a repeat of period min_period …
    max_period occurs max_count times or more is masked (all labels −100: never trained on)."""
    max_period: int = 13
    min_period: int = 1
    max_count: int = 32


def revision_step(revision: str | None) -> int | None:
    """The step of a checkpoint revision `stageK-[ingredientJ-]stepN-tokensMB`, else None."""
    found = REVISION.match(revision or "")
    return int(found["step"]) if found else None


def instances_per_file(sizes: list[int], itemsize: int, seq_len: int) -> list[int]:
    """Each file holds floor(bytes / (itemsize · seq_len)) instances: the tokens left at a file's
    end are dropped, not carried into the next file."""
    return [size // (itemsize * seq_len) for size in sizes]


def global_indices(instances: int, *, seed: int, epoch: int = 0, world_size: int = 1,
                   drop_last: bool = True) -> np.ndarray:
    """The instance trained on at each position: `_build_global_indices` of OLMo's
    IterableDataset (PCG64(seed + epoch) shuffles arange(N) as uint32; drop_last cuts it to a
    multiple of the world size, else its start is repeated to pad it)."""
    if instances >= np.iinfo(np.uint32).max:
        raise VmemError(f"{instances:,} instances: OLMo's order holds uint32 indices")
    if drop_last and instances % world_size:
        total = math.ceil((instances - world_size) / world_size) * world_size
    else:
        total = math.ceil(instances / world_size) * world_size
    indices = np.arange(instances, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed=seed + epoch)).shuffle(indices)
    if total <= instances:
        return indices[:total]
    return np.resize(indices, total)  # repeats the start, as the trainer's padding loop does


def masked(rows: np.ndarray, rule: InstanceFilter = InstanceFilter()) -> np.ndarray:
    """Per instance (a row of `rows`), whether OLMo's instance filter masks it: some period p
    repeats at least rule.max_count times, counted as `find_periodic_sequences` counts. It views
    the instance as rows of p tokens; a run of r rows each equal to the one before, together with
    the t tokens at the end of the row before the run and the h tokens at the start of the row
    after it that also equal their predecessors, repeats r + 1 + (t + h) // p times."""
    rows = np.asarray(rows)
    out = np.zeros(len(rows), dtype=bool)
    for first in range(0, len(rows), FILTER_ROWS):  # bounds the temporaries of long instances
        block = rows[first:first + FILTER_ROWS]
        candidates = np.flatnonzero(_may_repeat(block, rule))
        if candidates.size:
            out[first + candidates] = _masked_block(block[candidates], rule)
    return out


def _may_repeat(rows: np.ndarray, rule: InstanceFilter) -> np.ndarray:
    """Per row, whether some period could repeat often enough: r whole rows of p tokens equal
    to the rows before them need r · p tokens equal to the token p before, and the count needs
    r >= count - 2 (see `_masked_block`). Few rows of real text pass; only they are counted."""
    length = rows.shape[1]
    need = max(rule.max_count, 3) - 2
    out = np.zeros(len(rows), dtype=bool)
    for period in range(rule.min_period, min(rule.max_period, length // 3) + 1):
        out |= np.count_nonzero(rows[:, period:] == rows[:, :-period], axis=1) >= need * period
    return out


def _masked_block(rows: np.ndarray, rule: InstanceFilter) -> np.ndarray:
    out = np.zeros(len(rows), dtype=bool)
    length = rows.shape[1]
    for period in range(rule.min_period, min(rule.max_period, length // 3) + 1):
        width = length + period - length % period  # always at least one padded position
        shaped = np.full((len(rows), width), -1, dtype=np.int64)
        shaped[:, :length] = rows
        shaped = shaped.reshape(len(rows), -1, period)
        equal = shaped == np.roll(shaped, 1, axis=1)  # row 0 meets the padded row: never equal
        whole = equal.all(axis=2)
        # The trainer counts only repeats of 3 or more times; a run of r rows repeats at most
        # r + 2 times, so fewer rows than that cannot reach the count.
        count = max(rule.max_count, 3)
        for i in np.flatnonzero(~out & (whole.sum(axis=1) >= count - 2)):
            out[i] = _repeats(equal[i], whole[i], period) >= count
    return out


def _repeats(equal: np.ndarray, whole: np.ndarray, period: int) -> int:
    """The most times any run of equal rows repeats (see `masked`)."""
    edges = np.diff(np.concatenate([[0], whole.astype(np.int8), [0]]))
    most = 0
    for first, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        # The rows around a maximal run are not all equal (row 0 and the padded last row never
        # are), so each has a first unequal position.
        tail = int(np.argmin(equal[first - 1][::-1]))
        head = int(np.argmin(equal[stop]))
        most = max(most, stop - first + 1 + (tail + head) // period)
    return most


# --- the training config -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """What of an OLMo training config decides its order (`TrainConfig`/`DataConfig` fields)."""
    paths: list[str]  # token files in the trainer's order
    seq_len: int  # model.max_sequence_length: tokens per instance
    dtype: str  # data.memmap_dtype
    seed: int  # data.seed, else the run's seed
    epoch: int
    sequences_per_step: int  # global_train_batch_size
    drop_last: bool
    instance_filter: InstanceFilter | None


def read_config(path: str) -> TrainConfig:
    """The order-deciding fields of the YAML config at `path`, with the trainer's defaults."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except OSError as err:
        raise VmemError(f"{path}: cannot read the OLMo config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise VmemError(f"{path}: not a YAML file ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise VmemError(f"{path}: expected an OLMo training config (a YAML mapping)")
    data, model = config.get("data") or {}, config.get("model") or {}
    if data.get("custom_dataset") or data.get("label_mask_paths"):
        raise VmemError(f"{path}: data.custom_dataset / data.label_mask_paths: vmem builds the "
                        f"order of token files listed in data.paths or data.datasets only")
    paths = data.get("paths")
    if paths and data.get("datasets"):
        raise VmemError(f"{path}: data.paths and data.datasets exclude each other (as in OLMo)")
    if not paths and isinstance(data.get("datasets"), dict):
        # The trainer concatenates the datasets' files in the order of their sorted labels.
        paths = [p for label in sorted(data["datasets"]) for p in data["datasets"][label]]
    try:
        seq_len = int(model["max_sequence_length"])
        batch = int(config["global_train_batch_size"])
        dtype = np.dtype(data.get("memmap_dtype", "uint16"))
        seed = int(data["seed"] if data.get("seed") is not None else config.get("seed", 6198))
        epoch = int(config.get("epoch") or 0)
    except (KeyError, TypeError, ValueError) as err:
        raise VmemError(f"{path}: expected model.max_sequence_length, global_train_batch_size, "
                        f"a numpy data.memmap_dtype and integer seed / epoch ({err})") from None
    if not paths or not all(isinstance(p, str) for p in paths):
        raise VmemError(f"{path}: expected data.paths (or data.datasets): the token files")
    if dtype.kind != "u" or seq_len < 1 or batch < 1:
        raise VmemError(f"{path}: expected an unsigned data.memmap_dtype and positive "
                        f"max_sequence_length and global_train_batch_size")
    rule = data.get("instance_filter")
    return TrainConfig(
        paths=list(paths), seq_len=seq_len, dtype=dtype.name, seed=seed, epoch=epoch,
        sequences_per_step=batch, drop_last=bool(data.get("drop_last", False)),
        instance_filter=None if rule is None else InstanceFilter(
            max_period=int(rule.get("repetition_max_period", 13)),
            min_period=int(rule.get("repetition_min_period", 1)),
            max_count=int(rule.get("repetition_max_count", 32))))


def resolve_path(path: str, root: str | None) -> str:
    """Where a config's token file lies: under `root` (the URL's scheme and host replaced by
    it: a mirror of the published files), else as the config names it."""
    if root is None:
        if urlsplit(path).scheme in ("http", "https"):
            raise VmemError(f"{path}: vmem reads local files and s3:// objects; mirror the "
                            f"files and give --root (the folder standing for the URLs' host)")
        return path
    parts = urlsplit(path)
    rest = parts.path if parts.scheme else path
    return root.rstrip("/") + "/" + rest.lstrip("/")


# --- the order folder ----------------------------------------------------------------------------

def build_order(config_path: str, output: str, *, root: str | None = None,
                published: str | None = None, s3_endpoint: str | None = None) -> dict:
    """Write the order folder `output` for the config: its files (sizes, instances), the
    permutation (a `published` global_indices file read in place, else built here and cached:
    kept when the folder already holds it for the same instances, seed and epoch, checksum
    verified) and ORDER_FILE last. Returns the order."""
    config = read_config(config_path)
    files = _token_files([resolve_path(p, root) for p in config.paths], s3_endpoint)
    counts = instances_per_file([f["bytes"] for f in files], np.dtype(config.dtype).itemsize,
                                config.seq_len)
    for entry, count in zip(files, counts, strict=True):
        entry["instances"] = count
    instances = sum(counts)
    if instances == 0:
        raise VmemError(f"{config_path}: its files hold no whole instance of {config.seq_len} "
                        f"tokens")
    if published is not None:
        indices = _published(published, instances, config_path)
    else:
        indices = _built(output, instances, config)
    order = {"kind": "olmo", "config": os.path.abspath(config_path),
             "config_sha256": sha256_of(config_path), "root": root,
             **{k: v for k, v in asdict(config).items() if k != "paths"},
             "instances": instances, "global_indices": indices, "files": files}
    write_atomic(os.path.join(output, ORDER_FILE), json.dumps(order, indent=1).encode())
    return order


def _token_files(paths: list[str], s3_endpoint: str | None) -> list[dict]:
    """Path and size of each token file; a missing one is one line (with how many are)."""
    sizes = sizes_of(paths, s3_endpoint=s3_endpoint)
    missing = [path for path, size in zip(paths, sizes, strict=True) if size is None]
    if missing:
        raise VmemError(f"{missing[0]}: not found ({len(missing)} of the config's {len(paths)} "
                        f"token files missing; check --root)")
    found = []
    for path, size in zip(paths, sizes, strict=True):
        folder, name = split(path, s3_endpoint=s3_endpoint)  # the path as vmem names it
        found.append({"path": folder.join(name), "bytes": size})
    return found


def _built(output: str, instances: int, config: TrainConfig) -> dict:
    """The permutation for the config, in `output`/INDICES_FILE (named relative to the folder,
    which may move): the cached one when its record says it is this permutation and its checksum
    agrees, else built."""
    path = os.path.join(output, INDICES_FILE)
    # With drop_last the trainer cuts the tail to a multiple of the world size; one rank keeps
    # every instance, and the slots past the last whole batch are never trained anyway.
    record = {"file": INDICES_FILE, "source": "built", "seed": config.seed,
              "epoch": config.epoch, "drop_last": config.drop_last, "entries": instances}
    cached = _cached_record(output)
    if (cached and os.path.exists(path) and all(cached.get(k) == v for k, v in record.items())
            and instances * INDEX_DTYPE.itemsize == os.path.getsize(path)
            and cached.get("sha256") == sha256_of(path)):
        return cached
    indices = global_indices(instances, seed=config.seed, epoch=config.epoch,
                             drop_last=config.drop_last)
    with atomic_path(path) as tmp:
        indices.astype(INDEX_DTYPE).tofile(tmp)
    return dict(record, sha256=sha256_of(path))


def _cached_record(output: str) -> dict | None:
    try:
        with open(os.path.join(output, ORDER_FILE), encoding="utf-8") as f:
            return json.load(f).get("global_indices")
    except (OSError, ValueError, AttributeError):
        return None


def _published(path: str, instances: int, config_path: str) -> dict:
    """A published global_indices file, checked against the config's instance count: no more
    entries than instances (drop_last only shortens it) and every entry an instance."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise VmemError(f"--global-indices {path}: cannot read ({err.strerror})") from None
    entries, rest = divmod(size, INDEX_DTYPE.itemsize)
    if rest or entries == 0:
        raise VmemError(f"--global-indices {path}: {size} bytes is not a raw array of uint32 "
                        f"indices (as OLMo saves global_indices.npy)")
    if entries > instances:
        raise VmemError(f"--global-indices {path}: holds {entries:,} indices, but the token "
                        f"files of {config_path} hold {instances:,} instances (another run's "
                        f"indices, or files missing from the config?)")
    values = np.memmap(path, dtype=INDEX_DTYPE, mode="r")
    for first in range(0, entries, CHECK_ENTRIES):
        if int(values[first:first + CHECK_ENTRIES].max()) >= instances:
            raise VmemError(f"--global-indices {path}: names instances beyond the {instances:,} "
                            f"that the token files of {config_path} hold")
    return {"file": os.path.abspath(path), "source": "published", "entries": entries,
            "sha256": sha256_of(path)}


def read_order(folder: Location) -> dict:
    """The order recorded in `folder`/ORDER_FILE."""
    try:
        order = json.loads(folder.read_bytes(ORDER_FILE))
    except ValueError as err:
        raise VmemError(f"{folder.join(ORDER_FILE)}: not an order file ({err}); rebuild it "
                        f"with vmem data olmo") from None
    if not isinstance(order, dict) or order.get("kind") != "olmo":
        raise VmemError(f"{folder.join(ORDER_FILE)}: not an order written by vmem data olmo")
    return order
