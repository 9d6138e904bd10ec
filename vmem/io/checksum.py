"""The checksum that manifests record for a local file."""

from __future__ import annotations

import hashlib
import os

HASH_BLOCK = 1 << 24


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
