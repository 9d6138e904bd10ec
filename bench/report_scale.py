"""`vmem report` at Pythia scale: synthetic merged runs of N sequences (default 146,432,000, all
sequences of step143000), then the report in a child process, timed, with its peak memory.

Three runs give both comparison families: pythia-1b and pythia-12b at step143000 (family A) and
pythia-12b at step71500, which has seen the first half (family B).

    .venv/bin/python bench/report_scale.py --sequences 146432000 --dir /tmp/vmem-bench
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CONT_LEN = 32
CHUNK = 1 << 22
SCHEMA = pa.schema([("index", pa.int64()), ("score", pa.float64()), ("matches", pa.int64()),
                    ("prefix_match", pa.int64())])  # as `vmem merge` writes it


def synthetic_matches(rng: np.random.Generator, memorized: np.ndarray) -> np.ndarray:
    """Mostly low scores (geometric), CONT_LEN where `memorized`."""
    matches = np.minimum(rng.geometric(0.25, memorized.size) - 1, CONT_LEN - 1)
    matches[memorized] = CONT_LEN
    return matches


def write_runs(folder: Path, sequences: int) -> None:
    runs = {  # name: (model, step, stop)
        "p1b-final": ("EleutherAI/pythia-1b", 143_000, sequences),
        "p12b-final": ("EleutherAI/pythia-12b", 143_000, sequences),
        "p12b-71500": ("EleutherAI/pythia-12b", 71_500, sequences // 2),
    }
    writers = {name: pq.ParquetWriter(folder / f"{name}.parquet", SCHEMA) for name in runs}
    rng = np.random.default_rng(0)
    for start in range(0, sequences, CHUNK):
        stop = min(start + CHUNK, sequences)
        index = np.arange(start, stop)
        target = rng.random(index.size) < 0.0163  # the 12b's published share
        memorized = {"p12b-final": target,
                     "p1b-final": (target & (rng.random(index.size) < 0.4))
                     | (rng.random(index.size) < 0.0035),
                     "p12b-71500": (target & (rng.random(index.size) < 0.6))
                     | (rng.random(index.size) < 0.001)}
        for name, (_, _, run_stop) in runs.items():
            if start >= run_stop:
                continue
            m = synthetic_matches(rng, memorized[name])[:run_stop - start]
            writers[name].write_table(pa.table(
                [index[:m.size], m / CONT_LEN, m, m], schema=SCHEMA))
    for name, (model, step, stop) in runs.items():
        writers[name].close()
        settings = dict(model=model, revision=f"step{step}", cont_len=CONT_LEN, prompt_len=32,
                        start=0, stop=stop, batch_size=1024, logprobs=False,
                        data=dict(seq_len=2049))
        (folder / f"{name}.manifest.json").write_text(json.dumps(
            dict(settings=settings, step=step, params=None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=146_432_000)
    parser.add_argument("--dir", default="/tmp/vmem-report-bench", help="scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    scratch = Path(args.dir)
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "runs").mkdir(parents=True)
    try:
        t = time.perf_counter()
        write_runs(scratch / "runs", args.sequences)
        size = sum(p.stat().st_size for p in (scratch / "runs").iterdir())
        print(f"wrote 3 runs ({args.sequences:,} + {args.sequences:,} + {args.sequences // 2:,} "
              f"sequences, {size / 1e9:.2f} GB parquet) in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vmem.cli", "report", str(scratch / "runs"),
                        "-o", str(scratch / "report")], check=True)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
        total = args.sequences * 2 + args.sequences // 2
        print(f"report: {seconds:.1f} s wall, {total / seconds / 1e6:.1f} M sequences/s, "
              f"peak RSS {peak / 2**30:.2f} GiB ({peak / total:.2f} bytes per loaded sequence)")
        print((scratch / "report" / "tables" / "predictability.csv").read_text())
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
