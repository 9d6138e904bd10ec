"""Spot checks: a few sequences' prompt, true continuation and generation, mismatches marked.

With `--method verify` the line under the truth is the argmax at each position given the true
prefix (one teacher-forced pass): it equals generation up to the first mismatch, which is where
the true prefix first leaves the argmax."""

from __future__ import annotations

import dataclasses

import numpy as np

from vmem.data import Dataset, check_lengths, check_window, step_size, untrained
from vmem.engines import EngineConfig, build_engine
from vmem.errors import VmemError
from vmem.scoring import GENERATE, VERIFY, check_method, leading_run, score_batch


def spot(dataset: Dataset, indices: list[int], engine_config: EngineConfig, *,
         prompt_len: int = 32, cont_len: int = 32, offset: int = 0, allow_eos: bool = False,
         sequences_per_step: int | None = None, method: str = GENERATE,
         tokenizer: str | None = None, engine=None) -> str:
    """The report text for `indices`; token ids always, decoded text when a tokenizer loads.
    `engine` lets a caller that already runs one for `engine_config` reuse it (and close it)."""
    check_method(method)
    for index in indices:
        if not 0 <= index < dataset.num_sequences:
            raise VmemError(f"--index {index}: expected 0..{dataset.num_sequences - 1} "
                            f"({dataset.num_sequences} sequences in {dataset.location})")
    check_window(dataset, prompt_len, cont_len, offset)
    for index in indices:  # a window in padding is never scored
        check_lengths(dataset, index, index + 1, offset + prompt_len + cont_len)
    per_step = step_size(dataset, sequences_per_step)
    rows = np.stack([dataset.read(i, i + 1)[0] for i in indices])
    masked = untrained(dataset, rows)
    rows = rows.astype(np.int64)
    prompts = rows[:, offset:offset + prompt_len]
    truth = rows[:, offset + prompt_len:offset + prompt_len + cont_len]
    own = engine is None
    if own:
        engine = build_engine(dataclasses.replace(engine_config,
                                                  max_len=prompt_len + cont_len + 1))
    try:
        if method == VERIFY:
            # With log-probs every position is computed, also past the first mismatch.
            shown, label = engine.teacher_forced(np.concatenate([prompts, truth], axis=1),
                                                 [prompt_len], allow_eos, True)[0], "argmax   "
            prefix = leading_run(shown == truth)
        else:
            shown, label = engine.generate(prompts, cont_len, allow_eos), "generated"
            matches, prefix = score_batch(shown, truth)
    finally:
        if own:
            engine.close()
    decode = _decoder(tokenizer or engine_config.model)
    blocks = []
    for k, index in enumerate(indices):
        marked = " ".join(str(g) if g == t else f"[{g}]"
                          for g, t in zip(shown[k], truth[k], strict=True))
        head = f"sequence {index} (training step {index // per_step}"
        if masked is not None and masked[k]:
            head += "; never trained on: the order's instance filter masks it"
        head += "): "
        if method == VERIFY:
            head += ("memorized (the argmax follows the whole true continuation)"
                     if prefix[k] == cont_len else
                     f"not memorized: the true continuation first leaves the argmax at "
                     f"position {prefix[k]} (prefix match {prefix[k]})")
        else:
            head += (f"score {matches[k] / cont_len:.5f} ({matches[k]}/{cont_len} positions), "
                     f"prefix match {prefix[k]}")
        lines = [
            head,
            f"  prompt     {' '.join(map(str, prompts[k]))}",
            f"  truth      {' '.join(map(str, truth[k]))}",
            f"  {label}  {marked}   ([x] = differs from truth"
            + (", given the true prefix)" if method == VERIFY else ")"),
        ]
        if decode:
            lines += [f"  prompt text     {decode(prompts[k])!r}",
                      f"  truth text      {decode(truth[k])!r}",
                      f"  {label.strip()} text  {decode(shown[k])!r}"]
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
