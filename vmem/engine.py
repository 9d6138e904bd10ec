"""Greedy continuation engines: vLLM (the default) and transformers (`hf`), one contract.

`generate(prompts, cont_len, allow_eos)` takes an int64 array (n, prompt_len) and returns the
greedy continuation, int64 (n, cont_len); one engine serves any cont_len and EOS mode. Paper
mode masks end-of-text for all cont_len steps, as the paper's `min_length=64` did; `allow_eos`
lets the model emit it and keeps generating to cont_len tokens.
`continuation_logprobs(prompts, continuations)` is the teacher-forced log-probability of the true
continuation (sum over its tokens).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmem.errors import VmemError


@dataclass(frozen=True)
class EngineConfig:
    model: str
    revision: str | None = None
    engine: str = "vllm"  # "vllm" | "hf"
    dtype: str = "auto"  # "auto" | "float16" | "bfloat16" | "float32"
    tp: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    memory_share: float | None = None
    enforce_eager: bool = False
    download_dir: str | None = None
    seed: int = 0


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(dtype: str) -> str:
    """`auto` is float16 on GPU (as the paper ran) and bfloat16 on CPU (fast there with AMX)."""
    if dtype != "auto":
        return dtype
    return "float16" if on_gpu() else "bfloat16"


def load_model_config(model: str, revision: str | None, download_dir: str | None = None):
    """The model's transformers config; a model that cannot be found is one clear VmemError."""
    from transformers import AutoConfig

    if _looks_local(model) and not Path(model).is_dir():
        raise VmemError(f"model '{model}': no such folder (expected a Hugging Face model folder)")
    try:
        return AutoConfig.from_pretrained(model, revision=revision, cache_dir=download_dir)
    except (OSError, ValueError) as err:
        where = f"model '{model}'" + (f" at revision '{revision}'" if revision else "")
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VmemError(f"{where} cannot be loaded: {reason}") from None


def _looks_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.path.exists(model) or model.count("/") > 1


def eos_token_id(config) -> int:
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return 0 if eos is None else int(eos)  # GPT-NeoX's end-of-text is 0


def check_tensor_parallel(tp: int) -> None:
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 1
    if tp < 1 or tp > visible:
        where = "GPU(s)" if torch.cuda.is_available() else "device (CPU only, no GPU visible)"
        raise VmemError(f"--tp {tp}: expected 1..{visible}, this machine has {visible} {where}")


def preflight(cfg: EngineConfig):
    """The cheap checks (device count, model found) before anything is started or written."""
    if cfg.engine not in ("vllm", "hf"):
        raise VmemError(f"--engine {cfg.engine}: expected vllm or hf")
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise VmemError("--engine vllm: vLLM is not installed (pip install 'vmem[cpu]' or "
                        "'vmem[gpu]'); or use --engine hf")
    check_tensor_parallel(cfg.tp)
    return load_model_config(cfg.model, cfg.revision, cfg.download_dir)


def build_engine(cfg: EngineConfig):
    model_config = preflight(cfg)
    if cfg.engine == "vllm":
        return VllmEngine(cfg, eos_token_id(model_config))
    return HfEngine(cfg, eos_token_id(model_config))


class VllmEngine:
    """vLLM on token ids: no tokenizer, greedy, exactly cont_len new tokens per prompt."""

    def __init__(self, cfg: EngineConfig, eos: int):
        import vllm
        from vllm import SamplingParams

        self.cfg, self.eos, self.dtype = cfg, eos, resolve_dtype(cfg.dtype)
        gpu = on_gpu()
        # On the CPU build the memory share is of RAM: vLLM's GPU default (0.9+) cannot be had.
        memory_share = cfg.memory_share or (0.9 if gpu else 0.3)
        options = dict(
            model=cfg.model,
            revision=cfg.revision,
            skip_tokenizer_init=True,
            dtype=self.dtype,
            tensor_parallel_size=cfg.tp,
            gpu_memory_utilization=memory_share,
            enforce_eager=cfg.enforce_eager,
            download_dir=cfg.download_dir,
            seed=cfg.seed,
            # Prompts are distinct training sequences: a prefix cache would only cost memory.
            enable_prefix_caching=False,
            max_model_len=None,
        )
        if cfg.max_num_seqs:
            options["max_num_seqs"] = cfg.max_num_seqs
        if cfg.max_num_batched_tokens:
            options["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        options = {k: v for k, v in options.items() if v is not None}
        try:
            self.llm = vllm.LLM(**options)
        except Exception as err:  # vLLM raises many types; the user needs one line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise VmemError(f"model '{cfg.model}': vLLM could not start: {reason}") from None
        self.version = vllm.__version__
        self.scoring = SamplingParams(
            temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False
        )

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

    def continuation_logprobs(self, prompts: np.ndarray, continuations: np.ndarray) -> np.ndarray:
        full = np.concatenate([prompts, continuations], axis=1)
        outputs = self.llm.generate(_token_prompts(full), self.scoring, use_tqdm=False)
        p = prompts.shape[1]
        sums = np.empty(len(full), dtype=np.float64)
        for row, (tokens, out) in enumerate(zip(full, outputs, strict=True)):
            # prompt_logprobs[j] holds the log-prob of token j given tokens[:j].
            sums[row] = sum(out.prompt_logprobs[j][int(tokens[j])].logprob
                            for j in range(p, len(tokens)))
        return sums

    def describe(self) -> dict:
        import torch

        return {"engine": "vllm", "vllm": self.version, "torch": torch.__version__,
                "dtype": self.dtype, "tp": self.cfg.tp}


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
        self.cfg, self.eos, self.dtype = cfg, eos, resolve_dtype(cfg.dtype)
        self.device = "cuda" if on_gpu() else "cpu"
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                cfg.model, revision=cfg.revision, cache_dir=cfg.download_dir,
                dtype=getattr(torch, self.dtype),
            ).to(self.device).eval()
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0]
            raise VmemError(f"model '{cfg.model}' cannot be loaded: {reason}") from None
        # Rows per forward pass: large enough to keep the matmuls busy, small enough for memory.
        self.rows_per_pass = 256 if self.device == "cpu" else 1024

    def generate(self, prompts: np.ndarray, cont_len: int, allow_eos: bool) -> np.ndarray:
        parts = [self._generate(prompts[i:i + self.rows_per_pass], cont_len, allow_eos)
                 for i in range(0, len(prompts), self.rows_per_pass)]
        return np.concatenate(parts) if parts else np.zeros((0, cont_len), np.int64)

    def _generate(self, prompts: np.ndarray, cont_len: int, allow_eos: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.int64)).to(self.device)
            out = self.model(input_ids=ids, use_cache=True)
            cache, steps = out.past_key_values, []
            logits = out.logits[:, -1, :]
            for step in range(cont_len):
                if not allow_eos:
                    logits[:, self.eos] = -float("inf")
                token = logits.argmax(dim=-1, keepdim=True)
                steps.append(token)
                if step + 1 < cont_len:
                    out = self.model(input_ids=token, past_key_values=cache, use_cache=True)
                    cache, logits = out.past_key_values, out.logits[:, -1, :]
            return torch.cat(steps, dim=1).cpu().numpy()

    def continuation_logprobs(self, prompts: np.ndarray, continuations: np.ndarray) -> np.ndarray:
        import torch

        sums = []
        p = prompts.shape[1]
        with torch.inference_mode():
            for i in range(0, len(prompts), self.rows_per_pass):
                full = np.concatenate([prompts[i:i + self.rows_per_pass],
                                       continuations[i:i + self.rows_per_pass]], axis=1)
                ids = torch.from_numpy(full.astype(np.int64)).to(self.device)
                logp = torch.log_softmax(self.model(input_ids=ids).logits.float(), dim=-1)
                # logits at j-1 predict token j.
                picked = logp[:, p - 1:-1, :].gather(2, ids[:, p:, None]).squeeze(2)
                sums.append(picked.sum(dim=1).double().cpu().numpy())
        return np.concatenate(sums) if sums else np.zeros(0)

    def describe(self) -> dict:
        import torch
        import transformers

        return {"engine": "hf", "transformers": transformers.__version__,
                "torch": torch.__version__, "dtype": self.dtype, "tp": 1}
