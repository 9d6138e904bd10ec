"""OLMo's order without an engine: the seconds to build the permutation of N instances (what
`vmem data olmo` does once per config), and batches of whole instances through `iter_batches`
from an order folder over headerless uint32 token files, with and without the instance filter
(the filter reads every token of every instance; the ratio is its cost on the data path).

    .venv/bin/python bench/olmo_order.py --instances 100000000 --rows 16384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from vmem import olmo
from vmem.data import iter_batches, open_dataset


def cpu() -> str:
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    kind = ("AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags
            else "AVX2")
    return (f"{fields.get('model name', platform.processor())} (family {fields.get('cpu family')} "
            f"model {fields.get('model')}, {kind}), {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=100_000_000,
                        help="size of the permutation to build")
    parser.add_argument("--rows", type=int, default=16384, help="instances read through")
    parser.add_argument("--seq-len", type=int, default=4096)
    args = parser.parse_args()

    t0 = time.perf_counter()
    olmo.global_indices(args.instances, seed=6198)
    build = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokens = np.random.default_rng(0).integers(0, 100_000, size=(args.rows, args.seq_len),
                                                   dtype=np.uint32)
        tokens[::50, 1000:1100] = 7  # one instance in 50 masked
        tokens.tofile(root / "part-0.npy")
        config = {"seed": 1, "model": {"max_sequence_length": args.seq_len},
                  "global_train_batch_size": 1024,
                  "data": {"memmap_dtype": "uint32", "drop_last": True,
                           "paths": [str(root / "part-0.npy")],
                           "instance_filter": {"repetition_max_count": 32}}}
        (root / "run.yaml").write_text(yaml.safe_dump(config))
        olmo.build_order(str(root / "run.yaml"), str(root / "order"))
        dataset = open_dataset(str(root / "order"))
        rates = {}
        for _ in iter_batches(replace(dataset, instance_filter=None), 0, args.rows, rows=8192):
            pass  # warm: the pages and the reader, so both timings see the same
        for name, data in [("without filter", replace(dataset, instance_filter=None)),
                           ("with filter", dataset)]:
            t0 = time.perf_counter()
            masked = sum(int((~b.trained).sum()) if b.trained is not None else 0
                         for b in iter_batches(data, 0, args.rows, rows=8192))
            rates[name] = args.rows / (time.perf_counter() - t0)
            rates[name + " masked"] = masked
    print(json.dumps({"machine": cpu(), "instances": args.instances,
                      "build_seconds": round(build, 2), "rows": args.rows,
                      "seq_len": args.seq_len, **{k: round(v, 1) for k, v in rates.items()}}))


if __name__ == "__main__":
    main()
