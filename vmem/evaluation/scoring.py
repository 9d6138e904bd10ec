"""The paper's memorization score, vectorised over a batch of sequences, and the one schema of
the tables that hold it (score files and merged runs)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

COLUMN_TYPES = {"index": pa.int64(), "score": pa.float64(), "matches": pa.int64(),
                "prefix_match": pa.int64(), "cont_logprob": pa.float64()}


def columns(logprobs: bool) -> list[str]:
    """A score table's columns, in order; `cont_logprob` when the run records --logprobs."""
    return ["index", "score", "matches", "prefix_match"] + (["cont_logprob"] if logprobs else [])


def schema(logprobs: bool) -> pa.Schema:
    return pa.schema([(c, COLUMN_TYPES[c]) for c in columns(logprobs)])


COLUMNS_IN_WORDS = ",".join(columns(False)) + "[,cont_logprob]"


def score_batch(generated: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: matches (positions equal anywhere, also after a first mismatch) and prefix_match
    (the leading run of equal tokens: the largest k for which the row is k-extractable)."""
    equal = generated == truth
    matches = equal.sum(axis=1, dtype=np.int64)
    prefix_match = np.where(equal.all(axis=1), equal.shape[1], np.argmin(equal, axis=1))
    return matches, prefix_match.astype(np.int64)


def is_memorized(matches: np.ndarray, cont_len: int) -> np.ndarray:
    """Score 1: every continuation token reproduced (the paper's memorized sequence)."""
    return matches == cont_len


def score_csv(indices: np.ndarray, matches: np.ndarray, prefix_match: np.ndarray, cont_len: int,
              cont_logprob: np.ndarray | None) -> bytes:
    """The rows of one score file, as CSV text."""
    header = ",".join(columns(cont_logprob is not None))
    scores = matches / cont_len  # exact in binary for cont_len a power of two; repr round-trips
    values = [indices.tolist(), scores.tolist(), matches.tolist(), prefix_match.tolist()]
    if cont_logprob is not None:
        values.append(cont_logprob.tolist())
    rows = (",".join(map(repr, row)) for row in zip(*values, strict=True))
    return ("\n".join([header, *rows]) + "\n").encode()
