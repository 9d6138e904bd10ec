"""vmem's main job: score every sequence of an index range for memorization.

source (dataset) → batches (prefetched) → engine (greedy continuation, or one teacher-forced pass
with `--method verify`) → scores → score files.

`plan` decides everything before an engine starts or a file is written: the range, this task's
slice, the resolved engine settings, the manifest. `run` does one slice with one engine: each
chunk of `chunk_size` sequences is one engine call and one durable score file, so a run killed at
any moment and started again with the same command does only what is missing. With
`--data-parallel N`, `run_data_parallel` starts N children, each given its part of the plan, and
marks the whole slice finished once every child has.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import vmem
from vmem import hardware, olmo, pythia, quiet
from vmem.data import (
    Dataset,
    check_lengths,
    check_window,
    iter_batches,
    manifest_entry,
    open_dataset,
    resolve_range,
    step_size,
)
from vmem.engines import EngineConfig, build_engine, describe, preflight, resolve
from vmem.errors import VmemError
from vmem.runs.folder import RunFolder, fingerprint, gaps
from vmem.runs.slicing import task_from_env, task_slice
from vmem.runs.weights import fingerprint_weights
from vmem.scoring import (
    GENERATE,
    VERIFY,
    check_method,
    columns,
    generation_values,
    memorized_column,
    memorized_flags,
    prompt_lens,
    score_csv,
    verification_values,
)

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
    method: str = GENERATE  # or VERIFY: the memorized flag and prefix match from one pass
    prompt_len: int | list[int] = 32  # several lengths (at one offset) with --method verify
    cont_len: int = 32
    offset: int = 0
    allow_eos: bool = False
    logprobs: bool = False
    chunk_size: int = DEFAULT_CHUNK
    task_id: int | None = None
    num_tasks: int | None = None
    data_parallel: int = 1
    seq_len: int | None = None
    data_dtype: str | None = None
    s3_endpoint: str | None = None
    sequences_per_step: int | None = None  # the order's own, else Pythia's
    staging_dir: str | None = None
    params: int | None = None
    progress: bool = True


def revision_for(model: str, revision: str | None, checkpoint: int | None) -> str | None:
    """The hub revision to load: as given, else Pythia's `step{checkpoint}` branch."""
    if revision is None and checkpoint is not None and pythia.size_of(model):
        return f"step{checkpoint}"
    return revision


@dataclass(frozen=True)
class Plan:
    """What one `vmem evaluate` does, decided before any engine starts or file is written."""

    evaluation: Evaluation
    dataset: Dataset
    folder: RunFolder
    config: EngineConfig  # engine and dtype resolved
    reasons: dict[str, str]  # why each was chosen
    model_config: object
    manifest: dict
    lo: int  # this task's slice of the run's range
    hi: int


def _prompt_lens(ev: Evaluation) -> list[int]:
    lens = ev.prompt_len if isinstance(ev.prompt_len, list) else [ev.prompt_len]
    if len(lens) != len(set(lens)) or lens != sorted(lens):
        raise VmemError(f"--prompt-len {','.join(map(str, lens))}: expected increasing lengths")
    if len(lens) > 1 and ev.method != VERIFY:
        raise VmemError(f"--prompt-len {','.join(map(str, lens))}: several prompt lengths in "
                        f"one run need --method verify (generation takes one at a time)")
    return lens


def plan(ev: Evaluation) -> Plan:
    if ev.chunk_size < 1:
        raise VmemError(f"--chunk-size {ev.chunk_size}: expected a positive number")
    check_method(ev.method)
    lens = _prompt_lens(ev)
    if ev.data_parallel < 1:
        raise VmemError(f"--data-parallel {ev.data_parallel}: expected a positive number")
    dataset = open_dataset(ev.data, seq_len=ev.seq_len, dtype=ev.data_dtype,
                           s3_endpoint=ev.s3_endpoint)
    ev = dataclasses.replace(ev, sequences_per_step=step_size(dataset, ev.sequences_per_step))
    start, stop = resolve_range(dataset, ev.start, ev.stop, checkpoint=ev.checkpoint,
                                sequences_per_step=ev.sequences_per_step)
    for length in lens:  # before an engine starts
        check_window(dataset, length, ev.cont_len, ev.offset)
    check_lengths(dataset, start, stop, ev.offset + lens[-1] + ev.cont_len)
    folder = RunFolder(ev.out, staging_dir=ev.staging_dir, s3_endpoint=ev.s3_endpoint)
    folder.check_writable()
    existing = folder.manifest()
    requested = dataclasses.replace(
        ev.engine, revision=revision_for(ev.engine.model, ev.engine.revision, ev.checkpoint),
        max_len=lens[-1] + ev.cont_len + 1)
    config, reasons = resolve(requested, (existing or {}).get("settings"))
    model_config = preflight(config)
    # A generation run started before edit similarity was recorded resumes without it.
    edit_similarity = ev.method == GENERATE and (
        existing is None or bool(existing["settings"].get("edit_similarity")))
    manifest = build_manifest(ev, lens, config, reasons, dataset, start, stop, edit_similarity)
    folder.check_claim(manifest, existing)
    lo, hi = task_slice(start, stop, *task_from_env(ev.task_id, ev.num_tasks))
    return Plan(ev, dataset, folder, config, reasons, model_config, manifest, lo, hi)


def evaluate(ev: Evaluation, engine=None) -> dict:
    """Run (or resume) this task's slice of the evaluation; returns the task's stats.
    `engine` lets a caller that evaluates many slices with one model start it once."""
    p = plan(ev)
    if ev.data_parallel > 1:
        return run_data_parallel(p)
    return run(p, engine)


def _todo(p: Plan) -> list[tuple[int, int]]:
    """What is left of the slice. Finished means covered by sound score files (a marker alone
    could outlive a deleted one)."""
    settings = p.manifest["settings"]
    return gaps(p.lo, p.hi, p.folder.done_ranges(p.manifest["fingerprint"], settings,
                                                 within=(p.lo, p.hi)))


def _already_finished(p: Plan) -> dict:
    print(f"vmem: [{p.lo}, {p.hi}) of {p.evaluation.out} is already finished", file=sys.stderr)
    return {"start": p.lo, "stop": p.hi, "already_finished": True}


def _announce(p: Plan) -> None:
    """Say what `auto` chose, once per command."""
    chosen = [f"{name} {getattr(p.config, name)} ({reason})"
              for name, reason in p.reasons.items() if getattr(p.evaluation.engine, name) == "auto"]
    if chosen:
        print(f"vmem: {'; '.join(chosen)}", file=sys.stderr)


def run(p: Plan, engine=None) -> dict:
    """Score what is left of the plan's slice with one engine (the caller's, or one built here
    and stopped after), then mark the slice finished."""
    todo = _todo(p)
    if not todo and p.folder.task_finished(p.lo, p.hi):
        return _already_finished(p)
    started = time.time()
    if engine is not None or not todo:
        return _score_slice(p, engine, todo, started)
    _announce(p)
    engine = build_engine(p.config, p.model_config)
    try:
        return _score_slice(p, engine, todo, started)
    finally:
        engine.close()  # the engine built here stops before this returns or raises


def _score_slice(p: Plan, engine, todo: list[tuple[int, int]], started: float) -> dict:
    ev, folder, lo, hi = p.evaluation, p.folder, p.lo, p.hi
    remaining = sum(b - a for a, b in todo)
    p = _with_weights(p)  # now that the engine has the files local
    if p.manifest["weights"]["sha256"] is None:
        print(f"vmem: warning: no fingerprint of the weights of {p.config.model} "
              f"({p.manifest['weights']['reason']}); the run goes on without", file=sys.stderr)
    # The manifest only once the engine runs: a model that fails to load leaves OUT untouched.
    folder.claim(p.manifest)
    ready = time.time()
    engine_seconds, scored, memorized, untrained = 0.0, 0, 0, 0
    settings, fp = p.manifest["settings"], p.manifest["fingerprint"]
    names, flag, lens = columns(settings), memorized_column(settings), prompt_lens(settings)
    bar = _progress(ev, hi - lo, hi - lo - remaining)
    for a, b in todo:
        for batch in iter_batches(p.dataset, a, b, rows=ev.chunk_size, prompt_len=lens[-1],
                                  cont_len=ev.cont_len, offset=ev.offset):
            # Instances the order's filter kept out of training never reach the engine.
            trained = batch.trained
            prompts, truth = ((batch.prompts, batch.continuations) if trained is None
                              else (batch.prompts[trained], batch.continuations[trained]))
            t0 = time.perf_counter()
            values = _score(engine, ev, lens, prompts, truth) if len(prompts) else {}
            engine_seconds += time.perf_counter() - t0
            first, last = int(batch.indices[0]), int(batch.indices[-1]) + 1
            folder.write_score_file(fp, first, last,
                                    score_csv(batch.indices, values, names, trained))
            scored += len(prompts)
            untrained += len(batch.indices) - len(prompts)
            if values:
                memorized += int(memorized_flags(settings, values[flag]).sum())
            if bar is not None:
                bar.update(len(batch.indices))
    if bar is not None:
        bar.close()
    finished = time.time()
    seconds = finished - ready
    stats = {
        "start": lo, "stop": hi, "scored_now": scored, "memorized_now": memorized,
        "untrained_now": untrained,
        "started": _iso(started), "finished": _iso(finished),
        "startup_seconds": round(ready - started, 3), "seconds": round(seconds, 3),
        "engine_busy_share": round(engine_seconds / seconds, 4) if seconds > 0 else None,
        "sequences_per_second": round(scored / seconds, 2) if seconds > 0 else None,
        "engine_info": p.manifest["engine_info"],
    }
    folder.finish_task(lo, hi, stats)
    share = memorized / scored if scored else 0.0
    print(f"vmem: scored {scored} sequences of [{lo}, {hi}) in {seconds:.1f} s "
          f"({stats['sequences_per_second'] or 0} seq/s, start-up {ready - started:.1f} s); "
          f"memorized {memorized} ({share:.4%})"
          + (f"; {untrained} instances never trained on (the order's instance filter) left out"
             if untrained else "") + f"; results in {ev.out}", file=sys.stderr)
    return stats


def _with_weights(p: Plan) -> Plan:
    """The plan with the fingerprint of the weights in its manifest, refused where it differs
    from the one the run started with. A data-parallel child keeps its parent's; where the parent
    found none (a hub model not downloaded before the children's engines start), it looks again."""
    if (p.manifest.get("weights") or {}).get("sha256"):
        return p
    existing = p.folder.manifest()
    weights = fingerprint_weights(p.config.model, p.config.revision,
                                  (existing or {}).get("weights"), p.config.download_dir)
    manifest = dict(p.manifest, weights=weights)
    p.folder.check_claim(manifest, existing)
    return dataclasses.replace(p, manifest=manifest)


def _score(engine, ev: Evaluation, lens: list[int], prompts: np.ndarray,
           continuations: np.ndarray) -> dict[str, np.ndarray]:
    """One batch's columns: greedy generation, or one teacher-forced pass (verify)."""
    tokens = np.concatenate([prompts, continuations], axis=1)
    if ev.method == VERIFY:
        greedy, token_logprobs = engine.teacher_forced(tokens, lens, ev.allow_eos, ev.logprobs)
        return verification_values(greedy, token_logprobs, tokens, lens, ev.cont_len)
    generated = engine.generate(prompts, ev.cont_len, ev.allow_eos)
    cont_logprob = None
    if ev.logprobs:
        cont_logprob = engine.teacher_forced(tokens, lens, ev.allow_eos, True)[1].sum(axis=1)
    return generation_values(generated, continuations, cont_logprob)


def build_manifest(ev: Evaluation, lens: list[int], config: EngineConfig, reasons: dict,
                   dataset: Dataset, start: int, stop: int, edit_similarity: bool) -> dict:
    settings = {
        "model": config.model, "revision": config.revision,
        "dtype": config.dtype, "engine": config.engine,
        "prompt_len": lens[0] if len(lens) == 1 else lens, "cont_len": ev.cont_len,
        "offset": ev.offset,
        "eos_mode": "allow" if ev.allow_eos else "paper", "logprobs": ev.logprobs,
        "data": manifest_entry(dataset),
        # Sequences per training step. The key keeps its first name (the flag's alias): it is
        # fingerprinted, and runs started under that name must resume.
        "start": start, "stop": stop, "batch_size": ev.sequences_per_step,
    }
    if ev.method != GENERATE:  # a generation run's settings (and fingerprint) stay as they were
        settings["method"] = ev.method
    if edit_similarity:
        settings["edit_similarity"] = True
    size = pythia.size_of(config.model)
    return {
        "vmem_version": vmem.__version__,
        "settings": settings,
        "fingerprint": fingerprint(settings),
        "engine_info": describe(config),
        "choices": reasons,
        "step": ev.checkpoint if ev.checkpoint is not None else _step_of(config.revision),
        "params": ev.params or (size.params if size else _local_param_count(config.model)),
        "created": _iso(time.time()),
    }


def _step_of(revision: str | None) -> int | None:
    """The training step a hub revision names: Pythia's `stepN`, OLMo's `stage1-stepN-tokensMB`."""
    step = pythia.step_of_revision(revision)
    return olmo.revision_step(revision) if step is None else step


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


# -- data parallelism: one engine per GPU group, each a child process on a part of the slice ----

def run_data_parallel(p: Plan) -> dict:
    ev, tp = p.evaluation, p.config.tp
    # The marker first: without it the children read their parts' score files themselves.
    if p.folder.task_finished(p.lo, p.hi) and not _todo(p):
        return _already_finished(p)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(hardware.gpu_count())]
    want = ev.data_parallel * tp
    if gpus and len(gpus) < want:
        raise VmemError(f"--data-parallel {ev.data_parallel} x --tp {tp} needs {want} "
                        f"GPUs; {len(gpus)} are visible")
    _announce(p)
    p = _with_weights(p)  # here: a local model's files are read once, not once per child
    # Children get the plan's decisions (the resolved engine, the choices and their part), so
    # they agree with the parent and with each other.
    child_ev = dataclasses.replace(ev, engine=p.config, data_parallel=1, task_id=0, num_tasks=1)
    parts = [task_slice(p.lo, p.hi, rank, ev.data_parallel) for rank in range(ev.data_parallel)]
    children = []
    try:
        for rank, part in enumerate(parts):
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[rank * tp:(rank + 1) * tp])
            child = subprocess.Popen([sys.executable, "-m", "vmem.evaluate"],
                                     env=env, stdin=subprocess.PIPE, text=True)
            children.append(child)
            child.stdin.write(json.dumps({"evaluation": dataclasses.asdict(child_ev),
                                          "part": part, "choices": p.reasons,
                                          "weights": p.manifest["weights"],
                                          "quiet": quiet.is_quiet()}))
            child.stdin.close()
        failed = [rank for rank, child in enumerate(children) if child.wait() != 0]
    except BaseException:  # Ctrl-C, or a child that died before reading its part
        for child in children:
            child.terminate()
        raise
    if failed:
        raise VmemError(f"--data-parallel: engine(s) {failed} failed; rerun the same command "
                        f"to finish what they left")
    stats = {"start": p.lo, "stop": p.hi, "parts": [list(part) for part in parts]}
    p.folder.finish_task(p.lo, p.hi, stats)
    return stats


def run_part(request: dict) -> dict:
    """A data-parallel child: the parent's evaluation, on the part of the slice it was given."""
    fields = dict(request["evaluation"])
    ev = Evaluation(engine=EngineConfig(**fields.pop("engine")), **fields)
    p = plan(ev)
    lo, hi = request["part"]
    return run(dataclasses.replace(p, lo=lo, hi=hi, manifest=dict(
        p.manifest, choices=request["choices"], weights=request["weights"])))


def _progress(ev: Evaluation, total: int, done: int):
    if not ev.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="seq", desc="vmem evaluate", smoothing=0.1)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


if __name__ == "__main__":  # a data-parallel child; vLLM's worker processes need this guard
    try:
        request = json.load(sys.stdin)
        if request["quiet"]:
            quiet.quiet_libraries()
        run_part(request)
    except VmemError as err:
        print(f"vmem: error: {err}", file=sys.stderr)
        sys.exit(2)
