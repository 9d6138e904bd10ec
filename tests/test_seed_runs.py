"""The seed notebook's per-run analyses in `vmem report` (index trend, bucketed means, uniformity)
on planted runs whose answers are computed here directly from the run files with numpy/scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tests.test_report import CONT_LEN, run_report, write_run
from vmem.study import passes
from vmem.study.merged_runs import load_run

PER_STEP = 8  # sequences per step of the trend run: buckets of 230 steps hold 1,840
WINDOW = 512
WINDOWS = 400


@pytest.fixture
def seed_runs(tmp_path: Path, monkeypatch) -> tuple[Path, dict[str, Path]]:
    """A run whose score rises with index; one whose memorized sequences per window of 512 are
    Poisson; one (a verification run: flags only) whose memorized sequences come in clusters of
    windows with the same mean. Chunks far smaller than the runs."""
    monkeypatch.setattr(passes, "CHUNK", 997)
    rng = np.random.default_rng(5)
    runs = tmp_path / "runs"
    runs.mkdir()
    start, stop = 300, 20_300
    index = np.arange(start, stop)
    rising = np.clip(np.rint(6 + 18 * index / stop + rng.normal(0, 5, index.size)), 0, CONT_LEN)
    paths = {"trend": write_run(runs, "trend", model="EleutherAI/pythia-70m", step=143_000,
                                start=start, stop=stop, memorized=[], matches=rising.astype(int),
                                sequences_per_step=PER_STEP)}
    mean = 2.0
    poisson = rng.poisson(mean, WINDOWS)
    clustered = np.where(rng.random(WINDOWS) < 0.1, rng.poisson(10 * mean, WINDOWS), 0)
    for name, model, counts, method in [("poisson", "EleutherAI/pythia-160m", poisson, "generate"),
                                        ("clustered", "EleutherAI/pythia-410m", clustered,
                                         "verify")]:
        memorized = [w * WINDOW + i for w, k in enumerate(counts)
                     for i in rng.choice(WINDOW, k, replace=False)]
        # 100 more sequences past the last whole window: a partial window that must not count
        paths[name] = write_run(runs, name, model=model, step=143_000, start=0,
                                stop=WINDOWS * WINDOW + 100, memorized=sorted(memorized),
                                method=method, seed=len(name))
    return runs, paths


def name(path: Path) -> str:
    """The run's name in the report's tables."""
    return load_run(str(path)).name


def selected(path: Path, q: int) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's filter: indices and scores of the sequences scoring at least the q-th
    percentile of the run's scores."""
    table = pd.read_parquet(path)
    score = table["matches"].to_numpy() / CONT_LEN
    keep = score >= np.percentile(score, q)
    return table["index"].to_numpy()[keep], score[keep]


def test_percentile_from_histogram_is_numpys() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 100, 1001, 12_345):
        matches = rng.integers(0, CONT_LEN + 1, n) // rng.integers(1, 9)
        counts = np.bincount(matches, minlength=CONT_LEN + 1)
        for q in (0, 1, 33.3, 50, 90, 99, 99.9, 100):
            expected = np.percentile(matches / CONT_LEN, q)
            assert passes.score_percentile(counts, CONT_LEN, q) == expected


def test_seed_analyses_equal_direct_computation(seed_runs, tmp_path: Path) -> None:
    runs, paths = seed_runs
    out = tmp_path / "report"
    run_report(runs, out)
    tables = out / "tables"

    trend = pd.read_csv(tables / "index_trend.csv")
    assert list(trend.columns) == ["run", "percentile", "slope", "variation", "percent_change"]
    assert set(trend["run"]) == {name(paths["trend"]), name(paths["poisson"])}  # generation only
    trend = trend[trend["run"] == name(paths["trend"])]
    for q in (0, 90, 99):
        index, score = selected(paths["trend"], q)
        slope, intercept = np.polyfit(index, score, 1)
        fit = slope * index + intercept
        row = trend[trend["percentile"] == q].iloc[0]
        assert row["slope"] == pytest.approx(slope, rel=1e-7)
        assert row["variation"] == pytest.approx(fit[-1] - fit[0], rel=1e-7)
        assert row["percent_change"] == pytest.approx((fit[-1] - fit[0]) * 100 / fit[0],
                                                      rel=1e-7)
    assert (trend["slope"] > 0).all()

    buckets = pd.read_csv(tables / "bucket_means.csv")
    size = 230 * PER_STEP
    for q in (0, 90, 99):
        index, score = selected(paths["trend"], q)
        direct = pd.DataFrame(dict(bucket=index // size, score=score)).groupby("bucket")["score"]
        rows = buckets[(buckets["run"] == name(paths["trend"])) & (buckets["percentile"] == q)]
        assert (rows["bucket_start"] // size).tolist() == direct.size().index.tolist()
        assert rows["sequences"].tolist() == direct.size().tolist()
        np.testing.assert_allclose(rows["mean_score"], direct.mean(), rtol=1e-9)
    every = buckets[(buckets["run"] == name(paths["trend"])) & (buckets["percentile"] == 0)]
    assert (every["bucket_start"].min(), every["bucket_stop"].max()) == (300, 20_300)

    uniformity = pd.read_csv(tables / "uniformity.csv").set_index("run")
    for kind in ("poisson", "clustered"):
        table = pd.read_parquet(paths[kind])
        flags = (table["memorized"] if kind == "clustered"
                 else table["matches"] == CONT_LEN).to_numpy()
        counts = flags[:WINDOWS * WINDOW].reshape(WINDOWS, WINDOW).sum(axis=1)
        fit = stats.poisson(counts.mean())
        # scipy's one-sided statistic is exact on integer data where the empirical distribution
        # is above the Poisson one; below it, compare both at every integer.
        above = stats.kstest(counts, fit.cdf, alternative="greater").statistic
        below = max(fit.cdf(k) - np.mean(counts <= k) for k in range(counts.max() + 1))
        row = uniformity.loc[name(paths[kind])]
        assert (row["window"], row["windows"]) == (WINDOW, WINDOWS)
        assert row["mean"] == pytest.approx(counts.mean(), rel=1e-9)
        assert row["ks_statistic"] == pytest.approx(max(above, below), rel=1e-9)
        assert row["p_value"] == pytest.approx(stats.kstwo.sf(max(above, below), WINDOWS),
                                               rel=1e-6)
    assert uniformity.loc[name(paths["poisson"]), "p_value"] > 0.05
    assert uniformity.loc[name(paths["clustered"]), "p_value"] < 1e-6
    assert (out / "tables" / "uniformity_counts.csv").is_file()


def test_seed_figures_in_the_report(seed_runs, tmp_path: Path) -> None:
    runs, _ = seed_runs
    out = tmp_path / "report"
    run_report(runs, out)
    markdown = (out / "report.md").read_text()
    for name in ("index_trend", "bucket_means", "uniformity"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
        assert f"figures/{name}.png" in markdown
        assert f"tables/{name}.csv" in markdown
    assert "uniformity of memorization over training" in markdown
