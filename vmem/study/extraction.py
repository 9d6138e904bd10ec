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

from vmem.study.context import Study
from vmem.study.display import percent, show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import chunks, memorized_count, memorized_share
from vmem.study.plots import save_cropped

SAMPLES = (1, 10, 100, 1000)
PROBABILITIES = (0.1, 0.5, 0.9)
SIMILARITIES = (0.9, 0.75)
NP_COLUMNS = ["run", "model", "step", "n", "p", "evaluated", "extractable", "share",
              "greedy_share"]


def tables(study: Study) -> dict[str, pd.DataFrame]:
    found = {"extraction_np": np_table(study.runs),
             "approximate": approximate_table(study.runs)}
    return {name: table for name, table in found.items() if len(table)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "extraction_np" not in study.tables:
        return {}
    np_figure(study.tables["extraction_np"], folder / "extraction_np.png")
    return {"extraction_np": "extraction_np.png"}


def section(doc: Document, study: Study) -> None:
    if "extraction_np" in study.tables:
        doc.section("Probabilistic extraction")
        doc.paragraph("Runs with the continuation's log-probability: p_z = exp(cont_logprob) is "
                      "the chance that one sampled continuation is the true one; a sequence is "
                      "(n, p)-extractable when n samples find it with probability "
                      "1 − (1 − p_z)^n ≥ p (Hayes et al. 2024). Beside it, the greedy memorized "
                      "share.")
        wide = study.tables["extraction_np"].pivot_table(
            index=["run", "p", "greedy_share"], columns="n", values="share", sort=False)
        wide.columns = [f"n={n}" for n in wide.columns]
        shown = wide.reset_index()
        doc.table(show(shown).assign(**{c: [percent(v) for v in shown[c]]
                                        for c in wide.columns}))
        doc.figure(study.figures["extraction_np"],
                   "(n, p)-extractable share against the number of samples.")
    if "approximate" in study.tables:
        doc.section("Approximate memorization")
        doc.paragraph("Generation runs: the edit similarity of the greedy continuation to the "
                      "truth, 1 − token-level Levenshtein distance / continuation length "
                      "(Ippolito et al. 2022), and the share of sequences above 0.9 and 0.75, "
                      "beside exact memorization (similarity 1).")
        doc.table(show(study.tables["approximate"]))


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
        for a, b in chunks(0, run.span):  # NaN where untrained: never extractable
            miss = log_miss(run.cont_logprob[a:b])
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
        similarity = (run.edit_similarity if run.trained is None
                      else run.edit_similarity[run.trained])
        row = dict(run=run.name, model=run.label, step=run.step, evaluated=run.evaluated,
                   exact_share=memorized_share(memorized_count(run), run.evaluated),
                   mean_edit_similarity=float(similarity.mean(dtype=np.float64)))
        for name, threshold in zip(above, SIMILARITIES, strict=True):
            row[name] = memorized_share(int((similarity > threshold).sum()), run.evaluated)
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
    save_cropped(fig, path)
