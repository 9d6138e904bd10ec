"""`vmem evaluate --method verify` against `--method generate`: same machine, same run, same data.

For each shape (random-weight GPT-NeoX models of Pythia's exact shapes, as bench/throughput.py
builds them), both methods run as a user runs them (whole `vmem evaluate` processes, defaults:
engine and dtype `auto`, unless --engine forces one) on --n random Pythia rows. Recorded: the
engine's steady sequences/second (from the task marker) and the whole process's, their ratio
(verify / generate; the issue's target is >= 2x with the default engine), and how often the two
methods agree on prefix_match and on the memorized flag in the dtype that ran. In float32 they
agree exactly (tests/test_verify.py asserts it); in bfloat16/float16 near-tied logits of random
weights can differ between one parallel pass and step-by-step decoding, so this is measured, not
asserted. Results are appended to bench/RESULTS.md.

    .venv/bin/python bench/verify.py --shape pythia-70m pythia-160m --n 2048
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python bench/verify.py ...
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import ROOT, dataset, machine, record, saved_model  # noqa: E402

METHODS = ("generate", "verify")


def run_method(size: str, method: str, args) -> dict:
    model = saved_model(size, args.dir)
    data = dataset(args.dir, args.n)
    out = args.dir / f"verify-bench-{size}-{method}-{args.engine or 'default'}"
    shutil.rmtree(out, ignore_errors=True)  # a finished run would only be skipped
    cmd = [sys.executable, "-m", "vmem.cli", "evaluate", "--model", str(model), "--data",
           str(data), "--start", "0", "--stop", str(args.n), "--out", str(out), "--method",
           method, "--no-progress"]
    if args.engine:
        cmd += ["--engine", args.engine]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{done.stderr[-3000:]}")
    merged = out.with_suffix(".parquet")
    subprocess.run([sys.executable, "-m", "vmem.cli", "merge", str(out), "-o", str(merged)],
                   check=True, capture_output=True, cwd=ROOT)
    (marker,) = (out / "tasks").glob("*.json")
    stats = json.loads(marker.read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"  {size} {method}: {stats['sequences_per_second']} seq/s steady, process "
          f"{wall:.1f} s", file=sys.stderr)
    return {"seq_s": stats["sequences_per_second"], "process_seq_s": args.n / wall,
            "engine": manifest["settings"]["engine"], "dtype": manifest["settings"]["dtype"],
            "table": pd.read_parquet(merged)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs="+", default=["pythia-70m", "pythia-160m"])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--engine", choices=["vllm", "hf"], default=None,
                        help="force an engine (default: vmem's auto choice)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vmem-bench-verify"))
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    info = machine("cpu")
    rows = []
    for shape in args.shape:
        size = shape.removeprefix("pythia-")
        result = {method: run_method(size, method, args) for method in METHODS}
        g, v = result["generate"], result["verify"]
        rows.append(
            f"| {shape} | {g['engine']} {g['dtype']} | {g['seq_s']:.1f} | {v['seq_s']:.1f} | "
            f"**{v['seq_s'] / g['seq_s']:.2f}x** | {g['process_seq_s']:.1f} | "
            f"{v['process_seq_s']:.1f} | {v['process_seq_s'] / g['process_seq_s']:.2f}x | "
            f"{(v['table']['prefix_match'] == g['table']['prefix_match']).mean():.2%} | "
            f"{(v['table']['memorized'] == (g['table']['matches'] == 32)).mean():.2%} |")
    emulated = " ".join(f"{k}={v}" for k, v in info["emulated"].items())
    text = (f"\n## bench/verify.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"{info['cpu']}, {info['cores']} cores, kind **{info['kind']}**"
            f"{' (emulated: ' + emulated + ')' if emulated else ''}, load {info['load']:.2f}; "
            f"{args.n} random Pythia rows; engine {args.engine or 'auto (default)'}."
            f"{' ' + args.note if args.note else ''}\n\n"
            "| shape | engine, dtype | generate seq/s | verify seq/s | verify / generate | "
            "generate, whole process | verify, whole process | ratio | prefix_match agrees | "
            "memorized agrees |\n|---|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print(text)
    record(text, args.results)


if __name__ == "__main__":
    main()
