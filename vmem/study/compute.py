"""Recall against the cheap run's training compute: a power law per family and target, and both
families' fits of the same target compared at the same compute (the paper's equi-compute view)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.passes import frame
from vmem.study.plots import legend, save

MIN_R2_POINTS = 3  # fewer points fit a line exactly: their R² would be 1 whatever the data
FAMILY_COLORS = {"A": "tab:blue", "B": "tab:orange"}


def tables(study: Study) -> dict[str, pd.DataFrame]:
    predictability = study.tables["predictability"]
    fits = compute_fits(predictability)
    return {"compute_fit": compute_fit_table(fits),
            "equi_compute": equi_compute_table(predictability, fits)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    predictability = study.tables["predictability"]
    if not (predictability["cheap_compute"] > 0).any():
        return {}
    compute_figure(predictability, compute_fits(predictability), folder / "recall_vs_compute.png")
    return {"recall_vs_compute": "recall_vs_compute.png"}


def section(doc: Document, study: Study) -> None:
    doc.section("Recall against the cheap run's training compute")
    doc.paragraph("Compute ≈ 6 · parameters · tokens seen (Pythia: step · 1024 · 2048 tokens). "
                  "A power law recall = coefficient · compute^exponent is fitted per family and "
                  "target; the equi-compute table evaluates both families' fits of the same "
                  "target at the same compute. R² is given for fits to 3 or more points: a "
                  "line through 2 points fits them exactly, so its R² of 1 says nothing.")
    if "recall_vs_compute" in study.figures:
        for name in ("compute_fit", "equi_compute"):
            if len(study.tables[name]):
                doc.table(show(study.tables[name]))
        doc.figure(study.figures["recall_vs_compute"],
                   "Recall against compute, log-log, with fits.")
    else:
        doc.paragraph("No comparison with a known compute (parameters and step of the cheap run).")


@dataclass(frozen=True)
class PowerLaw:
    """y ≈ coefficient · x ** exponent, fitted by least squares in log-log space."""

    exponent: float
    coefficient: float
    r2: float
    points: int

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.coefficient * np.power(x, self.exponent)


def fit_power_law(x: np.ndarray, y: np.ndarray) -> PowerLaw | None:
    """Fit over the points with x > 0 and y > 0; None if fewer than two distinct x remain. R² is
    NaN below MIN_R2_POINTS points (a line through two points fits them exactly)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log10(x[keep]), np.log10(y[keep])
    if np.unique(lx).size < 2:
        return None
    exponent, intercept = np.polyfit(lx, ly, 1)
    residual = np.sum((ly - (exponent * lx + intercept)) ** 2)
    total = np.sum((ly - ly.mean()) ** 2)
    points = int(keep.sum())
    r2 = 1.0 - residual / total if total > 0 and points >= MIN_R2_POINTS else math.nan
    return PowerLaw(float(exponent), float(10.0 ** intercept), float(r2), points)


@dataclass(frozen=True)
class ComputeFit:
    law: PowerLaw
    compute_min: float  # the range of cheap-run compute it was fitted on
    compute_max: float

    def covers(self, compute: float) -> bool:
        return self.compute_min <= compute <= self.compute_max


def compute_fits(predictability: pd.DataFrame) -> dict[tuple[str, str], ComputeFit]:
    """Recall against the cheap run's training compute: one power law per family and target
    (the paper compares both families predicting the same target, the largest final model)."""
    fits = {}
    for (family, target), rows in predictability.groupby(["family", "target"], sort=True):
        law = fit_power_law(rows["cheap_compute"].to_numpy(), rows["recall"].to_numpy())
        if law is not None:
            used = rows.loc[(rows["cheap_compute"] > 0) & (rows["recall"] > 0), "cheap_compute"]
            fits[(family, target)] = ComputeFit(law, float(used.min()), float(used.max()))
    return fits


def compute_fit_table(fits: dict[tuple[str, str], ComputeFit]) -> pd.DataFrame:
    rows = [dict(family=family, target=target, exponent=fit.law.exponent,
                 coefficient=fit.law.coefficient, r2=fit.law.r2, points=fit.law.points,
                 compute_min=fit.compute_min, compute_max=fit.compute_max)
            for (family, target), fit in sorted(fits.items())]
    return frame(rows, [], ["family", "target", "exponent", "coefficient", "r2", "points",
                            "compute_min", "compute_max"])


def equi_compute_table(predictability: pd.DataFrame,
                       fits: dict[tuple[str, str], ComputeFit]) -> pd.DataFrame:
    """Both families' fitted recall of the same target at the same compute: at the compute of
    every cheap run of either fit; `within` says whether both fits cover it (no extrapolation)."""
    rows = []
    for target in sorted({t for _, t in fits}):
        if ("A", target) not in fits or ("B", target) not in fits:
            continue
        fit_a, fit_b = fits[("A", target)], fits[("B", target)]
        computes = predictability.loc[predictability["target"] == target, "cheap_compute"]
        for compute in np.unique(computes[computes > 0].to_numpy()):
            recall_a, recall_b = float(fit_a.law(compute)), float(fit_b.law(compute))
            better = "A" if recall_a > recall_b else "B" if recall_b > recall_a else "tie"
            rows.append(dict(target=target, compute=float(compute), recall_A=recall_a,
                             recall_B=recall_b, better=better,
                             within=fit_a.covers(compute) and fit_b.covers(compute)))
    return frame(rows, [], ["target", "compute", "recall_A", "recall_B", "better", "within"])


def compute_figure(table: pd.DataFrame, fits: dict[tuple[str, str], ComputeFit],
                   path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    markers = dict(zip(sorted(table["target"].unique()), "osD^v<>p*hX", strict=False))
    for (family, target), rows in table.groupby(["family", "target"], sort=True):
        rows = rows[(rows["cheap_compute"] > 0) & (rows["recall"] > 0)]
        ax.scatter(rows["cheap_compute"], rows["recall"], color=FAMILY_COLORS[family],
                   marker=markers.get(target, "o"), label=f"family {family} → {target}")
        if (family, target) in fits:
            fit = fits[(family, target)]
            x = np.geomspace(fit.compute_min, fit.compute_max, 50)
            ax.plot(x, fit.law(x), color=FAMILY_COLORS[family], lw=1,
                    label=f"fit: recall ∝ compute^{fit.law.exponent:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute of the cheap run (FLOPs ≈ 6 · parameters · tokens seen)")
    ax.set_ylabel("recall (log scale)")
    ax.set_title("Recall against the cheap run's compute (A: smaller models, B: checkpoints)")
    legend(ax)
    save(fig, path)
