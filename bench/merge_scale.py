"""`vmem merge` at Pythia scale: a synthetic run folder of --rows sequences (default 146,432,000,
all sequences of step143000) in the evaluator's format (manifest.json + one score file per chunk
of vmem.evaluate.DEFAULT_CHUNK rows), merged by `vmem merge` in a child process: time,
peak RSS, bytes per row.

Shards are formatted by pyarrow (writing 146M rows through Python would take longer than the
merge), and the first one is checked byte for byte against `vmem.scoring.score_csv`.

    .venv/bin/python bench/merge_scale.py --rows 146432000 --dir /tmp/vmem-merge-bench
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
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report_scale import CONT_LEN, synthetic_matches  # noqa: E402
from vmem.evaluate import DEFAULT_CHUNK  # noqa: E402
from vmem.runs.folder import MANIFEST, fingerprint, score_file_name  # noqa: E402
from vmem.scoring import columns, score_csv  # noqa: E402

SCORES = pa.array([repr(m / CONT_LEN) for m in range(CONT_LEN + 1)])  # as score_csv writes them
NAMES = columns({"logprobs": False})  # a generation run's columns


def manifest(rows: int) -> dict:
    settings = {
        "model": "EleutherAI/pythia-12b", "revision": "step143000", "dtype": "float16",
        "engine": "vllm", "prompt_len": 32, "cont_len": CONT_LEN, "offset": 0,
        "eos_mode": "paper", "logprobs": False,
        "data": {"location": "/data/pythia/document", "layout": "merged",
                 "num_sequences": rows, "seq_len": 2049, "dtype": "uint16"},
        "start": 0, "stop": rows, "batch_size": 1024,
    }
    return {"vmem_version": "bench", "settings": settings, "fingerprint": fingerprint(settings),
            "engine_info": {}, "step": 143_000, "params": None, "created": "bench"}


def score_file_bytes(index: np.ndarray, matches: np.ndarray, prefix: np.ndarray) -> bytes:
    table = pa.table({"index": index, "score": SCORES.take(pa.array(matches)),
                      "matches": matches, "prefix_match": prefix})
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink,
                    pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return (",".join(NAMES) + "\n").encode() + sink.getvalue().to_pybytes()


def write_run(folder: Path, rows: int, chunk: int) -> None:
    meta = manifest(rows)
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        index = np.arange(start, min(start + chunk, rows))
        matches = synthetic_matches(rng, rng.random(index.size) < 0.0163)  # 12b's share
        prefix = np.minimum(matches, rng.geometric(0.5, index.size) - 1)
        data = score_file_bytes(index, matches, prefix)
        values = {"score": matches / CONT_LEN, "matches": matches, "prefix_match": prefix}
        if start == 0 and data != score_csv(index, values, NAMES):
            raise SystemExit("synthetic score file differs from score_csv's format")
        (folder / score_file_name(meta["fingerprint"], index[0], index[-1] + 1)).write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=146_432_000)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="rows per score file")
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vmem-merge-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    run, output = args.dir / "run", args.dir / f"merged.{args.format}"
    try:
        t = time.perf_counter()
        write_run(run, args.rows, args.chunk)
        on_disk = sum(p.stat().st_size for p in run.glob("scores-*.csv"))
        count = -(-args.rows // args.chunk)
        print(f"wrote {args.rows:,} rows in {count:,} score files ({on_disk / 1e9:.2f} GB, "
              f"{on_disk / args.rows:.1f} B/row) in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vmem.cli", "merge", str(run), "-o", str(output)],
                       check=True)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
        size = output.stat().st_size
        print(f"merge: {seconds:.1f} s wall, {args.rows / seconds / 1e6:.2f} M rows/s, "
              f"peak RSS {peak / 2**30:.2f} GiB ({peak / args.rows:.1f} B/row), "
              f"output {size / 1e9:.2f} GB ({size / args.rows:.2f} B/row)")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
