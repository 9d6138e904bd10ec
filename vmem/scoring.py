"""The paper's memorization score, vectorised over a batch of sequences."""

from __future__ import annotations

import numpy as np


def score_batch(generated: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: matches (positions equal anywhere, also after a first mismatch) and prefix_match
    (the leading run of equal tokens: the largest k for which the row is k-extractable)."""
    equal = generated == truth
    matches = equal.sum(axis=1, dtype=np.int64)
    prefix_match = np.where(equal.all(axis=1), equal.shape[1], np.argmin(equal, axis=1))
    return matches, prefix_match.astype(np.int64)
