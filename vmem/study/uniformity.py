"""The seed notebook's uniformity experiment (EleutherAI/pythia, predictable-memorization/eda.ipynb,
"KS Test & Q-Q plot: Uniformity Experiments"): memorized sequences counted per window of 512
consecutive indices, a Poisson distribution fit to those counts (its mean), the Q-Q plot of
observed against Poisson quantiles, and the Kolmogorov-Smirnov distance between the two.
Memorized sequences spread evenly over training give Poisson counts; clustered ones do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from vmem.study import passes
from vmem.study.comparisons import checkpoints_by_model
from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.plots import save_cropped

COLUMNS = ["run", "window", "windows", "mean", "ks_statistic", "p_value"]
COUNT_COLUMNS = ["run", "memorized", "windows", "poisson_windows"]
WINDOW = 512  # the notebook's batch_size, its "time unit"


def tables(study: Study) -> dict[str, pd.DataFrame]:
    histograms = {run.name: histogram for run in study.runs
                  if (histogram := window_histogram(run)) is not None}
    if not histograms:
        return {}
    return {"uniformity": uniformity_table(histograms),
            "uniformity_counts": counts_table(histograms)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "uniformity" not in study.tables:
        return {}
    names = set(study.tables["uniformity"]["run"])
    # The notebook plots each model's last checkpoint.
    finals = [group[-1] for group in checkpoints_by_model(study.standing).values()]
    shown = [run.name for run in finals if run.name in names] or sorted(names)
    qq_figure(study.tables["uniformity_counts"], study.tables["uniformity"], shown,
              folder / "uniformity.png")
    return {"uniformity": "uniformity.png"}


def section(doc: Document, study: Study) -> None:
    if "uniformity" not in study.tables:
        return
    doc.section("The seed's figures: uniformity of memorization over training")
    doc.paragraph(f"As the seed's notebook computed it: per run, the memorized sequences among "
                  f"those the checkpoint has trained on counted in each whole window of "
                  f"{WINDOW} consecutive indices, and a Poisson distribution with the counts' "
                  f"mean fit to them. If memorized sequences fall independently and evenly over "
                  f"training, the counts are Poisson: the Q-Q points lie on the diagonal and "
                  f"the Kolmogorov-Smirnov statistic (the largest gap between the counts' "
                  f"empirical distribution and the Poisson one) is small, its p-value not. "
                  f"Memorized sequences that cluster (repeated documents, bursts of templated "
                  f"text) give too many empty and too many crowded windows: a large statistic "
                  f"and a tiny p-value. The p-value is conservative: the mean is fit to the "
                  f"same counts, and the counts are integers (the notebook names the test but "
                  f"computes none). `tables/uniformity_counts.csv` has the observed and the "
                  f"Poisson number of windows per count.")
    if passes.filters_instances(study.runs):
        doc.paragraph(f"Instances the order's instance filter masked cannot leave their window: "
                      f"they count as not memorized, so a window holding some has fewer than "
                      f"{WINDOW} trained sequences, which the Poisson fit does not model.")
    doc.table(show(study.tables["uniformity"]))
    doc.figure(study.figures["uniformity"],
               "Q-Q plot of memorized sequences per window against the fitted Poisson "
               "distribution, each model's last checkpoint; marker size: windows at the point.")


def window_histogram(run: Run) -> np.ndarray | None:
    """How many windows [k·WINDOW, (k+1)·WINDOW) hold 0, 1, … WINDOW memorized sequences, over
    the whole windows among the sequences the run evaluated and its checkpoint had trained on
    (the notebook: `range(0, checkpoint*1024, 512)`); None without a whole window."""
    seen = run.stop if run.step is None else min(run.stop, run.step * run.sequences_per_step)
    start, stop = -(-run.start // WINDOW) * WINDOW, seen // WINDOW * WINDOW
    if start >= stop:
        return None
    histogram = np.zeros(WINDOW + 1, dtype=np.int64)
    step = max(1, passes.CHUNK // WINDOW) * WINDOW  # chunks of whole windows
    for a in range(start, stop, step):
        b = min(a + step, stop)
        per_window = run.memorized(a, b).reshape(-1, WINDOW).sum(axis=1)
        histogram += np.bincount(per_window, minlength=WINDOW + 1)
    return histogram


def poisson_mean(histogram: np.ndarray) -> float:
    """The fitted Poisson distribution's mean: the mean count per window (the notebook's)."""
    return float(np.arange(histogram.size) @ histogram / histogram.sum())


def ks_test(histogram: np.ndarray) -> tuple[float, float, float]:
    """The Poisson mean fit to the counts, the KS statistic and its p-value. scipy's kstest
    assumes a continuous null: on integer counts it compares F(k) with the empirical
    distribution just below k and so adds the mass at k to the distance. Both distributions
    being steps at the integers, the distance is taken there, and the p-value is kstest's
    (the KS distribution of n samples)."""
    n, mean = int(histogram.sum()), poisson_mean(histogram)
    empirical = np.cumsum(histogram) / n
    statistic = float(np.abs(empirical - stats.poisson.cdf(np.arange(histogram.size),
                                                           mean)).max())
    return mean, statistic, float(stats.kstwo.sf(statistic, n))


def uniformity_table(histograms: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for name, histogram in histograms.items():
        mean, statistic, p_value = ks_test(histogram)
        rows.append(dict(run=name, window=WINDOW, windows=int(histogram.sum()), mean=mean,
                         ks_statistic=statistic, p_value=p_value))
    return pd.DataFrame(rows, columns=COLUMNS)


def counts_table(histograms: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per run and count of memorized sequences in a window, up to the largest seen: the
    windows observed and those the fitted Poisson distribution expects."""
    parts = []
    for name, histogram in histograms.items():
        n, mean = int(histogram.sum()), poisson_mean(histogram)
        k = np.arange(np.flatnonzero(histogram)[-1] + 1)
        parts.append(pd.DataFrame(dict(run=name, memorized=k, windows=histogram[:k.size],
                                   poisson_windows=n * stats.poisson.pmf(k, mean))))
    return pd.concat(parts, ignore_index=True)[COUNT_COLUMNS]


def qq_figure(counts: pd.DataFrame, tests: pd.DataFrame, names: list[str], path: Path) -> None:
    """The notebook's Q-Q plot (statsmodels' ProbPlot: sorted counts against the Poisson
    quantiles at i / (n + 1)), each distinct point once, sized by how many windows it holds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 6))
    ax = fig.subplots()
    top = 1
    for name in names:
        rows = counts[counts["run"] == name]
        test = tests[tests["run"] == name].iloc[0]
        sample = np.repeat(rows["memorized"].to_numpy(), rows["windows"].to_numpy())
        n = sample.size
        theory = stats.poisson.ppf(np.arange(1, n + 1) / (n + 1), test["mean"])
        points, weight = np.unique(np.stack([theory, sample]), axis=1, return_counts=True)
        ax.scatter(points[0], points[1], s=10 + 40 * np.log10(weight), alpha=0.6,
                   label=f"{name}: KS {test['ks_statistic']:.3g}, p {test['p_value']:.2g}")
        top = max(top, int(sample.max()), int(theory.max()))
    ax.plot([0, top], [0, top], color="red", linestyle="dashed", alpha=0.5)
    ax.set_xlabel("Poisson quantiles")
    ax.set_ylabel(f"memorized sequences per window of {WINDOW} (sorted)")
    ax.legend(fontsize=7)
    save_cropped(fig, path)
