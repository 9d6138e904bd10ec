"""Where the transformers engine's time goes on CPU for small models: rows per pass, threads,
one decode step's fixed cost, the log-prob pass's share and edit similarity's, for the demo's 4m
shape (hidden 256, 5 layers, vocabulary 2,048) and pythia-70m's, on random weights in float32
(generation's cost does not depend on the weights). Rates are per CPU second of this process
(`time.process_time`: on a shared machine wall time also counts the time other processes hold
the cores); with 2 threads a CPU second is half a wall second at best. All figures of one run
come from one process, one after the other: compare ratios within a run.

    .venv/bin/python bench/hf_cpu.py --n 512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmem import hardware  # noqa: E402
from vmem.engines import EngineConfig, HfEngine  # noqa: E402
from vmem.scoring import edit_similarity  # noqa: E402

SHAPES = {"demo-4m": dict(hidden_size=256, num_hidden_layers=5, num_attention_heads=4,
                          vocab_size=2048),
          "pythia-70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                             vocab_size=50304)}


def timed(fn) -> float:
    """CPU seconds of one call, after a warm-up call."""
    fn()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def model_dir(shape: str, folder: Path) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    kwargs = SHAPES[shape]
    config = GPTNeoXConfig(**kwargs, intermediate_size=4 * kwargs["hidden_size"],
                           max_position_embeddings=2048, rotary_pct=0.25,
                           use_parallel_residual=True, tie_word_embeddings=False)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(str(folder / shape))
    return folder / shape


def measure(shape: str, folder: Path, n: int, threads: list[int], rows: list[int]) -> list[str]:
    engine = HfEngine(EngineConfig(str(model_dir(shape, folder)), engine="hf", dtype="float32"),
                      eos=(0,))
    vocab = SHAPES[shape]["vocab_size"]
    tokens = np.random.default_rng(0).integers(1, vocab, size=(n, 64)).astype(np.int64)
    prompts, truth = tokens[:, :32], tokens[:, 32:]
    lines = [f"### {shape} ({n} random rows, float32)", "",
             "| threads | rows per pass | generate seq/CPU-s | one decode step, 1 row (ms) | "
             "one decode step, all rows (ms) | pass with logprobs / generate | "
             "pass without / generate | edit similarity / generate |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in threads:
        torch.set_num_threads(t)
        for r in rows:
            engine.rows_per_pass = r
            gen = timed(lambda: engine.generate(prompts, 32, False))
            with_lp = timed(lambda: engine.teacher_forced(tokens, [32], False, True))
            without = timed(lambda: engine.teacher_forced(tokens, [32], False, False))
            edit = timed(partial(edit_similarity, engine.generate(prompts, 32, False), truth))
            one, full = step_ms(engine, tokens[:1, :32]), step_ms(engine, tokens[:r, :32])
            lines.append(f"| {t} | {r} | {n / gen:.1f} | {one:.2f} | {full:.2f} | "
                         f"{with_lp / gen:.3f} | {without / gen:.3f} | {edit / gen:.4f} |")
            print(lines[-1], flush=True)
    return lines


def step_ms(engine: HfEngine, prompts: np.ndarray) -> float:
    """CPU milliseconds of one cached decode step after a 32-token prompt (16 averaged)."""
    ids = torch.from_numpy(prompts)
    with torch.inference_mode():
        out = engine.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        cache = out.past_key_values
        engine.model(input_ids=token, past_key_values=cache, use_cache=True)
        t0 = time.process_time()
        for _ in range(16):
            engine.model(input_ids=token, past_key_values=cache, use_cache=True)
        return (time.process_time() - t0) / 16 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs="+", default=list(SHAPES))
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rows", default="64,128,256,512")
    args = parser.parse_args()
    print(f"CPU kind {hardware.cpu_kind()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shape:
            measure(shape, Path(tmp), args.n, [int(t) for t in args.threads.split(",")],
                    [int(r) for r in args.rows.split(",")])
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
