"""The data path without an engine: batches/s and sequences/s through `iter_batches` from a merged
memmap, Pythia-style shards and S3 (a moto server on loopback), on a synthetic dataset written in
the real format (uint16 rows of 2049 tokens by default).

Local sources are timed twice: "cold" after asking the kernel to drop the files' pages
(posix_fadvise DONTNEED, these files only), then "warm" with them in the page cache.
S3 through moto measures vmem's ranged-GET path on one machine, not a real object store.

    .venv/bin/python bench/data_path.py --sequences 200000 --s3-sequences 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.s3_server

from tests.s3_server import FAKE_CREDENTIALS, moto_server  # noqa: E402
from vmem.data import Dataset, iter_batches, open_dataset  # noqa: E402
from vmem.io import mmidx, s3  # noqa: E402


def write_dataset(folder: Path, sequences: int, seq_len: int, shards: int) -> None:
    """`folder/pile.{bin,idx}` and `folder/shards/` (`shards` byte-wise pieces) of random rows."""
    rows = np.random.default_rng(0).integers(0, 50_304, size=(sequences, seq_len),
                                             dtype=np.uint16)
    mmidx.write_merged(folder / "pile", rows)
    shard_bytes = -(-rows.nbytes // shards) + 1  # +1: not a multiple of the row size
    mmidx.write_sharded(folder / "shards", rows, shard_bytes)


def drop_from_page_cache(dataset: Dataset) -> None:
    for path in dataset.files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_batches(dataset: Dataset, args: argparse.Namespace) -> tuple[float, int]:
    start = time.perf_counter()
    batches = 0
    for _ in iter_batches(dataset, 0, dataset.num_sequences, rows=args.batch_size,
                          prompt_len=args.prompt_len, cont_len=args.cont_len,
                          prefetch=args.prefetch):
        batches += 1
    return time.perf_counter() - start, batches


def upload(folder: Path, endpoint: str) -> str:
    client = s3.client(endpoint)
    client.create_bucket(Bucket="bench")
    for path in [folder / "pile.bin", folder / "pile.idx", *sorted((folder / "shards").iterdir())]:
        s3.upload_file(client, path, "bench", str(path.relative_to(folder)))
    return "s3://bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=200_000, help="local dataset size")
    parser.add_argument("--s3-sequences", type=int, default=20_000, help="S3 dataset size")
    parser.add_argument("--seq-len", type=int, default=2049)
    parser.add_argument("--shards", type=int, default=21, help="as Pythia: 00000..00020")
    parser.add_argument("--batch-size", type=int, default=1024, help="sequences per batch")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--cont-len", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vmem-bench-data"))
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    args = parser.parse_args()

    local, remote = args.dir / "local", args.dir / "s3"
    started = time.perf_counter()
    write_dataset(local, args.sequences, args.seq_len, args.shards)
    write_dataset(remote, args.s3_sequences, args.seq_len, args.shards)
    print(f"wrote {args.sequences:,} + {args.s3_sequences:,} sequences x {args.seq_len} uint16 "
          f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    results = []
    for name, path in [("merged (memmap)", local / "pile"), ("sharded", local / "shards")]:
        dataset = open_dataset(path)
        drop_from_page_cache(dataset)  # before anything maps them: mapped pages would stay
        for cache in ("cold", "warm"):
            results.append((f"{name}, {cache}", dataset, *time_batches(dataset, args)))
    os.environ.update(FAKE_CREDENTIALS)
    with moto_server() as endpoint:
        url = upload(remote, endpoint)
        for name, key in [("S3 merged (moto)", "pile"), ("S3 sharded (moto)", "shards")]:
            dataset = open_dataset(f"{url}/{key}", s3_endpoint=endpoint)
            results.append((name, dataset, *time_batches(dataset, args)))

    print(f"\nbatch size {args.batch_size}, window {args.prompt_len}+{args.cont_len} tokens, "
          f"prefetch {args.prefetch}\n")
    print("| source | sequences | batches | seconds | batches/s | sequences/s | row MB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, dataset, seconds, batches in results:
        n = dataset.num_sequences
        megabytes = n * dataset.seq_len * dataset.dtype.itemsize / 1e6
        print(f"| {name} | {n:,} | {batches:,} | {seconds:.2f} | {batches / seconds:,.1f} | "
              f"{n / seconds:,.0f} | {megabytes / seconds:,.0f} |")
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
