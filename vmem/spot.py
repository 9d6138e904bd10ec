"""Spot checks: a few sequences' prompt, true continuation and generation, mismatches marked."""

from __future__ import annotations

import dataclasses

import numpy as np

from vmem.data import check_window, open_dataset
from vmem.engine import EngineConfig, build_engine
from vmem.errors import VmemError
from vmem.scoring import score_batch


def spot_command(args) -> int:
    engine = EngineConfig(
        model=args.model, revision=args.revision, engine=args.engine, dtype=args.model_dtype,
        tp=args.tp, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, memory_share=args.memory_share,
        enforce_eager=args.enforce_eager, download_dir=args.download_dir, seed=args.seed,
    )
    dataset = open_dataset(args.data, seq_len=args.seq_len, dtype=args.data_dtype,
                           s3_endpoint=args.s3_endpoint)
    print(spot(dataset, args.index, engine, prompt_len=args.prompt_len, cont_len=args.cont_len,
               offset=args.offset, allow_eos=args.allow_eos, batch_size=args.batch_size,
               tokenizer=args.tokenizer))
    return 0


def spot(dataset, indices: list[int], engine_config: EngineConfig, *, prompt_len: int = 32,
         cont_len: int = 32, offset: int = 0, allow_eos: bool = False, batch_size: int = 1024,
         tokenizer: str | None = None) -> str:
    """The report text for `indices`; token ids always, decoded text when a tokenizer loads."""
    for index in indices:
        if not 0 <= index < dataset.num_sequences:
            raise VmemError(f"--index {index}: expected 0..{dataset.num_sequences - 1} "
                            f"({dataset.num_sequences} sequences in {dataset.location})")
    check_window(dataset, prompt_len, cont_len, offset)
    rows = np.stack([dataset.read(i, i + 1)[0] for i in indices]).astype(np.int64)
    prompts = rows[:, offset:offset + prompt_len]
    truth = rows[:, offset + prompt_len:offset + prompt_len + cont_len]
    engine = build_engine(dataclasses.replace(engine_config, max_len=prompt_len + cont_len + 1))
    generated = engine.generate(prompts, cont_len, allow_eos)
    matches, prefix = score_batch(generated, truth)
    decode = _decoder(tokenizer or engine_config.model)
    blocks = []
    for k, index in enumerate(indices):
        marked = " ".join(str(g) if g == t else f"[{g}]"
                          for g, t in zip(generated[k], truth[k], strict=True))
        lines = [
            f"sequence {index} (training step {index // batch_size}): score "
            f"{matches[k] / cont_len:.5f} ({matches[k]}/{cont_len} positions), prefix match "
            f"{prefix[k]}",
            f"  prompt     {' '.join(map(str, prompts[k]))}",
            f"  truth      {' '.join(map(str, truth[k]))}",
            f"  generated  {marked}   ([x] = differs from truth)",
        ]
        if decode:
            lines += [f"  prompt text     {decode(prompts[k])!r}",
                      f"  truth text      {decode(truth[k])!r}",
                      f"  generated text  {decode(generated[k])!r}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _decoder(name: str):
    """A token-ids → text function, or None when no tokenizer can be loaded from `name`."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
    except Exception:  # no tokenizer is an expected case: ids are printed anyway
        return None
    return lambda ids: tok.decode([int(t) for t in ids])
