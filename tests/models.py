"""Tiny GPT-NeoX models and a dataset in Pythia's format, built for the tests.

The model really memorizes: it is trained for a few seconds on the first MEMORIZED sequences of
the dataset, one of which has end-of-text tokens inside its continuation. The vLLM engines (one
worker, and two tensor-parallel workers) are started once per test session (start-up takes
most of a minute on CPU, two for two workers) and shared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

from tests.required import unavailable
from vmem import hardware
from vmem.engines import EngineConfig, build_engine
from vmem.io import mmidx

VOCAB = 512
SEQ_LEN = 96  # room for --offset tests; Pythia's is 2049
NUM_SEQUENCES = 640
MEMORIZED = 8  # sequences 0..7 are trained on
EOS_SEQUENCE = 3  # its true continuation holds the end-of-text token (0)
EOS_POSITIONS = (32 + 4, 32 + 17)


def tiny_config() -> GPTNeoXConfig:
    # Head size 64 (128 / 2): vLLM's CPU backend refuses smaller heads.
    return GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=512, max_position_embeddings=128, rotary_pct=0.25,
        use_parallel_residual=True, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )


def make_tokens(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, VOCAB, size=(NUM_SEQUENCES, SEQ_LEN), dtype=np.uint16)
    rows[EOS_SEQUENCE, list(EOS_POSITIONS)] = 0
    return rows


def train_to_memorize(rows: np.ndarray, folder, steps: int = 150, seed: int = 0,
                      config=None) -> None:
    """Overfit a tiny model (GPT-NeoX's `tiny_config` unless `config` names another) on `rows`'
    first 64 tokens and save it (fp32, safetensors)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config or tiny_config())
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.from_numpy(rows[:, :64].astype(np.int64))
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()
    model.save_pretrained(folder)


def reference_cont_logprobs(model_dir, tokens: np.ndarray, prompt_len: int,
                            cont_len: int) -> np.ndarray:
    """log P(true continuation | prompt) per row, from a plain transformers forward pass and
    log_softmax: the reference vmem's engines are checked against, sharing no code with them."""
    model = GPTNeoXForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.from_numpy(tokens[:, :prompt_len + cont_len].astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, prompt_len - 1:-1].double()
    picked = torch.log_softmax(logits, dim=-1).gather(2, ids[:, prompt_len:, None])
    return picked.squeeze(2).sum(dim=1).numpy()


@pytest.fixture(scope="session")
def tiny_tokens() -> np.ndarray:
    return make_tokens()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_tokens) -> str:
    """A merged-format dataset prefix (`.../tiny` for tiny.bin + tiny.idx)."""
    prefix = str(tmp_path_factory.mktemp("data") / "tiny")
    mmidx.write_merged(prefix, tiny_tokens)
    return prefix


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokens) -> str:
    folder = tmp_path_factory.mktemp("model") / "tiny-neox"
    train_to_memorize(tiny_tokens[:MEMORIZED], folder)
    return str(folder)


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    engine = build_engine(EngineConfig(tiny_model_dir, engine="vllm", dtype="float32"))
    yield engine
    engine.close()  # before the interpreter's exit, whose shutdown of vLLM can abort the process


@pytest.fixture(scope="session")
def vllm_tp_engine(tiny_model_dir):
    """The tiny model tensor-parallel over two vLLM CPU workers, one attention head and one
    core each (vmem binds them); shared like `vllm_engine`: it takes most of two minutes to
    start on a 2-core machine."""
    if not hardware.on_gpu() and len(hardware.cpu_cores()) < 2:
        unavailable("tensor parallelism on CPU needs two physical cores this process may use "
                    "(here: hyperthreads of one core, or one CPU)")
    engine = build_engine(EngineConfig(tiny_model_dir, engine="vllm", dtype="float32", tp=2))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_engine(tiny_model_dir):
    engine = build_engine(EngineConfig(tiny_model_dir, engine="hf", dtype="float32"))
    yield engine
    engine.close()
