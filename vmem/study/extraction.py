"""Extraction beyond the greedy flag.

- Probabilistic (Hayes et al. 2024, "Measuring memorization through probabilistic discoverable
  extraction"): with the continuation's log-probability recorded (`--logprobs`), p_z =
  exp(cont_logprob) is the chance one sampled continuation is the true one, and a sequence is
  (n, p)-extractable when 1 - (1 - p_z)^n >= p: n samples find it with probability at least p.
- Approximate (Ippolito et al. 2022): the greedy continuation within a token-level edit
  similarity of the truth (generation runs that recorded `edit_similarity`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study.analysis import CHUNK, memorized_count, memorized_share
from vmem.study.merged_runs import Run

SAMPLES = (1, 10, 100, 1000)
PROBABILITIES = (0.1, 0.5, 0.9)
SIMILARITIES = (0.9, 0.75)
NP_COLUMNS = ["run", "model", "step", "n", "p", "evaluated", "extractable", "share",
              "greedy_share"]


def log_miss(cont_logprob: np.ndarray) -> np.ndarray:
    """log(1 - p_z): the log-chance one sample misses the truth; exact where p_z is tiny (where
    1 - p_z rounds to 1) and -inf where p_z is 1."""
    p_z = np.exp(np.minimum(cont_logprob.astype(np.float64), 0.0))
    with np.errstate(divide="ignore"):
        return np.log1p(-p_z)


def np_extractable(miss: np.ndarray, n: int, p: float) -> np.ndarray:
    """1 - (1 - p_z)^n >= p, as n · log(1 - p_z) <= log(1 - p); `miss` is `log_miss`."""
    return n * miss <= np.log1p(-p)


def np_table(runs: list[Run]) -> pd.DataFrame:
    """The (n, p)-extractable share of each run with log-probs, beside its greedy share."""
    rows = []
    for run in runs:
        if run.cont_logprob is None:
            continue
        counts = dict.fromkeys([(n, p) for n in SAMPLES for p in PROBABILITIES], 0)
        for a in range(0, run.evaluated, CHUNK):
            miss = log_miss(run.cont_logprob[a:a + CHUNK])
            for n, p in counts:
                counts[n, p] += int(np_extractable(miss, n, p).sum())
        greedy = memorized_share(memorized_count(run), run.evaluated)
        for (n, p), extractable in counts.items():
            rows.append(dict(run=run.name, model=run.label, step=run.step, n=n, p=p,
                             evaluated=run.evaluated, extractable=extractable,
                             share=memorized_share(extractable, run.evaluated),
                             greedy_share=greedy))
    return pd.DataFrame(rows, columns=NP_COLUMNS).astype({"step": "Int64"})


def approximate_table(runs: list[Run]) -> pd.DataFrame:
    """Per generation run with edit similarity: the exact share and the share above each
    similarity threshold."""
    above = [f"share_above_{t}" for t in SIMILARITIES]
    rows = []
    for run in runs:
        if run.edit_similarity is None:
            continue
        row = dict(run=run.name, model=run.label, step=run.step, evaluated=run.evaluated,
                   exact_share=memorized_share(memorized_count(run), run.evaluated),
                   mean_edit_similarity=float(run.edit_similarity.mean(dtype=np.float64)))
        for name, threshold in zip(above, SIMILARITIES, strict=True):
            row[name] = memorized_share(int((run.edit_similarity > threshold).sum()),
                                        run.evaluated)
        rows.append(row)
    columns = ["run", "model", "step", "evaluated", "exact_share", *above,
               "mean_edit_similarity"]
    return pd.DataFrame(rows, columns=columns).astype({"step": "Int64"})


def np_figure(table: pd.DataFrame, path: Path) -> None:
    """One panel per p: the extractable share against the number of samples n, per run, with
    the greedy share at n = 1 for scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(PROBABILITIES), 4))
    axes = fig.subplots(1, len(PROBABILITIES), sharey=True)
    for ax, p in zip(axes, PROBABILITIES, strict=True):
        for run, rows in table[table["p"] == p].groupby("run", sort=False):
            line, = ax.plot(rows["n"], rows["share"] * 100, marker="o", label=run)
            ax.scatter([1], [rows["greedy_share"].iloc[0] * 100], marker="x",
                       color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("samples n")
        ax.set_title(f"p = {p}")
    axes[0].set_ylabel("(n, p)-extractable, % of evaluated (x: greedy)")
    axes[-1].legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
