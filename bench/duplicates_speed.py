"""`vmem duplicates` speed: index build (tokens/s) and counting (windows/s), with peak memory, on
a synthetic dataset in Pythia's format (uint16 rows of 2049 tokens, planted duplicates), merged
and in 21 shards as Pythia publishes them. Each stage runs in its own process, so its peak RSS
is its own (RSS counts the pages of memory-mapped files it touched: page cache, reclaimable).

    nice -n 10 .venv/bin/python bench/duplicates_speed.py --rows 100000 --folder /tmp/dup-bench

The folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmem.data import open_dataset  # noqa: E402
from vmem.duplicates import Counting, build_index, count_duplicates  # noqa: E402
from vmem.io import mmidx  # noqa: E402

SEQ_LEN = 2049
SHARDS = 21
COPIES = 5  # every 100th sequence's continuation planted this many more times


def write_data(folder: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 50_304, size=(rows, SEQ_LEN), dtype=np.uint16)
    stream = data.reshape(-1)
    sources = np.arange(0, rows, 100)
    places = rng.integers(0, stream.size - 32, size=(len(sources), COPIES))
    for source, where in zip(sources, places, strict=True):
        for place in where:
            stream[place:place + 32] = data[source, 32:64]
    mmidx.write_merged(folder / "pile", data)
    shard_bytes = -(-data.nbytes // SHARDS // 2) * 2  # whole tokens; the boundaries cut rows
    mmidx.write_sharded(folder / "shards", data, shard_bytes)


def stage(args: argparse.Namespace) -> dict:
    """One measurement, in this process: build an index, or count windows with it."""
    data = str(args.folder / args.data)
    index = str(args.folder / f"index-{args.data}")
    t0 = time.perf_counter()
    import tokengrams  # noqa: F401 (its import, seconds, is start-up: timed apart)

    imported = time.perf_counter()
    if args.stage == "build":
        dataset = open_dataset(data)
        build_index(dataset, index, 32, progress=False)
        amount = dataset.num_sequences * dataset.seq_len
    else:
        count_duplicates(Counting(data=data, index=index, start=0, stop=args.windows,
                                  output=str(args.folder / f"counts-{args.data}.parquet"),
                                  progress=False))
        amount = args.windows
    seconds = time.perf_counter() - imported
    return {"stage": args.stage, "data": args.data, "amount": amount, "seconds": seconds,
            "import_seconds": imported - t0,
            "per_second": amount / seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_stage(args: argparse.Namespace, name: str, data: str, windows: int = 0) -> dict:
    done = subprocess.run([sys.executable, __file__, "--folder", str(args.folder), "--stage",
                           name, "--data", data, "--windows", str(windows)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "unknown CPU")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/dup-bench"))
    parser.add_argument("--sharded-windows", type=int, default=20_000)
    parser.add_argument("--stage", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--windows", type=int, default=0)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args)))
        return
    args.folder.mkdir(parents=True, exist_ok=False)
    try:
        t0 = time.perf_counter()
        write_data(args.folder, args.rows)
        print(f"machine: {machine()}")
        print(f"data: {args.rows:,} rows x {SEQ_LEN} = {args.rows * SEQ_LEN:,} uint16 tokens, "
              f"written in {time.perf_counter() - t0:.0f} s")
        results = [run_stage(args, "build", "pile"),
                   run_stage(args, "count", "pile", args.rows),
                   run_stage(args, "build", "shards"),
                   run_stage(args, "count", "shards", args.sharded_windows)]
        for r in results:
            unit = "tokens" if r["stage"] == "build" else "windows"
            print(f"{r['stage']:5} {r['data']:6} {r['amount']:>13,} {unit:7} "
                  f"{r['seconds']:8.1f} s  {r['per_second']:>12,.0f} {unit}/s  "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB (+ {r['import_seconds']:.1f} s import)")
        index_bytes = sum(p.stat().st_size for p in (args.folder / "index-shards").iterdir())
        print(f"sharded index folder: {index_bytes / 1e9:.2f} GB "
              f"({index_bytes / (args.rows * SEQ_LEN):.2f} bytes a token)")
        import pandas as pd

        merged = pd.read_parquet(args.folder / "counts-pile.parquet")
        sharded = pd.read_parquet(args.folder / "counts-shards.parquet")
        same = merged.iloc[:len(sharded)].reset_index(drop=True).equals(sharded)
        planted = merged["count"].iloc[::100]
        print(f"merged and sharded counts equal on the sharded rows: {same}; planted "
              f"sequences' counts: min {planted.min()}, median {planted.median():.0f}")
    finally:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
