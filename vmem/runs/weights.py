"""A fingerprint of the weights a run loaded, recorded as `weights` in its manifest.

Pythia's hub has served wrong weights under intermediate revisions (EleutherAI/pythia#195, #205,
#206: checkpoints byte-identical to others, or to the final model). Two runs that claim different
checkpoints but loaded the same bytes make a comparison between them meaningless; the fingerprint
lets `vmem report` catch them, and a resumed run refuse weights that changed under it.

The fingerprint is each weight file's SHA-256 and one SHA-256 over the sorted lines
"<file sha256>  <file name>\\n" (`sha256sum`'s format). For a hub id the files' hashes are the
ones the hub publishes: its cache stores an LFS file as `blobs/<sha256>` and links the snapshot's
file to it, so nothing is read. A local folder is read once; later tasks of the run reuse the
hashes its manifest holds for files whose size and modification time are unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from vmem.errors import VmemError, first_line

WEIGHT_KINDS = ("*.safetensors", "*.bin", "*.pt")  # the order transformers and vLLM prefer
NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt"}  # a trainer's leftovers
CHUNK = 1 << 20
BLOB_SHA256 = re.compile(r"^[0-9a-f]{64}$")  # a git blob id (non-LFS file) has 40 digits


def fingerprint_weights(model: str, revision: str | None, previous: dict | None,
                        download_dir: str | None = None) -> dict:
    """`{"sha256", "files", "how"}` for the weights the engine loads for `model` at `revision`,
    or `{"sha256": None, "reason"}` where they cannot be found (not a failure: the run goes on).
    `previous` is the fingerprint the run's manifest already holds, if any."""
    local = os.path.isdir(model)
    folder = Path(model) if local else hub_snapshot(model, revision, download_dir)
    paths = weight_files(folder) if folder else []
    if not paths:
        where = folder or f"the hub cache ({model} at {revision or 'main'})"
        return {"sha256": None, "reason": f"no {', '.join(WEIGHT_KINDS)} files in {where}"}
    known = {f["name"]: f for f in (previous or {}).get("files", [])} if local else {}
    try:
        files = [_local_entry(p, known) if local else _hub_entry(p) for p in paths]
    except OSError as err:
        return {"sha256": None, "reason": first_line(err)}
    hashed = local or any("mtime_ns" in f for f in files)  # only a file that was read has it
    return {"sha256": combined_sha256(files), "files": files, "how": "hashed" if hashed else "hub"}


def combined_sha256(files: list[dict]) -> str:
    lines = sorted(f"{f['sha256']}  {f['name']}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def check_unchanged(recorded: dict | None, current: dict | None, model: str) -> None:
    """Refuse to add to a run rows from other weights than those it started with."""
    old, new = (recorded or {}).get("sha256"), (current or {}).get("sha256")
    if old and new and old != new:
        raise VmemError(f"the weights at {model} changed since this run started (sha256 "
                        f"{old[:12]} then, {new[:12]} now); restore them or use another --out")


def hub_snapshot(model: str, revision: str | None, download_dir: str | None) -> Path | None:
    """The cache's snapshot folder of the revision (None where the cache lacks it), found
    through its config.json as huggingface_hub resolves it: refs/<revision> → commit."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(model, "config.json", cache_dir=download_dir,
                                    revision=revision)
    return Path(config).parent if isinstance(config, str) else None


def weight_files(folder: Path) -> list[Path]:
    """The files of the first kind the folder holds: the ones an engine loads."""
    for kind in WEIGHT_KINDS:
        found = sorted(p for p in folder.glob(kind) if p.name not in NOT_WEIGHTS)
        if found:
            return found
    return []


def _hub_entry(path: Path) -> dict:
    blob = Path(os.path.realpath(path)).name
    if BLOB_SHA256.match(blob):
        return {"name": path.name, "size": path.stat().st_size, "sha256": blob}
    return _hashed_entry(path)  # not an LFS blob: read it


def _local_entry(path: Path, known: dict[str, dict]) -> dict:
    stat = path.stat()
    before = known.get(path.name, {})
    same = (before.get("size"), before.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
    if same and isinstance(before.get("sha256"), str):
        return before
    return _hashed_entry(path)


def _hashed_entry(path: Path) -> dict:
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": digest.hexdigest()}


