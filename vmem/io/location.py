"""A folder on local disk or under `s3://bucket/prefix`: the one way vmem lists, reads and writes.

Datasets, run folders, merge and report all name files relative to a `Location`, so a local path
and an S3 prefix behave alike (datatrove's DataFolder is the model). Local files are
memory-mapped for reading and written atomically; S3 objects are read with byte-range GETs and
every request goes through `vmem.io.s3` (bounded retries, one-line errors). Names are
`/`-separated and may reach into subfolders (`tasks/task-….json`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np

from vmem.errors import VmemError
from vmem.io.atomic import atomic_path, write_atomic

ReadBytes = Callable[[int, int], np.ndarray]  # (start, stop) byte offsets -> uint8 array


def is_s3(url: object) -> bool:
    return str(url).startswith("s3://")


class Location:
    def __init__(self, url: str | os.PathLike, *, s3_endpoint: str | None = None):
        url = os.fspath(url)
        self.s3_endpoint = s3_endpoint
        self.remote = is_s3(url)
        if self.remote:
            from vmem.io import s3  # boto3 costs a second of start-up; local work never pays it

            self.bucket, key = s3.parse_s3_url(url)
            self.prefix = key.strip("/")
            self.url = s3.s3_url(self.bucket, self.prefix)  # the bucket itself keeps its "/"
        else:
            self.url = os.path.abspath(os.path.expanduser(url))

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    # -- names ----------------------------------------------------------------------------------
    def join(self, name: str) -> str:
        """The URL (or local path) of `name` inside this folder."""
        return self.url.rstrip("/") + "/" + name if self.remote else os.path.join(self.url, name)

    def child(self, name: str) -> Location:
        return Location(self.join(name), s3_endpoint=self.s3_endpoint)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @cached_property
    def _client(self):
        from vmem.io import s3

        return s3.client(self.s3_endpoint)

    # -- listing --------------------------------------------------------------------------------
    def files(self, *, recursive: bool = False) -> dict[str, int]:
        """Name → size of the files in this folder (and below it, if `recursive`); {} when the
        folder does not exist."""
        if self.remote:
            from vmem.io import s3

            prefix = self._key("")
            listing = s3.list_objects(self._client, self.bucket, prefix, recursive=recursive)
            return {k[len(prefix):]: size for k, size in listing.items()}
        if not recursive:
            try:
                with os.scandir(self.url) as entries:
                    return {e.name: e.stat().st_size for e in entries if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                return {}
            except OSError as err:
                raise VmemError(f"{self.url}: cannot list the folder ({err.strerror})") from None
        found = {}
        for folder, _, names in os.walk(self.url):
            for name in names:
                path = os.path.join(folder, name)
                found[os.path.relpath(path, self.url).replace(os.sep, "/")] = os.path.getsize(path)
        return found

    def exists(self, name: str) -> bool:
        if not self.remote:
            return os.path.isfile(self.join(name))
        from vmem.io import s3

        key = self._key(name)
        return key in s3.list_objects(self._client, self.bucket, key)

    def is_folder(self) -> bool:
        """A local folder that exists, or any S3 prefix (S3 has no empty folders to test for)."""
        return self.remote or os.path.isdir(self.url)

    # -- reading --------------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes:
        if self.remote:
            from vmem.io import s3

            return s3.get_bytes(self._client, self.bucket, self._key(name))
        try:
            return Path(self.join(name)).read_bytes()
        except FileNotFoundError:
            raise VmemError(f"{self.join(name)}: no such file") from None
        except OSError as err:
            raise VmemError(f"{self.join(name)}: cannot read ({err.strerror})") from None

    def reader(self, name: str) -> ReadBytes:
        """Byte ranges of one file: a memory map locally, a ranged GET per call on S3."""
        if self.remote:
            from vmem.io import s3

            key = self._key(name)
            return lambda start, stop: np.frombuffer(
                s3.get_range(self._client, self.bucket, key, start, stop), dtype=np.uint8)
        try:
            mapped = np.memmap(self.join(name), dtype=np.uint8, mode="r")
        except OSError as err:
            raise VmemError(f"{self.join(name)}: cannot read ({err.strerror})") from None
        return lambda start, stop: mapped[start:stop]

    @contextmanager
    def local_file(self, name: str) -> Iterator[str]:
        """A local path of the file: itself, or a temporary download of the S3 object."""
        if not self.remote:
            if not os.path.isfile(self.join(name)):
                raise VmemError(f"{self.join(name)}: no such file")
            yield self.join(name)
            return
        with tempfile.TemporaryDirectory(prefix="vmem-") as tmp:
            path = os.path.join(tmp, os.path.basename(name))
            self._download(name, path)
            yield path

    @contextmanager
    def local_folder(self, keep: Callable[[str], bool]) -> Iterator[Path]:
        """This folder on local disk: itself, or a temporary copy of the S3 files `keep` selects."""
        if not self.remote:
            yield Path(self.url)
            return
        with tempfile.TemporaryDirectory(prefix="vmem-") as tmp:
            for name in sorted(self.files(recursive=True)):
                if ".." in name.split("/"):  # a key that would land outside the copy
                    raise VmemError(f"{self.join(name)}: a key with '..' in its path")
                if keep(name):
                    self._download(name, os.path.join(tmp, name))
            yield Path(tmp)

    def _download(self, name: str, path: str) -> None:
        from vmem.io import s3

        s3.download_file(self._client, self.bucket, self._key(name), path)

    # -- writing --------------------------------------------------------------------------------
    def put_bytes(self, name: str, data: bytes) -> None:
        """Write the file whole (atomically on local disk; one PUT on S3)."""
        if self.remote:
            from vmem.io import s3

            s3.put_bytes(self._client, self.bucket, self._key(name), data)
        else:
            write_atomic(self.join(name), data)

    def put_file(self, name: str, path: str | os.PathLike) -> None:
        """Copy local file `path` here as `name`."""
        if self.remote:
            from vmem.io import s3

            s3.upload_file(self._client, path, self.bucket, self._key(name))
        else:
            with atomic_path(self.join(name)) as tmp:
                shutil.copyfile(path, tmp)

    def delete(self, name: str) -> None:
        if self.remote:
            from vmem.io import s3

            s3.delete_key(self._client, self.bucket, self._key(name))
        else:
            Path(self.join(name)).unlink(missing_ok=True)


def split(url: str | os.PathLike, *, s3_endpoint: str | None = None) -> tuple[Location, str]:
    """`folder/name` → (Location of folder, name); for S3 URLs too."""
    url = os.fspath(url)
    if is_s3(url):
        head, _, name = url.rstrip("/").rpartition("/")
        if head == "s3:/":  # s3://bucket: the bucket itself
            return Location(url, s3_endpoint=s3_endpoint), ""
        return Location(head, s3_endpoint=s3_endpoint), name
    path = os.path.abspath(os.path.expanduser(url))
    return Location(os.path.dirname(path)), os.path.basename(path)
