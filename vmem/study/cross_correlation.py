"""The seed notebook's normalized cross-correlation between checkpoints (EleutherAI/pythia,
predictable-memorization/eda.ipynb, "Normalized Signal Cross Correlation"): for each earlier
checkpoint f of a model against each later one g, over the indices both evaluated,

    c(τ) = Σ_n (f[n+τ] − μf)(g[n] − μg) / (N σf σg)

(scipy.signal.correlate's full correlation over √(Σ(f−μf)² Σ(g−μg)²)), shown for lags within
±100,000, with its peak. An index an instance filter masked in either run is left out of μ
and σ and counts as the mean (0 once centred), so it adds nothing at any lag.

Only those lags are computed, blocked: each block of f is correlated (scipy.fft) with the stretch
of g it can meet at those lags, and the blocks' sums add up to c. Memory stays O(block + lags)
and the time O(N log block) for N up to 146M sequences per series.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study import passes
from vmem.study.comparisons import checkpoints_by_model
from vmem.study.context import Study
from vmem.study.correlation import by_size, grid
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.plots import large_numbers, save_cropped

COLUMNS = ["a", "b", "peak", "peak_lag", "sequences"]
MAX_LAG = 100_000  # the notebook's plotted range
BLOCK = 1 << 19  # points of f per FFT: its length is BLOCK + 2 · MAX_LAG
CURVE_POINTS = 2_000  # lag bins a curve keeps for its figure (each bin's min and max)


def tables(study: Study) -> dict[str, pd.DataFrame]:
    rows, curves = [], {}
    for checkpoints in checkpoints_by_model(study.standing).values():
        scored = [run for run in checkpoints if run.matches is not None]
        for before, after in combinations(scored, 2):
            start, stop = max(before.start, after.start), min(before.stop, after.stop)
            if (sequences := passes.trained_count((before, after), start, stop)) < 2:
                continue
            lags, values = normalized_cross_correlation(before, after, start, stop,
                                                        min(MAX_LAG, stop - start - 1))
            peak = int(np.nanargmax(values)) if not np.isnan(values).all() else None
            rows.append(dict(a=before.name, b=after.name,
                             peak=math.nan if peak is None else float(values[peak]),
                             peak_lag=None if peak is None else int(lags[peak]),
                             sequences=sequences))
            curves[(before.name, after.name)] = envelope(lags, values)
    study.notes["cross_correlation_curves"] = curves
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["peak_lag"] = table["peak_lag"].astype("Int64")
    return {"cross_correlation": table} if len(table) else {}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "cross_correlation" not in study.tables:
        return {}
    cross_correlation_figure(study.tables["cross_correlation"],
                             study.notes["cross_correlation_curves"],
                             {run.name: run for run in study.standing},
                             folder / "cross_correlation.png")
    return {"cross_correlation": "cross_correlation.png"}


def section(doc: Document, study: Study) -> None:
    if "cross_correlation" not in study.tables:
        return
    doc.section("The seed's figures: cross-correlation between checkpoints")
    doc.paragraph("As the seed's notebook (eda.ipynb) computed it: for each earlier checkpoint "
                  "f (a) of a model and each later one g (b), both generation runs, the "
                  "normalized cross-correlation of their score series over the N sequences both "
                  "evaluated, c(τ) = Σ_n (f[n+τ] − μf)(g[n] − μg) / (N σf σg), for lags τ within "
                  "±100,000 (±(N − 1) when shorter), and its peak there (the notebook took the "
                  "peak over all lags and plotted these). c(0) is Pearson's r of the two "
                  "checkpoints. A peak at lag 0 says each sequence's score goes with its own "
                  "score at the other checkpoint; a curve near 0 elsewhere says neighbouring "
                  "sequences (trained on in the same steps) tell nothing about each other; a "
                  "peak at another lag would mean one series is shifted against the other.")
    if passes.filters_instances(study.standing):
        doc.paragraph("An instance the order's instance filter masked in either run is left "
                      "out of the means and spreads (N counts the indices both trained on) and "
                      "counts as its series' mean at every lag: it adds nothing to any sum, so "
                      "at a lag where masked instances lie fewer than N pairs meet.")
    doc.table(show(study.tables["cross_correlation"]))
    doc.figure(study.figures["cross_correlation"],
               "Normalized cross-correlation of the scores of an earlier and a later checkpoint "
               "against the lag, per model (each curve drawn as its range over bins of lags).")


def centered(run: Run, start: int, stop: int, mean: float, lo: int, hi: int,
             among: tuple[Run, Run]) -> np.ndarray:
    """The run's matches minus `mean` on [lo, hi) as float64, zero outside [start, stop) and
    where a run of `among` did not train: a centred point there adds nothing to a sum."""
    out = np.zeros(hi - lo)
    a, b = max(lo, start), min(hi, stop)
    if a < b:
        out[a - lo:b - lo] = run.matches[a - run.start:b - run.start]
        out[a - lo:b - lo] -= mean
        if (trained := passes.trained_mask(among, a, b)) is not None:
            out[a - lo:b - lo][~trained] = 0
    return out


def moments(run: Run, start: int, stop: int, among: tuple[Run, Run]) -> tuple[float, float]:
    """Mean and Σ(x − mean)² of the run's matches on the indices of [start, stop) both runs of
    `among` trained on, from exact integer sums."""
    n, total, squares = passes.trained_count(among, start, stop), 0, 0
    for lo, hi in passes.chunks(start, stop):
        matches = run.matches[lo - run.start:hi - run.start]
        if (trained := passes.trained_mask(among, lo, hi)) is not None:
            matches = matches[trained]
        counts = np.bincount(matches, minlength=run.cont_len + 1)
        values = np.arange(counts.size, dtype=np.int64)
        total += int(values @ counts)
        squares += int((values * values) @ counts)
    return total / n, (n * squares - total * total) / n


def normalized_cross_correlation(f: Run, g: Run, start: int, stop: int, max_lag: int
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """Lags −max_lag..max_lag and c at each, over [start, stop) (see the module's docstring);
    NaN where either series is constant. Scores are matches / cont_len: c is the same on
    matches."""
    from scipy import fft

    lags = np.arange(-max_lag, max_lag + 1)
    mean_f, spread_f = moments(f, start, stop, (f, g))
    mean_g, spread_g = moments(g, start, stop, (f, g))
    if spread_f == 0 or spread_g == 0:
        return lags, np.full(lags.size, np.nan)
    total = np.zeros(lags.size)
    for lo in range(start, stop, BLOCK):
        hi = min(lo + BLOCK, stop)
        block = centered(f, start, stop, mean_f, lo, hi, (f, g))
        reach = centered(g, start, stop, mean_g, lo - max_lag, hi + max_lag, (f, g))
        # Circular correlation over a length ≥ len(reach): out[k] = Σ_m f[m] g[m + k − max_lag]
        # wraps around only for k > 2 · max_lag, so out[:2 · max_lag + 1] is exact; τ = max_lag − k.
        size = fft.next_fast_len(reach.size, real=True)
        spectrum = fft.rfft(reach, size, workers=-1) * np.conj(fft.rfft(block, size, workers=-1))
        out = fft.irfft(spectrum, size, workers=-1)
        total += out[2 * max_lag::-1]
    return lags, total / math.sqrt(spread_f * spread_g)


def envelope(lags: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """The curve for its figure: per bin of consecutive lags, the bin's middle lag and its
    minimum and maximum (a spike narrower than a bin still shows)."""
    width = max(1, math.ceil(lags.size / CURVE_POINTS))
    bins = math.ceil(lags.size / width)
    padded = np.full(bins * width, np.nan)
    padded[:lags.size] = values
    padded = padded.reshape(bins, width)
    middle = lags[np.minimum(np.arange(bins) * width + width // 2, lags.size - 1)]
    if np.isnan(values).all():
        return middle, padded[:, 0], padded[:, 0]
    return middle, np.nanmin(padded, axis=1), np.nanmax(padded, axis=1)


def cross_correlation_figure(table: pd.DataFrame, curves: dict, runs: dict[str, Run],
                             path: Path) -> None:
    """One panel per model: each earlier/later pair's curve and its peak."""
    by_model: dict[str, list] = {run.model: [] for run in by_size([runs[a] for a in table["a"]])}
    for row in table.itertuples():
        by_model[runs[row.a].model].append(row)
    from matplotlib.ticker import MaxNLocator

    fig, axes = grid(len(by_model), columns=3, width=5.5, height=3.8)
    for ax, rows in zip(axes, by_model.values(), strict=False):
        for row in rows:
            middle, low, high = curves[(row.a, row.b)]
            label = f"{runs[row.a].step} → {runs[row.b].step}"
            # The bins' maxima as a line too: a spike one bin wide stays visible.
            (line,) = ax.plot(middle, high, linewidth=0.8, label=label)
            ax.fill_between(middle, low, high, alpha=0.4, color=line.get_color())
            if not pd.isna(row.peak):
                ax.plot([row.peak_lag], [row.peak], "_", markersize=14, markeredgewidth=2,
                        color=line.get_color())
        ax.set_title(runs[rows[0].a].label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("lag (sequences)")
        large_numbers(ax.xaxis)
        ax.set_ylabel("normalized cross-correlation")
        ax.legend(fontsize=6, loc="upper right")
    for ax in axes[len(by_model):]:
        ax.set_visible(False)
    save_cropped(fig, path)
