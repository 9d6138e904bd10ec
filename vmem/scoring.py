"""The paper's memorization score and its exact flag, vectorised over a batch of sequences, and the
one schema of the tables that hold them (score files and merged runs).

Two methods fill a run's tables (settings["method"]):
- generate: greedy decoding; `score` = matches / cont_len, `matches` counts equal positions
  anywhere, `prefix_match` the leading run of equal tokens. Memorized: matches == cont_len.
  Runs started since approximate memorization was added (settings["edit_similarity"]) also hold
  `edit_similarity` = 1 - token-level Levenshtein distance / cont_len (Ippolito et al. 2022).
- verify: one teacher-forced pass; `prefix_match` is exact (greedy decoding follows the truth as
  long as the argmax given the true prefix equals it) and `memorized` = prefix_match == cont_len.
  With several prompt lengths, one `prefix_match_p<P>` per length. No fractional score.
- Orders with an instance filter (OLMo's: an instance of long repeats keeps its slot but is never
  trained on) add `trained`: False rows were not given to the engine and hold no values.
- released: EleutherAI's published list of a final model's memorized sequences, imported by
  `vmem import-released` as `memorized` per index of the checkpoint's range. Flags only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vmem.errors import VmemError

GENERATE, VERIFY, RELEASED = "generate", "verify", "released"
TRAINED = "trained"
METHODS = (GENERATE, VERIFY, RELEASED)
PAPER_PROMPT_LEN = 32


def check_method(name: str) -> None:
    """What `vmem evaluate` and `vmem spot` can run (a released list is only imported)."""
    if name not in (GENERATE, VERIFY):
        raise VmemError(f"--method {name}: expected {GENERATE} or {VERIFY}")


def method(settings: dict) -> str:
    # Runs recorded before verification existed have no "method": they generated.
    return settings.get("method", GENERATE)


def prompt_lens(settings: dict) -> list[int]:
    lens = settings["prompt_len"]
    return list(lens) if isinstance(lens, list) else [lens]


def primary_prompt_len(settings: dict) -> int:
    """The prompt length whose flag is the run's memorized flag: the only one, else the paper's
    32 where it was measured, else the shortest."""
    lens = prompt_lens(settings)
    return PAPER_PROMPT_LEN if len(lens) > 1 and PAPER_PROMPT_LEN in lens else min(lens)


def filters_instances(settings: dict) -> bool:
    """Whether the run's order has an instance filter: its tables then say per row whether the
    instance was trained on."""
    return bool(((settings.get("data") or {}).get("order") or {}).get("instance_filter"))


def columns(settings: dict) -> list[str]:
    """A score table's columns for a run's settings, in order."""
    if method(settings) == RELEASED:
        return ["index", "memorized"]
    return _value_columns(settings) + ([TRAINED] if filters_instances(settings) else [])


def _value_columns(settings: dict) -> list[str]:
    logprobs = settings["logprobs"]
    if method(settings) == GENERATE:
        return (["index", "score", "matches", "prefix_match"]
                + (["edit_similarity"] if settings.get("edit_similarity") else [])
                + (["cont_logprob"] if logprobs else []))
    lens = prompt_lens(settings)
    if len(lens) == 1:
        return ["index", "prefix_match", "memorized"] + (["cont_logprob"] if logprobs else [])
    return (["index"] + [f"prefix_match_p{p}" for p in lens]
            + ([f"cont_logprob_p{p}" for p in lens] if logprobs else []))


def column_type(name: str) -> pa.DataType:
    if name in ("memorized", TRAINED):
        return pa.bool_()
    if name in ("score", "edit_similarity") or name.startswith("cont_logprob"):
        return pa.float64()
    return pa.int64()


def schema(settings: dict) -> pa.Schema:
    return pa.schema([(c, column_type(c)) for c in columns(settings)])


def memorized_column(settings: dict) -> str:
    """The column that decides the run's memorized flag (compared with cont_len unless it is
    `memorized` itself)."""
    if method(settings) == GENERATE:
        return "matches"
    if method(settings) == RELEASED or len(prompt_lens(settings)) == 1:
        return "memorized"
    return f"prefix_match_p{primary_prompt_len(settings)}"


def memorized_flags(settings: dict, values: np.ndarray) -> np.ndarray:
    """The run's memorized flags from the values of its `memorized_column`."""
    return values if memorized_column(settings) == "memorized" else values == settings["cont_len"]


def leading_run(equal: np.ndarray) -> np.ndarray:
    """Per row, how many positions from the first are all True."""
    return np.where(equal.all(axis=1), equal.shape[1], np.argmin(equal, axis=1)).astype(np.int64)


def score_batch(generated: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: matches (positions equal anywhere, also after a first mismatch) and prefix_match
    (the leading run of equal tokens: the largest k for which the row is k-extractable)."""
    equal = generated == truth
    return equal.sum(axis=1, dtype=np.int64), leading_run(equal)


def edit_similarity(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per row, 1 - (token-level Levenshtein distance) / cont_len. The dynamic programme runs
    over truth positions, vectorised over rows and generated positions: an insertion chain
    cur[j] = min_k (best[k] + j - k) is a running minimum of best - j, plus j."""
    n, length = truth.shape
    j = np.arange(generated.shape[1] + 1, dtype=np.int32)
    previous = np.broadcast_to(j, (n, j.size))
    for i in range(1, length + 1):
        best = np.empty_like(previous)
        best[:, 0] = i
        best[:, 1:] = np.minimum(previous[:, :-1] + (generated != truth[:, i - 1:i]),
                                 previous[:, 1:] + 1)
        previous = np.minimum.accumulate(best - j, axis=1) + j
    return (length - previous[:, -1]) / length  # never below matches / length (1 - d/L can be)


def generation_values(generated: np.ndarray, truth: np.ndarray,
                      cont_logprob: np.ndarray | None) -> dict[str, np.ndarray]:
    matches, prefix = score_batch(generated, truth)
    values = {"score": matches / truth.shape[1], "matches": matches, "prefix_match": prefix,
              "edit_similarity": edit_similarity(generated, truth)}
    if cont_logprob is not None:
        values["cont_logprob"] = cont_logprob
    return values


def verification_values(greedy: np.ndarray, token_logprobs: np.ndarray | None,
                        tokens: np.ndarray, lens: list[int], cont_len: int
                        ) -> dict[str, np.ndarray]:
    """Columns of a verify run from one teacher-forced pass over `tokens` (n, max(lens) +
    cont_len): greedy[:, k] is the greedy choice for position min(lens) + k."""
    first, values = min(lens), {}
    for p in lens:
        window = slice(p - first, p - first + cont_len)
        prefix = leading_run(greedy[:, window] == tokens[:, p:p + cont_len])
        logprob = None if token_logprobs is None else token_logprobs[:, window].sum(axis=1)
        if len(lens) == 1:
            values["prefix_match"], values["memorized"] = prefix, prefix == cont_len
            if logprob is not None:
                values["cont_logprob"] = logprob
        else:
            values[f"prefix_match_p{p}"] = prefix
            if logprob is not None:
                values[f"cont_logprob_p{p}"] = logprob
    return values


def score_csv(indices: np.ndarray, values: dict[str, np.ndarray], names: list[str],
              trained: np.ndarray | None = None) -> bytes:
    """The rows of one score file, as CSV text: `names` (index first) in order. Floats are
    written with repr, which round-trips (a score is exact for cont_len a power of two).
    With `trained` (an order with an instance filter), `values` hold the trained rows only and
    an untrained row has empty cells."""
    if trained is None:
        data = [indices.tolist()] + [values[name].tolist() for name in names[1:]]
    else:
        at = np.flatnonzero(trained)
        data = [indices.tolist()]
        for name in names[1:]:
            if name == TRAINED:
                data.append(trained.tolist())
                continue
            column = [""] * len(indices)
            for i, value in zip(at.tolist(), values[name].tolist(), strict=True):
                column[i] = value
            data.append(column)
    rows = (",".join(v if v == "" else repr(v) for v in row) for row in zip(*data, strict=True))
    return ("\n".join([",".join(names), *rows]) + "\n").encode()
