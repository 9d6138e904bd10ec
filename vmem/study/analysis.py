"""The paper's numbers from loaded runs, as tables (pandas DataFrames, one row per run or pair).

Everything works on the runs' index-aligned uint8 arrays in fixed-size chunks, so a 146M-sequence
run costs a few temporary megabytes per pass, never a Python loop over sequences.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vmem.errors import VmemError
from vmem.study.comparisons import Comparison
from vmem.study.merged_runs import Run

CHUNK = 1 << 22  # sequences per vectorised pass: bounds the temporaries to a few tens of MB


def memorized_share(memorized: int, evaluated: int) -> float:
    return memorized / evaluated


def memorized_count(run: Run) -> int:
    return sum(int(np.count_nonzero(run.memorized(a, b)))
               for a, b in _chunks(run.start, run.stop))


def score_counts(run: Run) -> np.ndarray:
    """How many sequences reached each number of matches 0..cont_len (a generation run)."""
    counts = np.zeros(run.cont_len + 1, dtype=np.int64)
    for a, b in _chunks(0, run.evaluated):
        counts += np.bincount(run.matches[a:b], minlength=run.cont_len + 1)
    return counts


def rates_table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        memorized = memorized_count(run)
        rows.append(dict(run=run.name, model=run.label, step=run.step, params=run.params,
                         evaluated=run.evaluated, memorized=memorized,
                         share=memorized_share(memorized, run.evaluated), suite=run.suite,
                         start=run.start, stop=run.stop, cont_len=run.cont_len,
                         method=run.method, prompt_len=run.prompt_len))
    return _frame(rows, ["step", "params"])


def distribution_table(runs: list[Run], counts: dict[str, np.ndarray]) -> pd.DataFrame:
    """Share of each score value (matches / cont_len) per generation run (those in `counts`)."""
    rows = []
    for run in runs:
        if run.name not in counts:
            continue
        for matches, n in enumerate(counts[run.name]):
            rows.append(dict(run=run.name, matches=matches, score=matches / run.cont_len,
                             sequences=int(n), share=int(n) / run.evaluated))
    return _frame(rows, [], ["run", "matches", "score", "sequences", "share"])


@dataclass(frozen=True)
class Confusion:
    """'memorized by the cheap run' as a predictor of 'memorized by the target run'."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def fpr(self) -> float:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def overlap(a: Run, b: Run, bound: int | None = None) -> tuple[int, int]:
    """The sequence indices both runs have seen (below `bound` where given); a comparison is
    restricted to them."""
    start, stop = max(a.start, b.start), min(a.stop, b.stop)
    if start >= stop:
        raise VmemError(f"runs {a.name} [{a.start}, {a.stop}) and {b.name} [{b.start}, {b.stop}) "
                        "share no sequence index; a comparison needs sequences both have seen")
    if bound is not None and start >= bound:
        raise VmemError(f"--index-bound {bound}: runs {a.name} and {b.name} share only indices "
                        f"[{start}, {stop}), none below it")
    return start, stop if bound is None else min(stop, bound)


def confusion(cheap: Run, target: Run, bound: int | None = None) -> Confusion:
    start, stop = overlap(cheap, target, bound)
    both = by_cheap = by_target = 0
    for a, b in _chunks(start, stop):
        c, t = cheap.memorized(a, b), target.memorized(a, b)
        both += np.count_nonzero(c & t)
        by_cheap += np.count_nonzero(c)
        by_target += np.count_nonzero(t)
    return Confusion(tp=both, fp=by_cheap - both, fn=by_target - both,
                     tn=(stop - start) - by_cheap - by_target + both)


def predictability_table(comparisons: list[Comparison], bound: int | None = None
                         ) -> pd.DataFrame:
    """Each comparison on the sequences both runs have seen, below `bound` where given."""
    rows = []
    for comp in comparisons:
        cm = confusion(comp.cheap, comp.target, bound)
        start, stop = overlap(comp.cheap, comp.target, bound)
        compute = comp.cheap.compute
        rows.append(dict(family=comp.family, cheap=comp.cheap.name, target=comp.target.name,
                         tp=cm.tp, fp=cm.fp, fn=cm.fn, tn=cm.tn, precision=cm.precision,
                         recall=cm.recall, fpr=cm.fpr, f1=cm.f1,
                         cheap_compute=math.nan if compute is None else compute,
                         suite=comp.target.suite, cheap_model=comp.cheap.label,
                         cheap_step=comp.cheap.step, cheap_params=comp.cheap.params,
                         target_model=comp.target.label, target_step=comp.target.step,
                         start=start, stop=stop))
    columns = ["family", "cheap", "target", "tp", "fp", "fn", "tn", "precision", "recall", "fpr",
               "f1", "cheap_compute", "suite", "cheap_model", "cheap_step", "cheap_params",
               "target_model", "target_step", "start", "stop"]
    return _frame(rows, ["cheap_step", "cheap_params", "target_step"], columns)


MIN_R2_POINTS = 3  # fewer points fit a line exactly: their R² would be 1 whatever the data


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
    return _frame(rows, [], ["family", "target", "exponent", "coefficient", "r2", "points",
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
    return _frame(rows, [], ["target", "compute", "recall_A", "recall_B", "better", "within"])


@dataclass(frozen=True)
class StepProfile:
    """Per training step: how many of the run's sequences it holds and their summed matches."""

    steps: np.ndarray
    sequences: np.ndarray
    matches: np.ndarray


def step_profile(run: Run) -> StepProfile:
    bs = run.sequences_per_step
    first_boundary = -(-run.start // bs) * bs  # the first step start at or after run.start
    edges = np.unique(np.concatenate(
        [[0], np.arange(first_boundary, run.stop, bs, dtype=np.int64) - run.start]))
    per_pass = max(1, CHUNK // bs)  # steps summed per pass: reduceat copies its input to int64
    sums = np.concatenate([
        np.add.reduceat(run.matches[edges[i]:edges[i + per_pass] if i + per_pass < edges.size
                                    else run.evaluated], edges[i:i + per_pass] - edges[i],
                        dtype=np.int64)
        for i in range(0, edges.size, per_pass)])
    sizes = np.diff(np.append(edges, run.evaluated))
    return StepProfile((run.start + edges) // bs, sizes, sums)


def score_by_step_table(runs: list[Run], profiles: dict[str, StepProfile],
                        bins: int = 50) -> pd.DataFrame:
    """Mean score in up to `bins` contiguous groups of training steps, per run."""
    rows = []
    for run in runs:
        if run.name not in profiles:  # a verification run has no fractional score
            continue
        p = profiles[run.name]
        starts = np.array([g[0] for g in np.array_split(np.arange(p.steps.size),
                                                        min(bins, p.steps.size))])
        sequences = np.add.reduceat(p.sequences, starts)
        matches = np.add.reduceat(p.matches, starts)
        stops = np.append(p.steps[starts[1:]], p.steps[-1] + 1)
        for step_start, step_stop, n, m in zip(p.steps[starts], stops, sequences, matches,
                                               strict=True):
            rows.append(dict(run=run.name, step_start=int(step_start), step_stop=int(step_stop),
                             sequences=int(n), mean_score=m / (n * run.cont_len)))
    return _frame(rows, [], ["run", "step_start", "step_stop", "sequences", "mean_score"])


def trend_table(runs: list[Run], profiles: dict[str, StepProfile]) -> pd.DataFrame:
    """Least-squares line of score against training step over all of a run's sequences (each
    sequence weighs one: a step's mean score weighted by its sequence count)."""
    rows = []
    for run in runs:
        if run.name not in profiles:
            continue
        p = profiles[run.name]
        w, x = p.sequences.astype(np.float64), p.steps.astype(np.float64)
        y = p.matches / (w * run.cont_len)
        x_mean, y_mean = np.average(x, weights=w), np.average(y, weights=w)
        spread = np.sum(w * (x - x_mean) ** 2)
        slope = np.sum(w * (x - x_mean) * (y - y_mean)) / spread if spread > 0 else math.nan
        rows.append(dict(run=run.name, sequences=run.evaluated, mean_score=float(y_mean),
                         slope_per_1000_steps=float(slope) * 1000,
                         intercept=float(y_mean - slope * x_mean),
                         step_first=int(p.steps[0]), step_last=int(p.steps[-1])))
    return _frame(rows, [], ["run", "sequences", "mean_score", "slope_per_1000_steps",
                             "intercept", "step_first", "step_last"])


def logprob_tables(runs: list[Run], bins: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Teacher-forced continuation log-prob of memorized vs other sequences: a summary per group
    and a histogram on bins shared by both groups of a run."""
    summary, histogram = [], []
    for run in runs:
        if run.cont_logprob is None:
            continue
        memorized = run.memorized()
        finite = run.cont_logprob[np.isfinite(run.cont_logprob)]
        edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else np.array([0.0, 1.0])
        for group, mask in (("memorized", memorized), ("not memorized", ~memorized)):
            values = run.cont_logprob[mask]
            values = values[np.isfinite(values)]
            summary.append(dict(run=run.name, group=group, sequences=int(values.size),
                                mean=float(values.mean()) if values.size else math.nan,
                                median=float(np.median(values)) if values.size else math.nan))
            counts, _ = np.histogram(values, bins=edges)
            histogram += [dict(run=run.name, group=group, bin_start=float(lo), bin_stop=float(hi),
                               sequences=int(n))
                          for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)]
    return (_frame(summary, [], ["run", "group", "sequences", "mean", "median"]),
            _frame(histogram, [], ["run", "group", "bin_start", "bin_stop", "sequences"]))


def prompt_length_table(runs: list[Run]) -> pd.DataFrame:
    """Verification runs over several prompt lengths: the share memorized (the whole continuation
    extracted) at each length, on the same sequences (Carlini et al. 2022's curve)."""
    rows = []
    for run in runs:
        for length, prefix in sorted(run.prefix_by_prompt_len.items()):
            memorized = sum(int(np.count_nonzero(prefix[a:b] == run.cont_len))
                            for a, b in _chunks(0, run.evaluated))
            rows.append(dict(run=run.name, model=run.label, step=run.step, prompt_len=length,
                             evaluated=run.evaluated, memorized=memorized,
                             share=memorized_share(memorized, run.evaluated)))
    return _frame(rows, ["step"], ["run", "model", "step", "prompt_len", "evaluated",
                                   "memorized", "share"])


def method_agreement_table(pairs: list[tuple[Run, Run]]) -> pd.DataFrame:
    """Two runs of one model and checkpoint by different methods (a run and the reference that
    stands for the checkpoint), on the sequences both have seen: how far their memorized flags
    agree (verification and generation agree exactly in float32)."""
    rows = []
    for run, reference in pairs:
        start, stop = max(run.start, reference.start), min(run.stop, reference.stop)
        if start >= stop:  # nothing both have seen: nothing to compare
            continue
        both = only_run = only_reference = 0
        for a, b in _chunks(start, stop):
            r, ref = run.memorized(a, b), reference.memorized(a, b)
            both += np.count_nonzero(r & ref)
            only_run += np.count_nonzero(r & ~ref)
            only_reference += np.count_nonzero(ref & ~r)
        rows.append(dict(run=run.name, method=run.method, reference=reference.name,
                         reference_method=reference.method, model=reference.label,
                         step=reference.step, sequences=stop - start, memorized_both=both,
                         only_run=only_run, only_reference=only_reference,
                         agreement=1 - (only_run + only_reference) / (stop - start)))
    return _frame(rows, ["step"], ["run", "method", "reference", "reference_method", "model",
                                   "step", "sequences", "memorized_both", "only_run",
                                   "only_reference", "agreement"])


def _chunks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, CHUNK):
        yield a, min(a + CHUNK, stop)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def _frame(rows: list[dict], nullable_ints: list[str],
           columns: list[str] | None = None) -> pd.DataFrame:
    """A table whose optional integer columns stay integers (Int64) when some values are missing."""
    frame = pd.DataFrame(rows, columns=columns or (list(rows[0]) if rows else None))
    for column in nullable_ints:
        frame[column] = frame[column].astype("Int64")
    return frame
