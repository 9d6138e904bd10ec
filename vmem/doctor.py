"""`vmem doctor`: before a big job, on the node that will run it, check what the job needs.

Six checks, each one row (✓, ✗ with a remedy, or – skipped where an earlier check it needs
failed): the machine, the libraries' versions, the model, the data, the output location, and
that vLLM and transformers agree on this model in this dtype. The last runs both engines on
the first sequences of the range, generating and teacher-forcing, and compares them token by
token. Where they differ, transformers' forward pass measures how far apart the two tokens are
(a log-prob gap, equal to the logit gap): below the tolerance the position is a near-tie that
rounding decides (reported, not a failure), above it the engines really disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vmem import hardware
from vmem.engines import (
    EngineConfig,
    build_engine,
    check_tensor_parallel,
    describe,
    eos_token_ids,
    load_model_config,
    resolve,
    untested_vllm,
)
from vmem.errors import VmemError, first_line

PROMPT_LEN = CONT_LEN = 32  # the paper's window, at offset 0
# A near-tie: the two tokens' logits lie within this many units in the last place of the dtype
# at the chosen token's logit, where rounding (kernels, summation order) can order them either way.
TOLERANCE_ULPS = 4
OK, FAIL, SKIP = "✓", "✗", "–"
ENGINES = ("vLLM", "transformers")  # the engine compared, and the reference
AGREEMENT = "engines agree"  # the last check's name, the longest


@dataclass(frozen=True)
class Doctor:
    """What `vmem doctor` checks; the CLI fills it from its flags."""

    engine: EngineConfig  # as given: engine and dtype may say auto
    data: str
    out: str
    checkpoint: int | None = None
    sequences: int = 64
    seq_len: int | None = None
    data_dtype: str | None = None
    s3_endpoint: str | None = None
    sequences_per_step: int | None = None  # the order's own, else Pythia's
    tolerance: float | None = None  # absolute log-prob gap; None: TOLERANCE_ULPS of the dtype


@dataclass
class Row:
    name: str
    mark: str  # OK, FAIL or SKIP
    found: str
    remedy: str = ""
    comparison: Comparison | None = None  # the agreement check's, to classify again


def _failed(name: str, err: VmemError, remedy: str) -> Row:
    return Row(name, FAIL, str(err), remedy)


def _skipped(name: str, why: str) -> Row:
    return Row(name, SKIP, f"skipped: {why}")


# -- the checks -------------------------------------------------------------------------------

def check_machine(cfg: EngineConfig, reasons: dict[str, str]) -> Row:
    import torch

    if hardware.on_gpu():
        props = [torch.cuda.get_device_properties(i) for i in range(hardware.gpu_count())]
        kinds = Counter(f"{p.name} ({p.total_memory / 2**30:.0f} GiB)" for p in props)
        device = "GPU: " + ", ".join(f"{n} × {kind}" for kind, n in kinds.items())
        bf16 = torch.cuda.is_bf16_supported()
    else:
        device = "no GPU"
        bf16 = hardware.native_bf16()
    found = (f"{device}; CPU {hardware.cpu_kind()}, {len(hardware.cpu_cores())} cores; engine "
             f"{cfg.engine} ({reasons['engine']}), dtype {cfg.dtype} ({reasons['dtype']})")
    if cfg.dtype == "bfloat16" and not bf16:
        return Row("machine", FAIL, f"{found}; bfloat16 is emulated here, far slower than "
                                    f"float32", "--dtype auto (or float16 on a GPU)")
    return Row("machine", OK, found)


def check_versions(cfg: EngineConfig, compare: bool) -> Row:
    """torch, transformers and vLLM as installed; vLLM outside the tested range fails where it
    will run (`compare`: the agreement check runs it too)."""
    needed = cfg.engine == "vllm" or compare
    if importlib.util.find_spec("vllm") is None:
        info = describe(dataclasses.replace(cfg, engine="hf"))
        found = f"torch {info['torch']}, transformers {info.get('transformers')}, vLLM not " \
                f"installed"
        if cfg.engine == "vllm":
            return Row("versions", FAIL, found, "pip install 'vmem[gpu]' (GPU) or "
                                                "'vmem[cpu]'; or --engine hf")
        return Row("versions", OK, found)
    try:
        info = describe(dataclasses.replace(cfg, engine="vllm"))
    except Exception as err:  # a vLLM built for another torch fails on import
        found = f"vLLM does not import: {type(err).__name__}: {first_line(err)}"
        if needed:
            return Row("versions", FAIL, found, "pip install 'vmem[gpu]'")
        return Row("versions", OK, found)
    found = (f"torch {info['torch']}, transformers {info.get('transformers')}, vLLM "
             f"{info['vllm']} (model runner {info['model_runner']}: "
             f"{info['model_runner_reason']})")
    untested = untested_vllm(info["vllm"])  # the line `vmem evaluate` would warn with
    if untested and needed:
        return Row("versions", FAIL, f"{found}; {untested}", "pip install 'vmem[gpu]'")
    return Row("versions", OK, found)


def check_model(cfg: EngineConfig) -> tuple[Row, object]:
    """The config loads (from the cache alone under HF_HUB_OFFLINE=1), its end-of-text ids,
    and --tp against its heads and this machine."""
    try:
        config = load_model_config(cfg.model, cfg.revision, cfg.download_dir)
        check_tensor_parallel(cfg.tp, config)
    except VmemError as err:
        offline = " (HF_HUB_OFFLINE is set: the model must be in the cache)" \
            if os.environ.get("HF_HUB_OFFLINE") else ""
        return _failed("model", err, f"check --model and --revision/--checkpoint{offline}; "
                                     f"on a node without network, download it beforehand"), None
    at = f" at {cfg.revision}" if cfg.revision else ""
    eos = ", ".join(map(str, eos_token_ids(config)))
    return Row("model", OK, f"{cfg.model}{at}: {config.model_type}, "
                            f"{config.num_hidden_layers} layers, {config.num_attention_heads} "
                            f"heads, vocabulary {config.vocab_size}; end-of-text id(s) {eos}; "
                            f"--tp {cfg.tp} fits"), config


def check_data(doc: Doctor, config) -> tuple[Row, tuple[int, np.ndarray] | None]:
    """The data opens, the range (--checkpoint's) lies inside it, its first and last rows read;
    returns the sample the engines are compared on: its first index and its tokens."""
    from vmem.data import check_window, open_dataset, resolve_range

    remedy = ("check --data (PREFIX of .bin + .idx, a shard folder with its .idx, or --seq-len "
              "for a raw .bin) and --checkpoint; download again what is short or missing")
    try:
        dataset = open_dataset(doc.data, seq_len=doc.seq_len, dtype=doc.data_dtype,
                               s3_endpoint=doc.s3_endpoint)
        if doc.checkpoint is None:
            lo, hi = 0, dataset.num_sequences
        else:
            lo, hi = resolve_range(dataset, None, None, checkpoint=doc.checkpoint,
                                   sequences_per_step=doc.sequences_per_step)
        check_window(dataset, PROMPT_LEN, CONT_LEN, 0)
        sample = dataset.read(lo, min(hi, lo + doc.sequences))
        last = dataset.read(hi - 1, hi)
    except VmemError as err:
        return _failed("data", err, remedy), None
    span = "the whole dataset" if doc.checkpoint is None else f"seen by step{doc.checkpoint}"
    found = (f"{dataset.layout} {dataset.location}: {dataset.num_sequences} sequences × "
             f"{dataset.seq_len} {dataset.dtype} tokens; range [{lo}, {hi}) ({span}); rows {lo} "
             f"{_preview(sample[0])} and {hi - 1} {_preview(last[0])} read")
    top = int(max(sample.max(), last.max()))
    if config is not None and top >= config.vocab_size:
        return Row("data", FAIL, f"{found}; token id {top} is outside the model's vocabulary "
                                 f"of {config.vocab_size}",
                   "check that --data is this model's training data and its token dtype"), None
    return Row("data", OK, found), (lo, sample[:, :PROMPT_LEN + CONT_LEN].astype(np.int64))


def _preview(row: np.ndarray) -> str:
    return "[" + " ".join(map(str, row[:6].tolist())) + " …]"


def check_output(doc: Doctor) -> Row:
    """OUT takes a file: a probe is written, read back and deleted; folders made for it are
    removed again."""
    from vmem.io.location import Location
    from vmem.runs.folder import MANIFEST, RunFolder

    remedy = "give --out a writable folder, or s3://bucket/prefix of an existing bucket"
    folder = RunFolder(doc.out, s3_endpoint=doc.s3_endpoint)
    target = Location(doc.out, s3_endpoint=doc.s3_endpoint)
    probe, data = f".vmem-doctor-{uuid.uuid4().hex}", b"vmem doctor probe\n"
    made = None if target.remote else _first_missing(target.url)
    try:
        folder.check_writable()
        try:
            target.put_bytes(probe, data)
            back = target.read_bytes(probe)
            target.delete(probe)
        except OSError as err:  # a local write the access check let through
            raise VmemError(f"--out {doc.out}: cannot write there ({err.strerror})") from None
        finally:
            if made is not None:
                _remove_made(target.url, made)
        if back != data:
            raise VmemError(f"--out {doc.out}: a probe file read back differs from what was "
                            f"written")
        holds = target.exists(MANIFEST)
    except VmemError as err:
        return _failed("output", err, remedy)
    run = "; holds a run (vmem evaluate resumes it only with the same settings)" if holds else ""
    return Row("output", OK, f"{target.url}: a probe file written, read back and deleted"
                             f"{run}")


def _first_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet, if any."""
    missing = None
    while not os.path.exists(path) and path != os.path.dirname(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _remove_made(path: str, made: str) -> None:
    """Remove the (now empty) folders from `path` up to `made`, which the probe created."""
    while True:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        if path == made or path == os.path.dirname(path):
            return
        path = os.path.dirname(path)


# -- the engines compared --------------------------------------------------------------------

@dataclass(frozen=True)
class Outputs:
    generated: np.ndarray  # (n, CONT_LEN): greedy generation after each prompt
    greedy: np.ndarray  # (n, CONT_LEN): teacher-forced choices after each true prefix


def engine_outputs(engine, tokens: np.ndarray) -> Outputs:
    prompts = tokens[:, :PROMPT_LEN]
    generated = engine.generate(prompts, CONT_LEN, allow_eos=False)
    greedy, _ = engine.teacher_forced(tokens, [PROMPT_LEN], False, logprobs=True)
    return Outputs(generated, greedy)


@dataclass(frozen=True)
class Disagreement:
    method: str  # "generate" | "verify"
    row: int  # in the sample
    position: int  # in the continuation
    tokens: tuple[int, int]  # the compared engine's, the reference's
    gap: float  # |log-prob difference| of the two under the reference model
    ulp: float  # the dtype's unit in the last place at the reference's chosen logit


@dataclass(frozen=True)
class Comparison:
    start: int  # the dataset index of the sample's first row
    tokens: np.ndarray  # the sample: prompt + true continuation
    first: Outputs  # vLLM's
    second: Outputs  # transformers', the reference
    dtype: str
    disagreements: list[Disagreement]

    def row(self, tolerance: float | None) -> Row:
        """The agreement check's row: per method, sequences identical, differing only at
        near-ties, and really disagreeing; memorized sequences per engine."""
        n = len(self.tokens)
        counts, real = [], []
        for method in ("generate", "verify"):
            kinds: dict[int, bool] = {}  # row -> has a real disagreement
            for d in self.disagreements:
                if d.method == method:
                    above = d.gap > (TOLERANCE_ULPS * d.ulp if tolerance is None else tolerance)
                    kinds[d.row] = kinds.get(d.row, False) or above
                    if above:
                        real.append(d)
            bad = sum(kinds.values())
            counts.append(f"{method} {n - len(kinds)} identical, {len(kinds) - bad} near-tie, "
                          f"{bad} real")
        truth = self.tokens[:, PROMPT_LEN:]
        memorized = [int((o.generated == truth).all(axis=1).sum())
                     for o in (self.first, self.second)]
        rule = (f"{TOLERANCE_ULPS} ULPs of {self.dtype} at the chosen logit" if tolerance is None
                else f"{tolerance:g}")
        found = (f"{n} sequences [{self.start}, {self.start + n}) in {self.dtype}: "
                 f"{'; '.join(counts)} (near-tie: log-prob gap ≤ "
                 f"{rule}); memorized {ENGINES[0]} {memorized[0]}, {ENGINES[1]} {memorized[1]}")
        if not real:
            return Row(AGREEMENT, OK, found, comparison=self)
        d = max(real, key=lambda d: d.gap)
        index = self.start + d.row
        return Row(AGREEMENT, FAIL, found,
                   f"largest: sequence {index} ({d.method}, position {d.position}): "
                   f"{ENGINES[0]} {d.tokens[0]}, {ENGINES[1]} {d.tokens[1]}, gap {d.gap:.3g}; "
                   f"the engines load other weights or compute differently (vmem spot --index "
                   f"{index} with --engine vllm, then hf, shows it)", comparison=self)


def compare(start: int, tokens: np.ndarray, first: Outputs, second: Outputs, reference_model,
            dtype: str, rows_per_pass: int = 8) -> Comparison:
    """Where `first` and `second` differ, and by how much under `reference_model` (a
    transformers model): generation's first differing position per sequence (after it the two
    continue different texts), every differing position of the teacher-forced pass. One
    forward pass per `rows_per_pass` contexts the reference reads."""
    import torch

    positions: dict[tuple[str, int], list[int]] = {}  # (method, row) -> differing positions
    contexts = []  # what the reference reads for each key: 64 tokens
    for row in range(len(tokens)):
        differ = np.flatnonzero(first.generated[row] != second.generated[row])
        if len(differ):
            positions["generate", row] = [int(differ[0])]
            # Up to that position: the prompt and the engines' common prefix.
            contexts.append(np.concatenate([tokens[row, :PROMPT_LEN], second.generated[row]]))
        differ = np.flatnonzero(first.greedy[row] != second.greedy[row])
        if len(differ):
            positions["verify", row] = differ.tolist()
            contexts.append(tokens[row])
    eps = torch.finfo(getattr(torch, dtype)).eps
    device = next(reference_model.parameters()).device
    keys, found = list(positions), []
    for i in range(0, len(keys), rows_per_pass):
        ids = torch.from_numpy(np.stack(contexts[i:i + rows_per_pass]).astype(np.int64))
        with torch.inference_mode():
            # The logits at PROMPT_LEN - 1 + k predict continuation position k.
            logits = reference_model(input_ids=ids.to(device),
                                     logits_to_keep=CONT_LEN + 1).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for j, (method, row) in enumerate(keys[i:i + rows_per_pass]):
            ours, theirs = ((first.generated, second.generated) if method == "generate"
                            else (first.greedy, second.greedy))
            for k in positions[method, row]:
                a, b = int(ours[row, k]), int(theirs[row, k])
                _, exponent = math.frexp(abs(float(logits[j, k, b])))
                found.append(Disagreement(method, row, k, (a, b),
                                          abs(float(logprobs[j, k, b] - logprobs[j, k, a])),
                                          eps * 2.0 ** (exponent - 1)))
    return Comparison(start, tokens, first, second, dtype, found)


def check_agreement(cfg: EngineConfig, config, start: int, tokens: np.ndarray,
                    tolerance: float | None) -> Row:
    """vLLM and transformers on `tokens`, one after the other (on a GPU both would not fit
    beside each other), compared."""
    try:
        vllm = build_engine(dataclasses.replace(cfg, engine="vllm"), config)
        try:
            first = engine_outputs(vllm, tokens)
        finally:
            vllm.close()
        hf = build_engine(dataclasses.replace(cfg, engine="hf"), config)
        try:
            second = engine_outputs(hf, tokens)
            comparison = compare(start, tokens, first, second, hf.model, cfg.dtype)
        finally:
            hf.close()
    except Exception as err:  # an engine that fails here is what the check is for
        return Row(AGREEMENT, FAIL, f"{type(err).__name__}: {first_line(err)}",
                   "rerun with --verbose to see the libraries' logs")
    return comparison.row(tolerance)


# -- all of them ------------------------------------------------------------------------------

def diagnose(doc: Doctor) -> Iterator[Row]:
    """The rows, each as soon as its check is done."""
    from vmem.evaluate import revision_for

    if doc.sequences < 1:
        raise VmemError(f"-n {doc.sequences}: expected a positive number of sequences")
    if doc.tolerance is not None and not doc.tolerance >= 0:
        raise VmemError(f"--tolerance {doc.tolerance}: expected a log-prob gap of 0 or more")
    requested = dataclasses.replace(doc.engine, revision=revision_for(
        doc.engine.model, doc.engine.revision, doc.checkpoint))
    cfg, reasons = resolve(requested)
    compared = doc.engine.engine != "hf"
    yield check_machine(cfg, reasons)
    yield check_versions(cfg, compared)
    model, config = check_model(cfg)
    yield model
    data, sample = check_data(doc, config)
    yield data
    yield check_output(doc)
    if not compared:
        yield _skipped(AGREEMENT, "--engine hf: transformers alone will run, vLLM is not compared")
    elif importlib.util.find_spec("vllm") is None:
        yield Row(AGREEMENT, FAIL, "vLLM is not installed: transformers has nothing to be compared "
                              "with", "pip install 'vmem[gpu]'")
    elif config is None or sample is None:
        yield _skipped(AGREEMENT, "needs the model and data checks to pass")
    else:
        yield check_agreement(cfg, config, *sample, doc.tolerance)


def run_doctor(doc: Doctor) -> bool:
    """Print the table row by row; True when no check failed."""
    rows = []
    width = len(AGREEMENT)
    for row in diagnose(doc):
        rows.append(row)
        print(f"{row.mark} {row.name:<{width}}  {row.found}", flush=True)
        if row.remedy:
            print(f"  {'':<{width}}  remedy: {row.remedy}", flush=True)
    failed = sum(r.mark == FAIL for r in rows)
    skipped = sum(r.mark == SKIP for r in rows)
    print(f"vmem doctor: {len(rows) - failed - skipped} passed, {failed} failed, "
          f"{skipped} skipped")
    return failed == 0  # a check is skipped only after another failed, or by --engine hf
