"""A folder on local disk or under `s3://bucket/prefix`: the one way vmem lists, reads and writes.

Datasets, run folders, merge and report all name files relative to a `Location`, so a local path
and an S3 prefix behave alike (datatrove's DataFolder is the model). Local files are
memory-mapped for reading and written atomically; S3 objects are read with byte-range GETs and
every request goes through `vmem.io.s3` (bounded retries, one-line errors). Names are
`/`-separated and may reach into subfolders (`tasks/task-….json`).

`Output` is what every command's `-o` (and `vmem evaluate --out`) becomes: checked before any
work, then written as a whole file or a whole folder, locally or to S3.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import cached_property
from pathlib import Path

import numpy as np

from vmem.errors import VmemError
from vmem.io.atomic import atomic_path, write_atomic

ReadBytes = Callable[[int, int], np.ndarray]  # (start, stop) byte offsets -> uint8 array


# Another scheme's URL would otherwise be taken as a local path (`gs://b/x` → folder `gs:`).
_OTHER_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


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


def sizes_of(paths: list[str], *, s3_endpoint: str | None = None) -> list[int | None]:
    """Each file's size in bytes (None where it is missing), listing each folder once: a
    thousand files in a few folders cost a few listings, not a thousand."""
    listings: dict[str, dict[str, int]] = {}
    sizes = []
    for path in paths:
        folder, name = split(path, s3_endpoint=s3_endpoint)
        if folder.url not in listings:
            listings[folder.url] = folder.files()
        sizes.append(listings[folder.url].get(name))
    return sizes


class Output:
    """Where a command writes: a local path or an s3:// URL (`flag` names it in messages).

    `check()` runs before any work; `file()` and `folder()` hand out a local temporary file or
    folder to fill, and put it in place only when it is complete: locally by a rename (a folder
    replaces the earlier one whole), on S3 by uploads once everything is written. A command that
    cannot write to S3 passes `local_only`, the reason, and an s3:// URL is refused at once.
    """

    def __init__(self, url: str | os.PathLike, *, s3_endpoint: str | None = None,
                 flag: str = "-o", local_only: str | None = None):
        self.given = os.fspath(url)
        self.flag = flag
        if _OTHER_URL.match(self.given) and not is_s3(self.given):
            raise VmemError(f"{flag} {self.given}: not a local path or an s3:// URL")
        if local_only and is_s3(self.given):
            raise VmemError(f"{flag} {self.given}: expected a local path ({local_only})")
        self.parent, self.name = split(self.given, s3_endpoint=s3_endpoint)
        self.remote = self.parent.remote
        # `s3://bucket` itself: a folder output may be the bucket's root.
        self.location = self.parent.child(self.name) if self.name else self.parent
        self.url = self.location.url

    def __str__(self) -> str:
        return self.url

    def _refuse(self, why: str) -> VmemError:
        return VmemError(f"{self.flag} {self.given}: {why}")

    def check(self, *, folder: bool = False) -> None:
        """Fail now, before any work, where this cannot be written: locally, a path whose
        nearest existing folder is not writable (or that is a folder where a file is expected,
        or the reverse); on S3, a bucket that cannot be listed."""
        if self.remote:
            try:
                self.parent.files()
            except VmemError as err:
                reason = str(err).removeprefix(f"{self.parent.join('')}: ")
                raise self._refuse(f"cannot write there ({reason})") from None
            if not folder and not self.name:
                raise self._refuse("expected s3://bucket/key, a file's name after the bucket")
            return
        if os.path.isdir(self.url) and not folder:
            raise self._refuse("is a folder; expected a file name")
        if os.path.exists(self.url) and folder and not os.path.isdir(self.url):
            raise self._refuse("exists and is not a folder")
        where = os.path.dirname(self.url)
        while not os.path.exists(where) and where != os.path.dirname(where):
            where = os.path.dirname(where)
        if not os.path.isdir(where) or not os.access(where, os.W_OK | os.X_OK):
            raise self._refuse(f"cannot write there ({where} is not a writable folder)")

    def contents(self) -> dict[str, int]:
        """Name → size of the files in this folder and below ({} where there is none)."""
        if not self.remote and not os.path.isdir(self.url):
            return {}
        return self.location.files(recursive=True)

    @contextmanager
    def file(self) -> Iterator[str]:
        """A local path to write the file to; it takes its place once the block ends without
        error (locally renamed, on S3 uploaded in one PUT), else it is removed."""
        if not self.remote:
            with atomic_path(self.url) as tmp:
                yield tmp
            return
        with tempfile.TemporaryDirectory(prefix="vmem-out-") as tmp:
            path = os.path.join(tmp, self.name)
            yield path
            self.parent.put_file(self.name, path)

    @contextmanager
    def folder(self) -> Iterator[Path]:
        """A local temporary folder to fill; once the block ends without error it replaces this
        folder whole (locally by renames; on S3 every file is uploaded, then the keys of an
        earlier folder that the new one lacks are deleted). On error nothing is left of it."""
        if self.remote:
            with tempfile.TemporaryDirectory(prefix="vmem-out-") as tmp:
                yield Path(tmp)
                self._upload_folder(Path(tmp))
            return
        os.makedirs(os.path.dirname(self.url), exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}.", dir=os.path.dirname(self.url)))
        try:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
            yield tmp
            self._replace_folder(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _replace_folder(self, new: Path) -> None:
        if os.path.exists(self.url):
            old = tempfile.mkdtemp(prefix=f".{self.name}.old.", dir=os.path.dirname(self.url))
            os.rename(self.url, os.path.join(old, "folder"))
            os.rename(new, self.url)
            shutil.rmtree(old)
        else:
            os.rename(new, self.url)

    def _upload_folder(self, new: Path) -> None:
        before = self.contents()
        names = sorted(Location(new).files(recursive=True))
        uploaded = []
        try:
            for name in names:
                self.location.put_file(name, new / name)
                uploaded.append(name)
        except BaseException:
            with suppress(VmemError):  # the upload's own error is the one to report
                for name in uploaded:  # what this attempt added; a key it replaced stays so
                    if name not in before:
                        self.location.delete(name)
            raise
        for name in sorted(set(before) - set(names)):
            self.location.delete(name)
