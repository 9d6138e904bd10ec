"""A Hugging Face hub cache laid out on disk exactly as huggingface_hub's downloads write it.

    CACHE/models--ORG--NAME/refs/REVISION            the revision's 40-hex commit (no newline)
    CACHE/models--ORG--NAME/snapshots/COMMIT/FILE    a relative link ../../blobs/BLOB
    CACHE/models--ORG--NAME/blobs/BLOB               the file; BLOB is its ETag: the SHA-256 of
                                                     an LFS file, the git blob id of the others

so that `HF_HUB_OFFLINE=1` loads a model from it with no network, as on a compute node. The
fixture `offline_hub` is such a cache, empty, that this process uses with the network off.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

# What the hub's default .gitattributes stores in LFS (of the files a model repository holds).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")


def blob_name(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id


def write_hub_cache(cache: Path, repo: str, revision: str, files: dict[str, bytes]) -> Path:
    """Add `files` as REPO at REVISION to the cache (other revisions stay); the snapshot folder."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    (root / "blobs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = blob_name(name, data)
        (root / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


def model_files(folder: str | Path) -> dict[str, bytes]:
    """A saved model folder's files, as a download of its repository would hold them."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache this process uses, offline: HF_HUB_OFFLINE=1 and HF_HUB_CACHE as
    huggingface_hub read them when first imported (setting the variables later changes
    nothing)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
