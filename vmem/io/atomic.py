"""Files that exist whole or not at all, even after SIGKILL, a power cut or a full disk."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from vmem.errors import VmemError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside `path` (its folder made if need be); on success fsync it and
    rename it to `path`.

    A reader (or a crash) therefore sees the whole file or none of it; on error the temporary
    file is removed, and a full disk is one VmemError naming the file and the space left.
    """
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _disk_full(err):
            free = shutil.disk_usage(os.path.dirname(path) or ".").free
            raise VmemError(f"{path}: no space left on its disk ({free / 2**20:.1f} MiB free); "
                            f"nothing was written") from None
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as pyarrow reports it (an OSError whose text carries the errno)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, OSError) and "No space left on device" in str(err)
