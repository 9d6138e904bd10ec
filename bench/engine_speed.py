"""vmem's transformers engine in-process: `generate` (32 dependent decode steps after the prompt)
against `teacher_forced` (the verification pass: one forward over prompt + continuation), on a
random-weight model of a Pythia shape, with a matmul roofline for scale. Needs only torch,
transformers and numpy (no vLLM, no pyarrow), so it runs where bench/gpu.sh runs.

Useful FLOPs per sequence are the same for both (2 · non-embedding params · 64 tokens + the
output head at the 32 predicted positions); the pass is faster because its matmuls are large.
The pass also reads on only while a row still matches: on random weights nearly every row stops
at the first continuation token, so its "useful" rate can exceed the matmul peak. The third row,
every position computed (what `--logprobs` pays, and the most a trained model can cost), is the
honest bound.

`--engine vllm --tp 1,2` times vLLM instead (needs vLLM), one engine per tensor-parallel size in
turn, its start-up included: on a CPU-only machine each of the N workers gets its share of the
cores (`vmem.engines.cpu_threads_bind`).

    .venv/bin/python bench/engine_speed.py --shape pythia-70m --n 1024
    PYTHONPATH=. python3 bench/engine_speed.py --shape pythia-1b --dtype float16 --n 4096
    .venv/bin/python bench/engine_speed.py --shape pythia-70m --n 256 --engine vllm --tp 1,2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmem import hardware, pythia  # noqa: E402
from vmem.engines import EngineConfig, build_engine  # noqa: E402


def seconds(fn, device: str) -> float:
    fn()  # warm-up: kernels chosen, caches allocated
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="pythia-70m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--n", type=int, default=1024, help="sequences per timed call")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--tp", default="1", help="vLLM tensor-parallel sizes, e.g. 1,2")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    size = args.shape.removeprefix("pythia-")
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokens = np.random.default_rng(0).integers(1, 50_304, size=(args.n, 64)).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        with torch.device(device):  # pythia-12b in fp32 on a CPU would take minutes to build
            model = GPTNeoXForCausalLM._from_config(
                GPTNeoXConfig(**pythia.neox_config_kwargs(size)), dtype=getattr(torch, args.dtype))
        model.save_pretrained(tmp)
        del model
        sizes = [int(tp) for tp in args.tp.split(",")] if args.engine == "vllm" else [1]
        load = os.getloadavg()[0]  # other work on the machine skews the figures: say how much
        timed = {tp: measure(tmp, tokens, args, tp, device) for tp in sizes}
    s = pythia.SIZES[size]
    flops = 2 * 12 * s.layers * s.hidden ** 2 * 64 + 2 * s.hidden * s.vocab * 32
    where = (torch.cuda.get_device_name() if device == "cuda"
             else f"CPU {hardware.cpu_kind()}, {len(hardware.cpu_cores())} cores "
                  f"({torch.get_num_threads()} torch threads)")
    name = "HfEngine" if args.engine == "hf" else "VllmEngine"
    text = (f"\n## bench/engine_speed.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"{where}; {args.shape} shape, {args.dtype}, {args.n} sequences per call, "
            f"engine {args.engine}; load average (1 min) {load:.2f} at start, "
            f"{os.getloadavg()[0]:.2f} at end.{' ' + args.note if args.note else ''}\n\n"
            "| method | tp | start-up s | seconds | seq/s | useful TFLOP/s |\n"
            "|---|---|---|---|---|---|\n")
    for tp, (startup, generate, verify, every) in timed.items():
        for method, took in ((f"generate ({name}.generate)", generate),
                             (f"verify ({name}.teacher_forced)", verify),
                             ("verify, every position (teacher_forced with logprobs)", every)):
            text += (f"| {method} | {tp} | {startup:.1f} | {took:.2f} | {args.n / took:.1f} | "
                     f"{flops * args.n / took / 1e12:.3f} |\n")
    for tp, (_, generate, verify, every) in timed.items():
        text += (f"\ntp {tp}: verify / generate **{generate / verify:.2f}x** (random weights: "
                 f"rows stop early); every position / generate **{generate / every:.2f}x**\n")
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


def measure(model: str, tokens: np.ndarray, args, tp: int,
            device: str) -> tuple[float, float, float, float]:
    """Start-up seconds of one engine, then seconds of generate, verify and every position."""
    t0 = time.perf_counter()
    engine = build_engine(EngineConfig(model, engine=args.engine, dtype=args.dtype, tp=tp))
    startup = time.perf_counter() - t0
    try:
        return (startup,
                seconds(lambda: engine.generate(tokens[:, :32], 32, False), device),
                seconds(lambda: engine.teacher_forced(tokens, [32], False, False), device),
                seconds(lambda: engine.teacher_forced(tokens, [32], False, True), device))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
