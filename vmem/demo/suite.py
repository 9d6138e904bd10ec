"""The demo's model suite: Pythia's architecture at a few tiny sizes, trained on the spot.

Each model reads the dataset in its stored order, a fixed number of sequences per step, as Pythia
did, and is saved at several steps as `SIZE/stepN/` (fp32 safetensors + the corpus's tokenizer), so
every checkpoint is an ordinary local model folder for `vmem evaluate` and `vmem spot`. Training
is seeded and runs on one thread per model, so it gives the same weights on every run; sizes
train in parallel processes (the caller's pool, one worker per core).
"""

from __future__ import annotations

import math
import shutil
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmem import pythia
from vmem.data import open_dataset


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int  # heads = hidden // 64: vLLM's CPU backend refuses heads smaller than 64
    lr: float  # peak learning rate: lower for larger models, as in Pythia

    def non_embedding_params(self) -> int:
        return 12 * self.layers * self.hidden ** 2  # attention 4·h² + MLP 8·h² per layer


SHAPES = {s.name: s for s in (Shape("0.2m", 64, 4, 1e-2), Shape("1m", 128, 5, 6e-3),
                              Shape("4m", 256, 5, 3e-3))}


@dataclass(frozen=True)
class Training:
    data: str  # dataset folder
    tokenizer: str  # folder with tokenizer.json + tokenizer_config.json
    vocab: int
    sequences_per_step: int  # sequences per step
    steps: int
    checkpoints: tuple[int, ...]
    seed: int = 0


def checkpoint_dir(models: Path, size: str, step: int) -> Path:
    return models / size / f"step{step}"


def train_suite(sizes: list[str], training: Training, models: Path,
                pool: Executor) -> dict[str, Future | None]:
    """Submit to `pool` (one worker per core) the training of every size whose last checkpoint is
    missing, the largest first; per size its training's future, None where already trained."""
    trained: dict[str, Future | None] = {}
    for size in sorted(sizes, key=lambda s: -SHAPES[s].non_embedding_params()):
        if (checkpoint_dir(models, size, training.checkpoints[-1]) / "config.json").exists():
            print(f"  {size}: already trained", flush=True)
            trained[size] = None
        else:
            trained[size] = pool.submit(train_model, SHAPES[size], training, models)
    return trained


def neox_config(shape: Shape, vocab: int, seq_len: int):
    from transformers import GPTNeoXConfig

    kwargs = dict(pythia.neox_config_kwargs("70m"), vocab_size=vocab, hidden_size=shape.hidden,
                  num_hidden_layers=shape.layers, num_attention_heads=shape.hidden // 64,
                  intermediate_size=4 * shape.hidden, max_position_embeddings=seq_len)
    return GPTNeoXConfig(**kwargs)


def train_model(shape: Shape, training: Training, models: Path) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import GPTNeoXForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(training.seed)
    torch.use_deterministic_algorithms(True)
    dataset = open_dataset(training.data)
    model = GPTNeoXForCausalLM(neox_config(shape, training.vocab, dataset.seq_len))
    optimizer = torch.optim.AdamW(model.parameters(), lr=shape.lr, betas=(0.9, 0.95),
                                  weight_decay=0.01)
    # Pythia's schedule: linear warm-up over the first 1% of steps (here at least 10), then
    # cosine decay to 10% of the peak.
    warmup = max(10, training.steps // 100)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(
        s, warmup, training.steps))
    started, bs = time.time(), training.sequences_per_step
    model.train()
    for step in range(1, training.steps + 1):
        rows = torch.from_numpy(dataset.read((step - 1) * bs, step * bs).astype(np.int64))
        logits = model(input_ids=rows[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step in training.checkpoints:
            save_checkpoint(model, Path(training.tokenizer),
                            checkpoint_dir(models, shape.name, step))
            print(f"  {shape.name}: step {step}/{training.steps}, loss {loss.item():.3f}, "
                  f"saved step{step} ({time.time() - started:.0f} s)", flush=True)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def save_checkpoint(model, tokenizer: Path, folder: Path) -> None:
    """The model (fp32 safetensors) and the tokenizer files, renamed into place when whole."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer / name, tmp / name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
