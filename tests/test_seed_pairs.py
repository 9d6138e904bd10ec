"""The seed notebook's analyses of pairs of runs in `vmem report` (issue 24 items 3, 4): Pearson's
r between models and between checkpoints, and the normalized cross-correlation between an
earlier and a later checkpoint, on planted merged runs against scipy and numpy."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tests.test_report import CONT_LEN, run_report, write_run
from tests.test_taxonomy import chromium
from vmem.study import cross_correlation
from vmem.study.merged_runs import load_run

PAIR_COLUMNS = ["a", "b", "subset", "pearson", "sequences"]
# Runs are named from their manifests; the files here carry the same names.
SMALL, LARGE, FLAGS = ("pythia-70m-step143000", "pythia-410m-step143000",
                       "pythia-1b-step143000-verify")


def correlated(rng: np.random.Generator, base: np.ndarray, keep: float) -> np.ndarray:
    """`base` where a coin with probability `keep` says so, else a fresh score (1 in 8
    memorized)."""
    fresh = np.where(rng.random(base.size) < 1 / 8, CONT_LEN,
                     rng.integers(0, CONT_LEN, base.size))
    return np.where(rng.random(base.size) < keep, base, fresh)


def scores(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.1, CONT_LEN, rng.integers(0, CONT_LEN, n))


def expected(x: np.ndarray, y: np.ndarray, whole_x: np.ndarray, whole_y: np.ndarray,
             subset: str) -> float:
    """The notebook's r of a subset: x, y the compared matches; whole_* the runs' all matches
    (their percentiles are the run's)."""
    sx, sy = x / CONT_LEN, y / CONT_LEN
    if subset == "score":
        return stats.pearsonr(sx, sy).statistic
    if subset == "memorized":
        return stats.pearsonr((x == CONT_LEN).astype(float), (y == CONT_LEN).astype(float)
                              ).statistic
    q = {"top90": 90, "top99": 99}[subset]
    return stats.pearsonr((sx >= np.percentile(whole_x / CONT_LEN, q)).astype(float),
                          (sy >= np.percentile(whole_y / CONT_LEN, q)).astype(float)).statistic


def table(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report / "tables" / f"{name}.csv")


def test_pearson_between_models_at_a_checkpoint_equals_scipy(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    runs = tmp_path / "runs"
    runs.mkdir()
    small = scores(rng, 6000)  # [0, 6000)
    large = np.concatenate([correlated(rng, small[1000:], 0.6), scores(rng, 1000)])  # [1000, 7000)
    write_run(runs, SMALL, model="EleutherAI/pythia-70m", step=143_000, start=0, stop=6000,
              memorized=[], matches=small)
    write_run(runs, LARGE, model="EleutherAI/pythia-410m", step=143_000, start=1000,
              stop=7000, memorized=[], matches=large)
    # A verification run of a third model: its flags only, so the memorized subset only.
    flags = correlated(rng, small[:5000], 0.5)
    write_run(runs, FLAGS, model="EleutherAI/pythia-1b", step=143_000, start=0, stop=5000,
              memorized=[], matches=flags, method="verify")
    # Another checkpoint held by one model only: no pair there.
    write_run(runs, "pythia-70m-step23000", model="EleutherAI/pythia-70m", step=23_000,
              start=0, stop=6000, memorized=[], matches=scores(rng, 6000))
    run_report(runs, tmp_path / "report")

    got = table(tmp_path / "report", "score_correlation")
    assert list(got.columns) == PAIR_COLUMNS
    got = got.set_index(["a", "b", "subset"])
    subsets = ["score", "top90", "top99", "memorized"]
    assert sorted(got.index) == sorted(
        [(SMALL, LARGE, s) for s in subsets]
        + [(SMALL, FLAGS, "memorized"), (LARGE, FLAGS, "memorized")])
    for subset in subsets:
        row = got.loc[(SMALL, LARGE, subset)]
        assert row["sequences"] == 5000
        assert row["pearson"] == pytest.approx(
            expected(small[1000:], large[:5000], small, large, subset), rel=1e-9, abs=1e-12)
    assert got.loc[(SMALL, FLAGS, "memorized"), "pearson"] == pytest.approx(
        expected(small[:5000], flags, small, flags, "memorized"), rel=1e-9)
    assert got.loc[(LARGE, FLAGS, "memorized"), "sequences"] == 4000
    assert got.loc[(LARGE, FLAGS, "memorized"), "pearson"] == pytest.approx(
        expected(large[:4000], flags[1000:], large, flags, "memorized"), rel=1e-9)
    # The correlated pair is clearly correlated, so a wrong pairing of indices would show.
    assert got.loc[(SMALL, LARGE, "score"), "pearson"] > 0.4


def test_pearson_between_checkpoints_over_the_indices_all_evaluated(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    first = scores(rng, 3000)  # [0, 3000)
    second = np.concatenate([scores(rng, 500), correlated(rng, first[500:], 0.7),
                             scores(rng, 1000)])  # [0, 4000)
    third = np.concatenate([correlated(rng, second[200:3000], 0.8), scores(rng, 500)])
    for step, start, matches in ((1000, 0, first), (2000, 0, second), (3000, 200, third)):
        write_run(tmp_path, f"pythia-160m-step{step}", model="EleutherAI/pythia-160m",
                  step=step, start=start, stop=start + matches.size, memorized=[],
                  matches=matches)
    run_report(tmp_path, tmp_path / "report")

    got = table(tmp_path / "report", "checkpoint_correlation")
    assert list(got.columns) == PAIR_COLUMNS
    got = got.set_index(["a", "b", "subset"])
    # All three evaluated [200, 3000).
    c1, c2, c3 = (f"pythia-160m-step{step}" for step in (1000, 2000, 3000))
    series = {c1: (first[200:3000], first), c2: (second[200:3000], second),
              c3: (third[:2800], third)}
    pairs = [(c1, c2), (c1, c3), (c2, c3)]
    assert len(got) == 3 * 4
    for a, b in pairs:
        for subset in ("score", "top90", "top99", "memorized"):
            row = got.loc[(a, b, subset)]
            assert row["sequences"] == 2800
            assert row["pearson"] == pytest.approx(
                expected(series[a][0], series[b][0], series[a][1], series[b][1], subset),
                rel=1e-9, abs=1e-12)


def direct_normalized_cross_correlation(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, ...]:
    """The notebook's definition, by numpy: full correlation of the centred series over
    √(Σf'² Σg'²), with its lags."""
    f, g = f - f.mean(), g - g.mean()
    values = np.correlate(f, g, mode="full") / np.sqrt(np.sum(f * f) * np.sum(g * g))
    return np.arange(-(g.size - 1), f.size), values


F, G, H = (f"pythia-70m-step{step}" for step in (1000, 2000, 3000))


def shifted_pair(rng: np.random.Generator, n: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """f and g over the same n indices, g[i] = f[i + shift]."""
    base = scores(rng, n + shift)
    return base[:n], base[shift:shift + n]


def test_cross_correlation_equals_numpy_at_every_lag(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cross_correlation, "BLOCK", 256)  # many blocks, lags beyond one
    rng = np.random.default_rng(3)
    f, g = shifted_pair(rng, 1500, 37)
    write_run(tmp_path, F, model="EleutherAI/pythia-70m", step=1000, start=100, stop=1600,
              memorized=[], matches=f)
    write_run(tmp_path, G, model="EleutherAI/pythia-70m", step=2000, start=100, stop=1600,
              memorized=[], matches=g)
    runs = [load_run(str(tmp_path / f"{name}.parquet")) for name in (F, G)]
    want_lags, want = direct_normalized_cross_correlation(f, g)
    lags, got = cross_correlation.normalized_cross_correlation(*runs, 100, 1600, 1499)
    np.testing.assert_array_equal(lags, want_lags)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # Fewer lags: the same values where both have them.
    lags, got = cross_correlation.normalized_cross_correlation(*runs, 100, 1600, 300)
    np.testing.assert_allclose(got, want[(want_lags >= -300) & (want_lags <= 300)], atol=1e-12)


def test_cross_correlation_table_peaks_at_the_shift(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cross_correlation, "BLOCK", 512)
    monkeypatch.setattr(cross_correlation, "MAX_LAG", 400)
    rng = np.random.default_rng(5)
    f, g = shifted_pair(rng, 2000, 123)
    # A third, later checkpoint shifted the other way, over fewer indices: its lags are ±399.
    h = np.concatenate([scores(rng, 64), f[:336]])  # h[i] = f[i − 64] from i = 64
    for step, matches in ((1000, f), (2000, g), (3000, h)):
        write_run(tmp_path, f"pythia-70m-step{step}", model="EleutherAI/pythia-70m", step=step,
                  start=0, stop=matches.size, memorized=[], matches=matches)
    # A verification run has no score series: it is in no pair.
    write_run(tmp_path, "pythia-70m-step4000-verify", model="EleutherAI/pythia-70m",
              step=4000, start=0, stop=2000, memorized=[], matches=f, method="verify")
    run_report(tmp_path, tmp_path / "report")

    got = table(tmp_path / "report", "cross_correlation")
    assert list(got.columns) == ["a", "b", "peak", "peak_lag", "sequences"]
    got = got.set_index(["a", "b"])
    assert sorted(got.index) == [(F, G), (F, H), (G, H)]
    # The CSV holds 10 digits.
    for (a, b), x, y, max_lag, shift in (((F, G), f, g, 400, 123),
                                         ((F, H), f[:400], h, 399, -64)):
        lags, values = direct_normalized_cross_correlation(x, y)
        inside = np.abs(lags) <= max_lag
        peak = np.argmax(values[inside])
        assert lags[inside][peak] == shift
        assert got.loc[(a, b), "peak_lag"] == shift
        assert got.loc[(a, b), "peak"] == pytest.approx(values[inside][peak], rel=1e-9)
        assert got.loc[(a, b), "sequences"] == x.size
    report = tmp_path / "report"
    markdown = (report / "report.md").read_text()
    assert "cross-correlation between checkpoints" in markdown
    assert "correlation between runs" in markdown
    for name in ("cross_correlation", "checkpoint_correlation"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 0
        assert f"figures/{name}.png" in markdown
    # One model at each checkpoint: no pair of models, so no model table or figure.
    assert not (report / "tables" / "score_correlation.csv").exists()
    assert not (report / "figures" / "score_correlation.png").exists()


SEED_FIGURES = ("index_trend", "bucket_means", "score_correlation", "checkpoint_correlation",
                "cross_correlation", "uniformity")


def test_the_seeds_figures_render_in_a_headless_browser(tmp_path: Path) -> None:
    """Every figure of a report with all the seed's analyses decodes in a real browser: a script
    appended to a copy of report.html records each image's decoded size."""
    browser = chromium()
    rng = np.random.default_rng(11)
    runs = tmp_path / "runs"
    runs.mkdir()
    for size, step in (("70m", 71_500), ("70m", 143_000), ("160m", 143_000)):
        write_run(runs, f"pythia-{size}-step{step}", model=f"EleutherAI/pythia-{size}",
                  step=step, start=0, stop=4096, memorized=[],
                  matches=scores(rng, 4096))
    run_report(runs, tmp_path / "report")
    shown = sorted(p.stem for p in (tmp_path / "report" / "figures").iterdir())
    assert set(SEED_FIGURES) <= set(shown)
    page = tmp_path / "probe.html"
    probe = ("<script>window.addEventListener('load', () => document.body.setAttribute("
             "'data-decoded', [...document.images].map(i => i.naturalWidth + 'x' + "
             "i.naturalHeight).join(' ')));</script></body>")
    page.write_text((tmp_path / "report" / "report.html").read_text()
                    .replace("</body>", probe), encoding="utf-8")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--no-first-run", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    decoded = re.search(r'data-decoded="([^"]*)"', dom).group(1).split()
    assert len(decoded) == len(shown)  # one image per figure file, every one embedded
    for size in decoded:
        width, height = map(int, size.split("x"))
        assert width > 100 and height > 100, decoded
