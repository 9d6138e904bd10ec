"""Sequences/second of memorization scoring, three ways, in one run on one machine:

  (a) the seed's method: transformers `generate` without a KV cache (`use_cache=False`,
      `max_length=min_length=64`, greedy, batch 1024), as the original script ran it. It is very
      slow on CPU, so it runs on a subset (--n-seed sequences, batch min(1024, --n-seed)) with the
      dtype and thread count (b) found best;
  (b) transformers `generate` with its KV cache: the best of dtypes x thread counts x batch sizes
      on --n-hf sequences (bfloat16 is tried only where the CPU computes it natively: emulated,
      it runs ~150x slower than float32), then that setting end to end on --n sequences, model
      load from disk included;
  (c) `vmem evaluate` end to end with the defaults a user gets (engine and dtype `auto`), in a
      child process on a dataset file written with `vmem.io.mmidx.write_merged` (--n rows of 2049
      random uint16 ids < 50304): the whole process is timed (start-up, model load, reading,
      engine, scoring, durable CSV files); --vmem-engine adds runs with a forced engine.

The done-when ratios of the issue "Runs well on every machine" are c/a (the whole vmem process
against the seed's steady rate) and c/b (both end to end, model load included).

Models are random-weight GPT-NeoX models with the exact shapes of Pythia sizes
(`vmem.pythia.neox_config_kwargs`): the weights' values do not change the work, since every method
generates exactly 32 tokens per prompt (end-of-text is masked, as in the paper). Useful FLOPs per
sequence (those a KV-cached continuation needs) turn seq/s into FLOP/s, set against a measured
torch.matmul peak. The CPU kind (AMX, AVX512-BF16, AVX512, AVX2: `vmem.hardware.cpu_kind`, which
honours ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA emulation) and the results are appended to
bench/RESULTS.md.

    .venv/bin/python bench/throughput.py --shape pythia-70m --n 2048
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python bench/throughput.py ...
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmem import pythia  # noqa: E402
from vmem.data import open_dataset  # noqa: E402
from vmem.engines import choose_dtype  # noqa: E402
from vmem.hardware import cpu_flags, cpu_kind  # noqa: E402
from vmem.io import mmidx  # noqa: E402

TOKEN_IDS = 50_304  # random token ids stay below the smallest Pythia vocabulary
SEQ_LEN = 2049  # a Pythia row: 2048 inputs + 1 target
SEED_BATCH = 1024  # the original script's batch size
EOS = 0  # GPT-NeoX's end-of-text


# -- work per sequence ----------------------------------------------------------------------------
def flops_per_sequence(size: str, prompt_len: int = 32, cont_len: int = 32) -> float:
    """Useful FLOPs to continue one prompt with a KV cache: 2 per layer weight per token that
    enters the model (prompt_len + cont_len - 1), the output head for the cont_len predicted
    tokens, and causal attention (QK^T and AV: 4 * hidden per layer per query-key pair)."""
    s = pythia.SIZES[size]
    tokens = prompt_len + cont_len - 1
    layer_weights = 12 * s.hidden**2 * s.layers  # attention 4h^2 + MLP 8h^2 per layer
    pairs = tokens * (tokens + 1) // 2
    return (2 * layer_weights * tokens + 2 * s.hidden * s.vocab * cont_len
            + 4 * s.hidden * s.layers * pairs)


def seed_flops_per_sequence(size: str, prompt_len: int = 32, cont_len: int = 32,
                            all_logits: bool = True) -> float:
    """FLOPs the seed's method executes: without a cache, step t recomputes all prompt_len + t
    tokens. The 2023 transformers computed logits at every position (`all_logits`); today's
    `generate` keeps only the last."""
    s = pythia.SIZES[size]
    layer_weights = 12 * s.hidden**2 * s.layers
    total = 0.0
    for t in range(cont_len):
        length = prompt_len + t
        head_tokens = length if all_logits else 1
        total += (2 * layer_weights * length + 2 * s.hidden * s.vocab * head_tokens
                  + 4 * s.hidden * s.layers * length * (length + 1) // 2)
    return total


# -- the machine ----------------------------------------------------------------------------------
def machine(device: str) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = cpu_flags()
    emulated = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                if k in os.environ}
    info = {"cpu": model, "cores": os.cpu_count(), "kind": cpu_kind(), "emulated": emulated,
            "flags": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                              if f in flags),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load": os.getloadavg()[0]}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: str, device: str) -> float:
    """Best FLOP/s of a large square torch.matmul in `dtype` (best of 10: a busy machine only
    slows some of them)."""
    n = 8192 if device == "cuda" else 4096
    a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    torch.matmul(a, b)  # first call picks and prepares kernels
    sync(device)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# -- (a) and (b): transformers --------------------------------------------------------------------
def random_model(size: str, dtype: str, device: str):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(**pythia.neox_config_kwargs(size))
    with torch.device(device):
        model = GPTNeoXForCausalLM._from_config(config, dtype=getattr(torch, dtype))
    return model.eval()


def hf_seconds(model, prompts: np.ndarray, batch: int, cont_len: int, use_cache: bool,
               device: str) -> float:
    """Seconds to continue every prompt greedily to cont_len tokens with `generate`."""
    total = prompts.shape[1] + cont_len
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            ids = torch.from_numpy(prompts[i:i + batch]).to(device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_length=total, min_length=total, use_cache=use_cache,
                                 pad_token_id=EOS, eos_token_id=EOS)
            if out.shape != (len(ids), total):
                raise RuntimeError(f"generate returned {tuple(out.shape)}, expected "
                                   f"{(len(ids), total)}")
    sync(device)
    return time.perf_counter() - t0


def measure_transformers(size: str, prompts: np.ndarray, args) -> dict:
    """(b) at each dtype x thread count x batch size, its best end to end, then (a) with the
    dtype and threads (b) liked best."""
    found = {}
    by_setting = {}  # (dtype, threads, batch) -> seq/s
    for dtype in args.dtypes if "hf" in args.methods else []:
        model = random_model(size, dtype, args.device)
        for threads in args.threads:
            torch.set_num_threads(threads)
            hf_seconds(model, prompts[:2], 2, 2, True, args.device)  # warm-up: kernels, allocator
            rows = prompts[:args.n_hf]
            for batch in args.hf_batch_sizes:
                seconds = hf_seconds(model, rows, batch, args.cont_len, True, args.device)
                by_setting[dtype, threads, batch] = len(rows) / seconds
                print(f"  (b) transformers + cache, {dtype}, {threads} threads, batch {batch}: "
                      f"{len(rows)} seq in {seconds:.1f} s", file=sys.stderr)
        del model
    best = max(by_setting, key=by_setting.get) if by_setting else None
    if best:
        dtype, threads, batch = best
        found["hf"] = {"seq_s": by_setting[best], "n": args.n_hf, "dtype": dtype, "batch": batch,
                       "threads": threads, "by_setting": by_setting}
        if args.device == "cpu":
            found["hf"]["e2e"] = transformers_end_to_end(size, best, args)
    if "seed" in args.methods:
        dtype, threads = (best[0], best[1]) if best else (args.dtypes[0], args.threads[-1])
        torch.set_num_threads(threads)
        model = random_model(size, dtype, args.device)
        hf_seconds(model, prompts[:2], 2, 2, False, args.device)  # warm-up
        seed = prompts[:args.n_seed]
        batch = min(SEED_BATCH, len(seed))
        seconds = hf_seconds(model, seed, batch, args.cont_len, False, args.device)
        found["seed"] = {"seq_s": len(seed) / seconds, "n": len(seed), "batch": batch,
                         "threads": threads, "dtype": dtype}
        print(f"  (a) seed's method: {len(seed)} seq in {seconds:.1f} s", file=sys.stderr)
        del model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return found


def transformers_end_to_end(size: str, setting: tuple, args) -> float:
    """(b)'s best setting on the --n prompts of (c)'s dataset, loading the saved model first."""
    from transformers import AutoModelForCausalLM

    dtype, threads, batch = setting
    torch.set_num_threads(threads)
    rows = open_dataset(str(dataset(args.dir, args.n))).read(0, args.n)
    rows = rows[:, :args.prompt_len].astype(np.int64)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(saved_model(size, args.dir),
                                                 dtype=getattr(torch, dtype)).eval()
    seconds = hf_seconds(model, rows, batch, args.cont_len, True, args.device)
    total = time.perf_counter() - t0
    print(f"  (b) end to end: {len(rows)} seq in {total:.1f} s (load {total - seconds:.1f} s)",
          file=sys.stderr)
    return len(rows) / total


# -- (c): vmem end to end -------------------------------------------------------------------------
def saved_model(size: str, folder: Path) -> Path:
    """A random model of the shape, saved once (fp32 safetensors; engines cast to the run dtype).
    The folder name holds `pythia-<size>`, so evaluate records Pythia's parameter count."""
    path = folder / f"pythia-{size}-random"
    if not (path / "config.json").exists():
        random_model(size, "float32", "cpu").save_pretrained(path)
    return path


def dataset(folder: Path, n: int) -> Path:
    prefix = folder / f"rows-{n}"
    if not prefix.with_suffix(".idx").exists():
        rows = np.random.default_rng(0).integers(0, TOKEN_IDS, size=(n, SEQ_LEN), dtype=np.uint16)
        mmidx.write_merged(prefix, rows)
    return prefix


def measure_vmem(size: str, args, engine: str | None) -> dict:
    """`vmem evaluate` as a user runs it: defaults, unless `engine` forces one."""
    model = saved_model(size, args.dir)
    data = dataset(args.dir, args.n)
    out = args.dir / f"run-{size}-{engine or 'default'}-{os.getpid()}"
    cmd = [sys.executable, "-m", "vmem.cli", "evaluate", "--model", str(model), "--data",
           str(data), "--start", "0", "--stop", str(args.n), "--out", str(out), "--prompt-len",
           str(args.prompt_len), "--cont-len", str(args.cont_len), "--no-progress"]
    if engine:
        cmd += ["--engine", engine]
    cmd += args.vmem_args
    log = args.dir / f"vmem-{size}-{engine or 'default'}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"vmem evaluate failed ({done.returncode}):\n{shlex.join(cmd)}\n{tail}")
    (marker,) = (out / "tasks").glob("*.json")
    stats = json.loads(marker.read_text())
    if stats["scored_now"] != args.n:
        raise SystemExit(f"vmem evaluate scored {stats['scored_now']} of {args.n} sequences")
    choices = json.loads((out / "manifest.json").read_text())["choices"]
    print(f"  (c) vmem evaluate{' --engine ' + engine if engine else ''}: {args.n} seq, "
          f"process {wall:.1f} s (start-up {stats['startup_seconds']:.1f} s, then "
          f"{stats['seconds']:.1f} s); log {log}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(out)
    return {"seq_s": stats["sequences_per_second"], "n": args.n,
            "busy": stats["engine_busy_share"], "startup": stats["startup_seconds"],
            "process_seq_s": args.n / wall, "process_s": wall, "engine": stats["engine_info"],
            "choices": choices, "forced": engine}


# -- the report -----------------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "—" if x is None else format(x, spec) + unit


def table(results: dict, peak: float, args) -> str:
    lines = ["| shape | (a) seed seq/s | (b) transformers+cache seq/s | (b) end to end | "
             "(c) vmem end to end | (c) after start-up | c/a | c/b | vmem chose | start-up s "
             "| GFLOP/seq | (a) / (b) / (c) GFLOP/s | (c) of peak |",
             "|" + "---|" * 13]
    for size, r in results.items():
        seed, hf, vm = r.get("seed"), r.get("hf"), r.get("vmem")
        a, b = (m["seq_s"] if m else None for m in (seed, hf))
        b_e2e = hf.get("e2e") if hf else None
        c_e2e, c = (vm["process_seq_s"], vm["seq_s"]) if vm else (None, None)
        per_seq = flops_per_sequence(size, args.prompt_len, args.cont_len)
        cells = [
            f"pythia-{size}",
            f"{a:.2f} ({seed['dtype']}, n={seed['n']}, batch {seed['batch']}, "
            f"{seed['threads']} thr)" if seed else "—",
            f"{b:.1f} ({hf['dtype']}, batch {hf['batch']}, {hf['threads']} thr)" if hf else "—",
            fmt(b_e2e),
            fmt(c_e2e),
            fmt(c),
            fmt(c_e2e / a if c_e2e and a else None, ".1f", "x"),
            fmt(c_e2e / b_e2e if c_e2e and b_e2e else None, ".2f", "x"),
            f"{vm['engine']['engine']}, {vm['engine']['dtype']}" if vm else "—",
            fmt(vm["startup"] if vm else None),
            f"{per_seq / 1e9:.2f}",
            " / ".join(fmt(x * per_seq / 1e9 if x else None) for x in (a, b, c)),
            fmt(100 * c * per_seq / peak if c else None, ".1f", "%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results: dict, args) -> str:
    lines = []
    for size, r in results.items():
        if "hf" in r:
            tried = ", ".join(f"{d} {t} thr x batch {b}: {v:.1f}"
                              for (d, t, b), v in r["hf"]["by_setting"].items())
            lines.append(f"- pythia-{size} (b) seq/s on {r['hf']['n']} sequences: {tried}")
        for run in ([r["vmem"]] if "vmem" in r else []) + r.get("forced", []):
            how = f"--engine {run['forced']}" if run["forced"] else "defaults"
            lines.append(f"- pythia-{size} (c) `vmem evaluate` ({how}), {run['n']} sequences: "
                         f"{run['process_seq_s']:.1f} seq/s for the whole process "
                         f"({run['process_s']:.1f} s), {run['seq_s']} seq/s after "
                         f"{run['startup']:.1f} s start-up; engine "
                         f"{json.dumps(run['engine'], sort_keys=True)}; choices "
                         f"{json.dumps(run['choices'], sort_keys=True)}")
    return "\n".join(lines)


def record(text: str, path: Path) -> None:
    """Append (never overwrite) one run's section to the results file."""
    with open(path, "a") as f:
        f.write(text)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["pythia-70m", "pythia-160m"],
                        help="Pythia shapes (pythia-70m, 160m, ..., 12b)")
    parser.add_argument("--methods", default="seed,hf,vmem",
                        help="comma-separated subset of seed (a), hf (b), vmem (c)")
    parser.add_argument("--n", type=int, default=2048, help="sequences for vmem (c)")
    parser.add_argument("--n-seed", type=int, default=64, help="sequences for the seed's method")
    parser.add_argument("--n-hf", type=int, default=256, help="sequences per batch size in (b)")
    parser.add_argument("--hf-batch-sizes", default="64,256",
                        help="batch sizes (b) tries, comma-separated")
    parser.add_argument("--dtypes", default=None,
                        help="dtypes (a) and (b) try, comma-separated (default: float32, and "
                             "bfloat16 where the CPU computes it natively; float16 on GPU)")
    parser.add_argument("--peak-dtype", default=None,
                        help="matmul peak dtype (default: vmem's auto dtype)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}",
                        help="torch thread counts (b) tries, comma-separated; (a) uses the best")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--cont-len", type=int, default=32)
    parser.add_argument("--vmem-engine", action="append", default=[], choices=["vllm", "hf"],
                        help="also run (c) with this engine forced (repeatable)")
    parser.add_argument("--vmem-args", default="",
                        help="extra `vmem evaluate` flags for (c), e.g. '--enforce-eager'")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vmem-bench-throughput"),
                        help="models, dataset and run folders (models are kept for reuse)")
    parser.add_argument("--keep", action="store_true", help="keep vmem's run folders")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md",
                        help="markdown file the results are appended to")
    parser.add_argument("--note", default="", help="a line recorded with the results")
    args = parser.parse_args()
    args.sizes = [s.removeprefix("pythia-") for s in args.shape]
    unknown = [s for s in args.sizes if s not in pythia.SIZES]
    if unknown:
        parser.error(f"--shape {unknown[0]}: expected one of "
                     f"{', '.join('pythia-' + s for s in pythia.SIZES)}")
    args.methods = set(args.methods.split(","))
    if not args.methods <= {"seed", "hf", "vmem"}:
        parser.error(f"--methods {','.join(sorted(args.methods))}: expected seed, hf, vmem")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU visible")
    args.hf_batch_sizes = [int(b) for b in args.hf_batch_sizes.split(",")]
    args.threads = sorted({int(t) for t in args.threads.split(",")})
    auto = choose_dtype("auto").value
    default = [auto] if args.device == "cuda" else sorted({"float32", auto})
    args.dtypes = args.dtypes.split(",") if args.dtypes else default
    args.peak_dtype = args.peak_dtype or auto
    args.vmem_args = shlex.split(args.vmem_args)
    return args


def main() -> None:
    args = parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    before = machine(args.device)
    peak = matmul_peak(args.peak_dtype, args.device)
    # vLLM's CPU worker computes on one core (it keeps one for its scheduler): that core's peak.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    peak_one = matmul_peak(args.peak_dtype, args.device) if args.device == "cpu" else None
    torch.set_num_threads(threads)
    print(f"matmul peak ({args.peak_dtype}, {args.device}): {peak / 1e9:,.0f} GFLOP/s",
          file=sys.stderr)
    prompts = np.random.default_rng(1).integers(
        1, TOKEN_IDS, size=(max(args.n_seed, args.n_hf), args.prompt_len), dtype=np.int64)
    results = {}
    for size in args.sizes:
        print(f"pythia-{size} ({args.device}):", file=sys.stderr)
        results[size] = measure_transformers(size, prompts, args)
        if "vmem" in args.methods:
            results[size]["vmem"] = measure_vmem(size, args, None)
        results[size]["forced"] = [measure_vmem(size, args, e) for e in args.vmem_engine]
    after = os.getloadavg()[0]

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "bench/throughput.py", *sys.argv[1:]])
    gpu = f", GPU {before['gpu']}" if "gpu" in before else ""
    one = f" ({peak_one / 1e9:,.0f} on one thread)" if peak_one else ""
    note = f"\n\nNote: {args.note}" if args.note else ""
    text = (
        f"\n## {when}: `{command}`\n\n"
        f"Machine: {before['cpu']}, {before['cores']} cores, flags {before['flags']}; CPU kind "
        f"**{before['kind']}**"
        + (f" (emulated: {' '.join(f'{k}={v}' for k, v in before['emulated'].items())})"
           if before["emulated"] else "") +
        f"{gpu}; torch {before['torch']} (default {before['torch_threads']} threads); "
        f"load average (1 min) {before['load']:.2f} at start, {after:.2f} at end. "
        f"(a)/(b) dtypes tried: {', '.join(args.dtypes)}; matmul peak ({args.peak_dtype}) "
        f"{peak / 1e9:,.0f} GFLOP/s{one}. (a) runs on a subset of --n-seed sequences (it is "
        f"slow); (b) on --n-hf sequences per setting, then end to end on --n; (c) on --n "
        f"sequences.{note}\n\n"
        f"{table(results, peak, args)}\n\n{notes(results, args)}\n"
    )
    print(text)
    record(text, args.results)
    print(f"appended to {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
