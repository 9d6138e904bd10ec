"""`vmem report` over runs of an order with an instance filter: instances the filter masked keep
their index but were never trained on; every analysis leaves them out. Planted runs (with
different masks, so pairs meet where one run trained and the other did not), each table
against the same analysis computed here with numpy, pandas and scipy over trained rows only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from tests.cli import cli_error
from tests.test_report import CONT_LEN, run_report, write_run
from tests.test_seed_pairs import correlated, expected, scores
from vmem.cli import main
from vmem.study import cross_correlation, passes
from vmem.study.merged_runs import load_run
from vmem.study.score_by_step import step_profile

PER_STEP = 8  # sequences per step: buckets of 230 steps hold 1,840
TOTAL = 3200  # the planted indices [0, TOTAL)
MASKED_BLOCK = (1000, 1100)  # untrained in every run: steps 125..136 hold no trained sequence
SMALL, LARGE, EARLY, VERIFY = ("pythia-70m-step143000", "pythia-160m-step143000",
                               "pythia-160m-step23000", "pythia-160m-step143000-verify")
RECITATION = 6  # the report's default threshold


def planted() -> dict[str, dict]:
    """Four runs over one filtered order: name → model, step, range, matches, trained mask."""
    rng = np.random.default_rng(17)
    filtered = rng.random(TOTAL) < 0.08  # what the order's filter masked: no run trained on it
    filtered[slice(*MASKED_BLOCK)] = True

    def mask() -> np.ndarray:  # each run's own few more, so masks of a pair differ
        return ~filtered & (rng.random(TOTAL) > 0.03)

    small = scores(rng, TOTAL)
    large = correlated(rng, small, 0.6)
    early = correlated(rng, large, 0.7)
    flags = correlated(rng, large, 0.95)
    runs = {SMALL: dict(model="EleutherAI/pythia-70m", step=143_000, start=0, stop=3000,
                        matches=small),
            LARGE: dict(model="EleutherAI/pythia-160m", step=143_000, start=200, stop=TOTAL,
                        matches=large),
            EARLY: dict(model="EleutherAI/pythia-160m", step=23_000, start=200, stop=TOTAL,
                        matches=early),
            VERIFY: dict(model="EleutherAI/pythia-160m", step=143_000, start=200, stop=3000,
                         matches=flags)}
    for run in runs.values():
        window = slice(run["start"], run["stop"])
        run["matches"], run["trained"] = run["matches"][window], mask()[window]
    return runs


def write(folder: Path, runs: dict[str, dict]) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    paths = {}
    for name, run in runs.items():
        n = run["stop"] - run["start"]
        extra = {}
        if name == SMALL:  # log-probs and edit similarity
            extra = dict(cont_logprob=np.where(run["matches"] == CONT_LEN, -rng.random(n),
                                               -5 - 20 * rng.random(n)),
                         edit_similarity=rng.random(n))
        paths[name] = write_run(folder, name, model=run["model"], step=run["step"],
                                start=run["start"], stop=run["stop"], memorized=[],
                                matches=run["matches"], trained=run["trained"],
                                sequences_per_step=PER_STEP, fmt="csv" if name == LARGE
                                else "parquet", method="verify" if name == VERIFY
                                else "generate", **extra)
    return paths


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict[str, dict], dict[str, Path], pd.DataFrame]:
    """The report of the four runs with a duplicates table (every index but multiples of 7
    listed), passes in small chunks and FFT blocks."""
    root = tmp_path_factory.mktemp("trained")
    runs = planted()
    folder = root / "runs"
    folder.mkdir()
    paths = write(folder, runs)
    index = np.array([i for i in range(TOTAL) if i % 7])
    counts = pd.DataFrame(dict(index=index, count=np.random.default_rng(4).integers(
        0, 12, index.size)))
    counts.to_csv(root / "counts.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passes, "CHUNK", 97)
        patch.setattr(cross_correlation, "BLOCK", 256)
        assert main(["report", str(folder), "-o", str(root / "report"), "--duplicates",
                     str(root / "counts.csv")]) == 0
    return root / "report", runs, paths, counts


def table(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report / "tables" / f"{name}.csv")


def trained_rows(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """Indices and matches of the run's trained rows."""
    keep = run["trained"]
    return np.arange(run["start"], run["stop"])[keep], run["matches"][keep]


def memorized_on(run: dict, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Memorized flags and trained mask of the run on [start, stop)."""
    window = slice(start - run["start"], stop - run["start"])
    return run["matches"][window] == CONT_LEN, run["trained"][window]


def test_counts_and_shares_are_over_trained_sequences(report) -> None:
    out, runs, _, _ = report
    rates = table(out, "memorization_rates").set_index("run")
    for name, run in runs.items():
        _, matches = trained_rows(run)
        assert rates.loc[name, "evaluated"] == matches.size < run["stop"] - run["start"]
        assert rates.loc[name, "memorized"] == np.count_nonzero(matches == CONT_LEN)
        assert rates.loc[name, "share"] == pytest.approx(np.mean(matches == CONT_LEN))
    distribution = table(out, "score_distribution")
    for name in (SMALL, LARGE, EARLY):
        _, matches = trained_rows(runs[name])
        rows = distribution[distribution["run"] == name]
        assert rows["sequences"].tolist() == np.bincount(matches,
                                                         minlength=CONT_LEN + 1).tolist()
        np.testing.assert_allclose(rows["share"], rows["sequences"] / matches.size, rtol=1e-9)

    markdown = (out / "report.md").read_text()
    untrained = sum(int(np.count_nonzero(~run["trained"])) for run in runs.values())
    assert f"In all, {untrained:,} instances that the order's instance filter masked (never " \
           f"trained on; per run: `untrained`) are left out of every analysis" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| run | model"))
    assert "| sequences | untrained | method |" in header


def test_pairs_compare_only_indices_both_trained_on(report) -> None:
    out, runs, _, _ = report
    pred = table(out, "predictability").set_index(["family", "cheap"])
    for key, cheap, target, (start, stop) in (
            (("A", SMALL), SMALL, LARGE, (200, 3000)), (("B", EARLY), EARLY, LARGE, (200, TOTAL))):
        c, c_trained = memorized_on(runs[cheap], start, stop)
        t, t_trained = memorized_on(runs[target], start, stop)
        both = c_trained & t_trained
        c, t = c[both], t[both]
        row = pred.loc[key]
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (
            np.sum(c & t), np.sum(c & ~t), np.sum(~c & t), np.sum(~c & ~t))
    assert len(pred) == 2

    agreement = table(out, "method_agreement").iloc[0]
    v, v_trained = memorized_on(runs[VERIFY], 200, 3000)
    g, g_trained = memorized_on(runs[LARGE], 200, 3000)
    both = v_trained & g_trained
    v, g = v[both], g[both]
    assert (agreement["run"], agreement["reference"]) == (VERIFY, LARGE)
    assert (agreement["sequences"], agreement["memorized_both"], agreement["only_run"],
            agreement["only_reference"]) == (both.sum(), np.sum(v & g), np.sum(v & ~g),
                                             np.sum(g & ~v))
    assert agreement["agreement"] == pytest.approx(np.mean(v == g))

    was, was_trained = memorized_on(runs[EARLY], 200, TOTAL)
    now, now_trained = memorized_on(runs[LARGE], 200, TOTAL)
    both = was_trained & now_trained
    was, now = was[both], now[both]
    forgetting = table(out, "forgetting").iloc[0]
    assert (forgetting["kept"], forgetting["forgotten"], forgetting["new"],
            forgetting["never"]) == (np.sum(was & now), np.sum(was & ~now), np.sum(~was & now),
                                     np.sum(~was & ~now))
    recurrence = table(out, "forgetting_recurrence").iloc[0]
    assert (recurrence["sequences"], recurrence["forgotten"],
            recurrence["memorized_again"]) == (both.sum(), np.sum(was & ~now), 0)


def test_correlations_are_over_indices_trained_in_both(report) -> None:
    out, runs, _, _ = report
    for name, a, b, (start, stop) in (("score_correlation", SMALL, LARGE, (200, 3000)),
                                      ("checkpoint_correlation", EARLY, LARGE, (200, TOTAL))):
        got = table(out, name).set_index(["a", "b", "subset"])
        x, y = (runs[r]["matches"][start - runs[r]["start"]:stop - runs[r]["start"]]
                for r in (a, b))
        both = (runs[a]["trained"][start - runs[a]["start"]:stop - runs[a]["start"]]
                & runs[b]["trained"][start - runs[b]["start"]:stop - runs[b]["start"]])
        whole_a, whole_b = trained_rows(runs[a])[1], trained_rows(runs[b])[1]
        for subset in ("score", "top90", "top99", "memorized"):
            row = got.loc[(a, b, subset)]
            assert row["sequences"] == both.sum()
            assert row["pearson"] == pytest.approx(
                expected(x[both], y[both], whole_a, whole_b, subset), rel=1e-9, abs=1e-12)


def test_cross_correlation_centres_on_trained_means_and_skips_masked_slots(report) -> None:
    out, runs, paths, _ = report
    both = runs[EARLY]["trained"] & runs[LARGE]["trained"]  # both over [200, TOTAL)

    def centred(x: np.ndarray) -> np.ndarray:
        return np.where(both, x - x[both].mean(), 0.0)

    f, g = centred(runs[EARLY]["matches"]), centred(runs[LARGE]["matches"])
    want = np.correlate(f, g, "full") / np.sqrt(np.sum(f * f) * np.sum(g * g))
    lags = np.arange(-(g.size - 1), f.size)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cross_correlation, "BLOCK", 256)
        got_lags, got = cross_correlation.normalized_cross_correlation(
            load_run(str(paths[EARLY])), load_run(str(paths[LARGE])), 200, TOTAL, TOTAL - 201)
    np.testing.assert_array_equal(got_lags, lags)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    row = table(out, "cross_correlation").set_index(["a", "b"]).loc[(EARLY, LARGE)]
    assert (row["sequences"], row["peak_lag"]) == (both.sum(), lags[np.argmax(want)])
    assert row["peak"] == pytest.approx(want.max(), rel=1e-9)
    # At lag 0 it is Pearson's r over the indices both trained on.
    assert want[lags == 0][0] == pytest.approx(stats.pearsonr(
        runs[EARLY]["matches"][both], runs[LARGE]["matches"][both]).statistic, rel=1e-9)
    markdown = (out / "report.md").read_text()
    assert "counts as its series' mean at every lag: it adds nothing" in markdown


def test_index_aligned_analyses_treat_masked_slots_as_missing(report) -> None:
    out, runs, paths, _ = report
    trend = table(out, "index_trend")
    buckets = table(out, "bucket_means")
    size = 230 * PER_STEP
    for name in (SMALL, LARGE, EARLY):
        index, matches = trained_rows(runs[name])
        score = matches / CONT_LEN
        for q in (0, 90, 99):
            keep = score >= np.percentile(score, q)
            slope, intercept = np.polyfit(index[keep], score[keep], 1)
            fit = slope * index[keep] + intercept
            row = trend[(trend["run"] == name) & (trend["percentile"] == q)].iloc[0]
            assert row["slope"] == pytest.approx(slope, rel=1e-7)
            assert row["variation"] == pytest.approx(fit[-1] - fit[0], rel=1e-7)
            direct = pd.DataFrame(dict(bucket=index[keep] // size, score=score[keep])
                                  ).groupby("bucket")["score"]
            rows = buckets[(buckets["run"] == name) & (buckets["percentile"] == q)]
            assert rows["sequences"].tolist() == direct.size().tolist()
            np.testing.assert_allclose(rows["mean_score"], direct.mean(), rtol=1e-9)

    by_step = table(out, "score_by_step")
    score_trend = table(out, "score_trend").set_index("run")
    for name in (SMALL, LARGE, EARLY):
        index, matches = trained_rows(runs[name])
        step, score = index // PER_STEP, matches / CONT_LEN
        rows = by_step[by_step["run"] == name]
        assert rows["sequences"].sum() == index.size
        for r in rows.itertuples():
            inside = (step >= r.step_start) & (step < r.step_stop)
            assert r.sequences == inside.sum()
            assert r.mean_score == pytest.approx(score[inside].mean(), rel=1e-9)
        row = score_trend.loc[name]
        assert (row["sequences"], row["step_first"], row["step_last"]) == (
            index.size, step[0], step[-1])
        assert row["mean_score"] == pytest.approx(score.mean(), rel=1e-9)
        assert row["slope_per_1000_steps"] == pytest.approx(
            np.polyfit(step, score, 1)[0] * 1000, rel=1e-7)
    profile = step_profile(load_run(str(paths[SMALL])))
    assert profile.steps.tolist() == np.unique(trained_rows(runs[SMALL])[0] // PER_STEP).tolist()
    assert not set(range(MASKED_BLOCK[0] // PER_STEP, MASKED_BLOCK[1] // PER_STEP)) & set(
        profile.steps.tolist())

    uniformity = table(out, "uniformity_counts")
    for name, run in runs.items():
        first, last = -(-run["start"] // 512) * 512, run["stop"] // 512 * 512
        memorized, _ = memorized_on(run, first, last)
        trained = run["trained"][first - run["start"]:last - run["start"]]
        per_window = (memorized & trained).reshape(-1, 512).sum(axis=1)
        rows = uniformity[uniformity["run"] == name]
        assert rows["windows"].tolist() == np.bincount(per_window).tolist()
    assert "which the Poisson fit does not model" in (out / "report.md").read_text()


def test_duplication_and_taxonomy_count_only_trained_sequences(report) -> None:
    out, runs, _, counts = report
    listed = pd.Series(counts["count"].to_numpy(), index=counts["index"])
    duplication = table(out, "duplication")
    taxonomy = table(out, "taxonomy").set_index(["run", "category"])
    markdown = (out / "report.md").read_text()
    for name, run in runs.items():
        index, matches = trained_rows(run)
        on_list = np.isin(index, listed.index)
        assert f"{name} {np.count_nonzero(~on_list):,}" in markdown  # unlisted, left out
        frame = pd.DataFrame(dict(count=listed.loc[index[on_list]].to_numpy(),
                                  memorized=matches[on_list] == CONT_LEN))
        bucket = np.where(frame["count"] == 0, 0, np.floor(np.log2(frame["count"].clip(1)))
                          .astype(int) + 1)
        direct = frame.groupby(bucket)["memorized"].agg(["size", "sum"])
        rows = duplication[duplication["run"] == name]
        assert rows["sequences"].tolist() == direct["size"].tolist()
        assert rows["memorized"].tolist() == direct["sum"].tolist()

        memorized = index[matches == CONT_LEN]
        count = listed.reindex(memorized)
        assert taxonomy.loc[(name, "recitation"), "sequences"] == np.sum(count >= RECITATION)
        assert taxonomy.loc[(name, "not recitation"), "sequences"] == np.sum(count < RECITATION)
        unlisted = taxonomy.loc[(name, "unlisted"), "sequences"] if (
            name, "unlisted") in taxonomy.index else 0
        assert unlisted == count.isna().sum()


def test_per_run_tables_equal_those_of_the_run_without_its_untrained_rows(
        tmp_path: Path, monkeypatch) -> None:
    """The same trained rows, once at their slots with the masked ones between them and once
    renumbered into a run of an order without a filter: the same per-run tables."""
    monkeypatch.setattr(passes, "CHUNK", 97)
    run = planted()[SMALL]
    keep = run["trained"]
    rng = np.random.default_rng(8)
    n = keep.size
    cont_logprob = np.where(run["matches"] == CONT_LEN, -rng.random(n), -5 - 20 * rng.random(n))
    cont_logprob[rng.random(n) < 0.01] = -np.inf  # some log-probs underflow
    similarity = rng.random(n)
    for kind in ("filtered", "compact"):
        (tmp_path / kind).mkdir()
    write_run(tmp_path / "filtered", SMALL, model="EleutherAI/pythia-70m", step=143_000,
              start=0, stop=n, memorized=[], matches=run["matches"], cont_logprob=cont_logprob,
              edit_similarity=similarity, trained=keep)
    write_run(tmp_path / "compact", SMALL, model="EleutherAI/pythia-70m", step=143_000,
              start=0, stop=int(keep.sum()), memorized=[], matches=run["matches"][keep],
              cont_logprob=cont_logprob[keep], edit_similarity=similarity[keep])
    for kind in ("filtered", "compact"):
        run_report(tmp_path / kind, tmp_path / f"report-{kind}")
    filtered, compact = tmp_path / "report-filtered", tmp_path / "report-compact"
    for name in ("memorization_rates", "score_distribution", "extraction_np", "approximate",
                 "logprob_summary", "logprob_histogram"):
        a, b = table(filtered, name), table(compact, name)
        if name == "memorization_rates":  # the range and the suite (its order) differ
            a, b = (t.drop(columns=["stop", "suite"]) for t in (a, b))
        pd.testing.assert_frame_equal(a, b)
    assert "untrained" not in (compact / "report.md").read_text()


def test_export_lists_only_trained_memorized_sequences(tmp_path: Path) -> None:
    tokens = np.random.default_rng(5).integers(0, 50_000, size=(300, 2049), dtype=np.uint16)
    data = tmp_path / "tokens.bin"
    tokens.tofile(data)
    matches = np.where(np.arange(300) % 5 == 0, CONT_LEN, 3)
    trained = np.arange(300) % 3 != 0
    path = write_run(tmp_path, "run", model="EleutherAI/pythia-70m", step=143_000, start=0,
                     stop=300, memorized=[], matches=matches, trained=trained)
    out = tmp_path / "memorized.parquet"
    assert main(["export-memorized", str(path), "-o", str(out), "--data", str(data),
                 "--seq-len", "2049"]) == 0
    want = np.flatnonzero((matches == CONT_LEN) & trained)
    assert pq.read_table(out).column("index").to_pylist() == want.tolist()


def test_bad_trained_columns_are_one_line(tmp_path: Path, capsys) -> None:
    trained = np.arange(50) % 4 != 0
    path = write_run(tmp_path, "run", model="EleutherAI/pythia-70m", step=143_000, start=0,
                     stop=50, memorized=[5], trained=trained)
    good = pq.read_table(path)

    def refused(table: pa.Table) -> str:
        pq.write_table(table, path)
        return cli_error(capsys, ["report", str(tmp_path), "-o", str(tmp_path / "out")])

    matches = good["matches"].to_pylist()
    matches[5] = None  # a trained row without its value
    err = refused(good.set_column(2, "matches", pa.array(matches, pa.int64())))
    assert f"{path}: column matches is empty at trained index 5" in err
    matches = good["matches"].to_pylist()
    matches[4] = 7  # an untrained row with a value
    err = refused(good.set_column(2, "matches", pa.array(matches, pa.int64())))
    assert f"{path}: column matches has a value at untrained index 4" in err
    err = refused(good.drop_columns(["trained"]))
    assert f"{path}: missing column(s) trained" in err
    err = refused(good.set_column(good.schema.get_field_index("trained"), "trained",
                                  pa.array(trained.astype(np.int64))))
    assert f"{path}: column trained must hold true/false values, found int64" in err
    flags = trained.tolist()
    flags[9] = None
    err = refused(good.set_column(good.schema.get_field_index("trained"), "trained",
                                  pa.array(flags, pa.bool_())))
    assert f"{path}: column trained has empty values" in err
    assert not (tmp_path / "out").exists()

    manifest = json.loads(path.with_name("run.manifest.json").read_text())
    del manifest["settings"]["data"]["order"]  # a run without a filter has no empty values
    path.with_name("run.manifest.json").write_text(json.dumps(manifest))
    err = refused(good.drop_columns(["trained"]))
    assert f"{path}: column matches has empty values" in err


def test_prompt_lengths_count_trained_sequences(tmp_path: Path, monkeypatch) -> None:
    """A verification run over prompt lengths 16 and 32: each length's share is over the
    trained sequences."""
    monkeypatch.setattr(passes, "CHUNK", 97)
    rng = np.random.default_rng(9)
    n = 700
    trained = rng.random(n) > 0.1
    prefix = {p: np.where(rng.random(n) < share, CONT_LEN, rng.integers(0, CONT_LEN, n))
              for p, share in ((16, 0.05), (32, 0.2))}
    path = write_run(tmp_path, "lengths", model="EleutherAI/pythia-70m", step=143_000,
                     start=0, stop=n, memorized=[], method="verify", trained=trained)
    pq.write_table(pa.table({"index": np.arange(n)}
                            | {f"prefix_match_p{p}": pa.array(v, mask=~trained)
                               for p, v in prefix.items()} | {"trained": trained}), path)
    manifest_path = path.with_name("lengths.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"]["prompt_len"] = [16, 32]
    manifest_path.write_text(json.dumps(manifest))
    run_report(tmp_path, tmp_path / "report")
    got = table(tmp_path / "report", "prompt_length").set_index("prompt_len")
    for p, values in prefix.items():
        memorized = np.count_nonzero((values == CONT_LEN) & trained)
        assert (got.loc[p, "evaluated"], got.loc[p, "memorized"]) == (trained.sum(), memorized)
        assert got.loc[p, "share"] == pytest.approx(memorized / trained.sum())
    rates = table(tmp_path / "report", "memorization_rates").iloc[0]
    assert rates["memorized"] == np.count_nonzero((prefix[32] == CONT_LEN) & trained)


def test_another_models_latest_checkpoint_is_its_final_through_a_filtered_order(
        tmp_path: Path) -> None:
    """Not Pythia (an OLMo run): family B predicts the latest evaluated checkpoint, as it does
    for a model read without an order."""
    trained = np.arange(400) % 9 != 0
    for step in (1000, 2000):
        write_run(tmp_path, f"olmo-tiny-step{step}", model="allenai/OLMo-tiny", step=step,
                  start=0, stop=400, memorized=[1, 2, 3, 9], params=1_000_000, seed=step,
                  trained=trained)
    run_report(tmp_path, tmp_path / "report")
    pred = table(tmp_path / "report", "predictability")
    assert list(zip(pred["family"], pred["cheap"], pred["target"], pred["tp"],
                    strict=True)) == [("B", "OLMo-tiny-step1000", "OLMo-tiny-step2000", 3)]
    assert "No family B comparison" not in (tmp_path / "report" / "report.md").read_text()
