"""The demo's training data: real text from Python's standard library, cut like Pythia's.

Documents are the heads of the standard library's modules. The charmap codecs in `encodings/`
are generated from one template, so their heads are near-copies of each other: they are the
corpus's boilerplate, repeated as licence headers and navigation text repeat on the web; the other
modules are mostly unique text. A small byte-level BPE is trained on the documents; documents are
joined with end-of-text (id 0), cut into fixed-length sequences, and stored as several epochs,
each shuffled with its own seed, back to back — so that, as in Pythia, training reads the data in
stored order and checkpoint N has seen exactly sequences [0, N * sequences_per_step).
"""

from __future__ import annotations

import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmem.io import mmidx

EOS_TOKEN = "<|endoftext|>"  # id 0, as in GPT-NeoX's tokenizer


@dataclass(frozen=True)
class CorpusConfig:
    chars: int  # corpus size in characters, before tokenizing
    codec_share: float  # part of `chars` taken from the templated codec modules
    head_chars: int  # each document is the first this many characters of a module
    vocab: int
    seq_len: int  # tokens per stored sequence (Pythia: 2049)
    epochs: int
    shards: int
    seed: int = 0


@dataclass
class Corpus:
    tokenizer: object  # tokenizers.Tokenizer
    rows: np.ndarray  # uint16 (sequences, seq_len): the corpus cut in order, one epoch
    order: np.ndarray  # int64: stored sequence i is rows[order[i]]


def stdlib_modules() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and "__pycache__" not in p.parts)


def documents(cfg: CorpusConfig) -> list[str]:
    """Module heads in a seeded order: `codec_share` of the characters from encodings/."""
    modules = stdlib_modules()
    random.Random(cfg.seed).shuffle(modules)
    codecs = [p for p in modules if p.parent.name == "encodings"]
    others = [p for p in modules if p.parent.name != "encodings"]
    budget = int(cfg.chars * cfg.codec_share)
    docs = _heads(codecs, budget, cfg.head_chars) + _heads(others, cfg.chars - budget,
                                                            cfg.head_chars)
    random.Random(cfg.seed + 1).shuffle(docs)
    return docs


def _heads(paths: list[Path], budget: int, head_chars: int) -> list[str]:
    heads, used = [], 0
    for path in paths:
        if used >= budget:
            break
        text = path.read_text(encoding="utf-8", errors="replace")[:head_chars]
        if text.strip():
            heads.append(text)
            used += len(text)
    return heads


def train_tokenizer(docs: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(docs, trainer)
    return tokenizer


def save_tokenizer(tokenizer, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json: what AutoTokenizer (and `vmem spot`) loads."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, unk_token=EOS_TOKEN)
    fast.save_pretrained(str(folder))


def build_corpus(cfg: CorpusConfig) -> Corpus:
    docs = documents(cfg)
    tokenizer = train_tokenizer(docs, cfg.vocab)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    stream = np.concatenate([np.array([*e.ids, eos], dtype=np.uint16)
                             for e in tokenizer.encode_batch(docs)])
    n = len(stream) // cfg.seq_len
    rows = stream[:n * cfg.seq_len].reshape(n, cfg.seq_len)
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(n) for _ in range(cfg.epochs)])
    return Corpus(tokenizer, rows, order)


def write_corpus(corpus: Corpus, folder: Path, shards: int) -> list[str]:
    """The stored epochs in Pythia's published layout: document-0000K-of-0000M.bin + .idx."""
    stored = corpus.rows[corpus.order]
    # Byte-wise pieces of whole tokens, as Pythia's: boundaries fall mid-sequence.
    tokens = -(-stored.size // shards)
    shard_bytes = tokens * stored.itemsize
    return mmidx.write_sharded(folder, stored, shard_bytes)
