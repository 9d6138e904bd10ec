"""Facts about the Pythia suite: sizes, parameter counts, shapes, checkpoints and hub ids."""

from __future__ import annotations

import re
from dataclasses import dataclass

SEQUENCES_PER_STEP = 1024
TOKENS_PER_SEQUENCE = 2048  # inputs per sequence (each stored row has 2049 tokens)
FINAL_STEP = 143_000
PAPER_CHECKPOINTS = (23_000, 43_000, 63_000, 83_000, 103_000, 123_000, 143_000)


@dataclass(frozen=True)
class PythiaSize:
    name: str
    params: int  # total parameters, from the Pythia model cards
    layers: int
    hidden: int
    heads: int
    vocab: int = 50304


SIZES = {
    s.name: s
    for s in (
        PythiaSize("14m", 14_067_712, 6, 128, 4),
        PythiaSize("31m", 30_494_720, 6, 256, 8),
        PythiaSize("70m", 70_426_624, 6, 512, 8),
        PythiaSize("160m", 162_322_944, 12, 768, 12),
        PythiaSize("410m", 405_334_016, 24, 1024, 16),
        PythiaSize("1b", 1_011_781_632, 16, 2048, 8),
        PythiaSize("1.4b", 1_414_647_808, 24, 2048, 16),
        PythiaSize("2.8b", 2_775_208_960, 32, 2560, 32),
        PythiaSize("6.9b", 6_857_302_016, 32, 4096, 32, vocab=50432),
        PythiaSize("12b", 11_846_072_320, 36, 5120, 40, vocab=50688),
    )
}

# The suite the paper evaluated (14m and 31m came later, without -v0 models).
PAPER_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")

# The whole last part of a hub id or folder (or the part before a checkpoint's `stepN/` folder):
# `pythia-1b-sft` or `pythia-1b-deduped-lora` are other models, with their own revisions and size.
# PolyPythias (`pythia-160m-seed3`, `-data-seed3`, `-weight-seed3`) were only trained on the
# standard Pile, never deduped nor as `-v0`.
_MODEL_ID = re.compile(r"(?:^|/)pythia-(?P<size>[0-9.]+[mb])"
                       r"(?:(?P<deduped>-deduped)?(?P<v0>-v0)?"
                       r"|-(?P<variant>seed|data-seed|weight-seed)(?P<seed>\d+))"
                       r"(?:/step\d+)?/*$")
_STEP = re.compile(r"^step(\d+)$")


@dataclass(frozen=True)
class PythiaModel:
    size: PythiaSize
    deduped: bool
    v0: bool  # the suite as first released, renamed `-v0` when it was retrained
    variant: str | None = None  # PolyPythias: "seed", "data-seed" or "weight-seed"
    seed: int | None = None  # its K

    @property
    def suite(self) -> str:
        """Runs of one suite share a training order: each PolyPythias variant and seed is one."""
        if self.variant:
            return f"pythia-{self.variant}{self.seed}"
        return "pythia" + "-deduped" * self.deduped + "-v0" * self.v0


def hub_id(size: str, deduped: bool, v0: bool = False) -> str:
    return f"EleutherAI/pythia-{size}{'-deduped' if deduped else ''}{'-v0' if v0 else ''}"


def parse(model: str) -> PythiaModel | None:
    """The Pythia model a hub id or path names (`EleutherAI/pythia-1b-deduped-v0`,
    `/models/pythia-1b/step143000`, `EleutherAI/pythia-160m-data-seed2`), or None for any other
    model."""
    match = _MODEL_ID.search(model)
    if not match or match.group("size") not in SIZES:
        return None
    seed = match.group("seed")
    return PythiaModel(SIZES[match.group("size")], bool(match.group("deduped")),
                       bool(match.group("v0")), match.group("variant"),
                       None if seed is None else int(seed))


def size_of(model: str) -> PythiaSize | None:
    """The Pythia size a model id or path names (`EleutherAI/pythia-1b-deduped` → 1b), if any."""
    found = parse(model)
    return found.size if found else None


def step_of_revision(revision: str | None) -> int | None:
    """`step143000` → 143000; anything else → None."""
    match = _STEP.match(revision or "")
    return int(match.group(1)) if match else None


def suite_of(model: str) -> str | None:
    """`EleutherAI/pythia-1b` → "pythia", `…-deduped` → "pythia-deduped", `…-v0` →
    "pythia-v0" or "pythia-deduped-v0" (never grouped with the retrained suite), PolyPythias'
    `…-seed3` → "pythia-seed3" (`-data-seed3`, `-weight-seed3` alike); not Pythia → None."""
    found = parse(model)
    return found.suite if found else None


def training_compute(params: int, step: int, *, sequences_per_step: int = SEQUENCES_PER_STEP,
                     tokens_per_sequence: int = TOKENS_PER_SEQUENCE) -> float:
    """≈ 6 · parameters · tokens seen, the usual estimate of training FLOPs."""
    return 6.0 * params * step * sequences_per_step * tokens_per_sequence


def neox_config_kwargs(size: str) -> dict:
    """transformers GPTNeoXConfig arguments for a Pythia shape (random weights, same compute)."""
    s = SIZES[size]
    return dict(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=4 * s.hidden,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
