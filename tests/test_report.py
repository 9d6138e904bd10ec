"""`vmem report` and `vmem export-memorized` on real merged-run files written to disk."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.cli import cli_error
from vmem.cli import main
from vmem.study import passes
from vmem.study.compute import compute_fits, equi_compute_table, fit_power_law
from vmem.study.merged_runs import load_run
from vmem.study.passes import score_counts
from vmem.study.predictability import confusion
from vmem.study.score_by_step import step_profile

CONT_LEN = 32

# The dataset card of the released memorized-sequence lists (docs: method-and-data.md).
PUBLISHED_DUPED = {
    "70m": (463_953, "0.317%"), "160m": (689_673, "0.471%"), "410m": (970_341, "0.663%"),
    "1b": (1_256_141, "0.858%"), "1.4b": (1_373_722, "0.938%"), "2.8b": (1_675_077, "1.144%"),
    "6.9b": (2_120_969, "1.448%"), "12b": (2_382_326, "1.627%"),
}
FINAL_SEQUENCES = 146_432_000
# An order whose instance filter masked some instances (OLMo's rule): its runs have `trained`.
FILTERED_ORDER = dict(kind="olmo-global-indices",
                      instance_filter=dict(max_period=13, min_period=1, max_count=32))


def write_run(folder: Path, name: str, *, model: str, step: int | None, start: int, stop: int,
              memorized: list[int], fmt: str = "parquet", params: int | None = None,
              sequences_per_step: int = 1024, matches: np.ndarray | None = None,
              logprobs: bool = False, seed: int = 0, method: str = "generate",
              cont_logprob: np.ndarray | None = None,
              edit_similarity: np.ndarray | None = None, weights: str | None = None,
              trained: np.ndarray | None = None) -> Path:
    """A merged run as `vmem merge` leaves it: table sorted by index + NAME.manifest.json.
    A verification run (`method`) holds flags only; `cont_logprob` and `edit_similarity` give
    those columns their values. `trained` (bool per index) reads the run through
    FILTERED_ORDER: a trained column, and nothing but the index where it is False."""
    rng = np.random.default_rng(seed)
    index = np.arange(start, stop)
    if matches is None:
        matches = rng.integers(0, CONT_LEN, size=index.size)  # never CONT_LEN: not memorized
        matches[np.asarray(memorized, dtype=np.int64) - start] = CONT_LEN
    prefix = np.minimum(matches, rng.integers(0, CONT_LEN + 1, index.size))
    if method == "verify":
        table = pd.DataFrame(dict(index=index, prefix_match=np.where(
            matches == CONT_LEN, CONT_LEN, np.minimum(prefix, CONT_LEN - 1)),
            memorized=matches == CONT_LEN))
    else:
        table = pd.DataFrame(dict(index=index, score=matches / CONT_LEN, matches=matches,
                                  prefix_match=prefix))
    if edit_similarity is not None:
        table["edit_similarity"] = edit_similarity
    logprobs = logprobs or cont_logprob is not None
    if cont_logprob is not None:
        table["cont_logprob"] = cont_logprob
    elif logprobs:
        table["cont_logprob"] = np.where(matches == CONT_LEN, -rng.random(index.size),
                                         -5 - 20 * rng.random(index.size))
    path = folder / f"{name}.{fmt}"
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    if trained is not None:
        arrow = pa.table({column: arrow[column] if column == "index" else
                          pa.array(arrow[column].to_numpy(), mask=~trained)
                          for column in arrow.column_names} | {"trained": trained})
    if fmt == "csv":  # as `vmem merge` writes it (pyarrow quotes the header)
        pacsv.write_csv(arrow, path)
    elif trained is None:
        table.to_parquet(path, index=False)
    else:
        pq.write_table(arrow, path)
    settings = dict(model=model, revision=None if step is None else f"step{step}",
                    dtype="float16", engine="vllm", prompt_len=32, cont_len=CONT_LEN, offset=0,
                    eos_mode="paper", logprobs=logprobs,
                    data=dict(location="/data/document", layout="merged",
                              num_sequences=FINAL_SEQUENCES, seq_len=2049, dtype="uint16"),
                    start=start, stop=stop, batch_size=sequences_per_step)
    if trained is not None:
        settings["data"]["order"] = FILTERED_ORDER
    if method != "generate":
        settings["method"] = method
    if edit_similarity is not None:
        settings["edit_similarity"] = True
    manifest = dict(vmem_version="0.1.0", settings=settings, fingerprint="0123456789",
                    engine_info={}, step=step, params=params, created="2024-01-01T00:00:00Z")
    if weights is not None:
        manifest["weights"] = {"sha256": weights}
    (folder / f"{name}.manifest.json").write_text(json.dumps(manifest))
    return path


# Planted memorized sets. 70m sees [100, 1100), 410m's final checkpoint [0, 1000): they share
# [100, 1000). Inside it: 7 memorized by both, 5 by 70m only, 11 by 410m only; 2 (70m) and 3
# (410m) more lie outside the shared range and must not count.
BOTH = list(range(100, 170, 10))
CHEAP_ONLY = list(range(105, 155, 10))
TARGET_ONLY = list(range(300, 410, 10))
TARGET_OUTSIDE = [5, 50, 60]
CHEAP_OUTSIDE = [1000, 1050]
# 410m at step 23000 sees [0, 600) and memorized these: 4 also memorized by the final checkpoint.
EARLY = [5, 50, 100, 110, 555, 556]


@pytest.fixture
def study(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs, "pythia-70m-step143000", model="EleutherAI/pythia-70m", step=143_000, start=100,
              stop=1100, memorized=BOTH + CHEAP_ONLY + CHEAP_OUTSIDE, fmt="csv", seed=1)
    write_run(runs, "pythia-410m-step143000", model="EleutherAI/pythia-410m", step=143_000,
              start=0, stop=1000, memorized=BOTH + TARGET_ONLY + TARGET_OUTSIDE, seed=2,
              logprobs=True)
    write_run(runs, "pythia-410m-step23000", model="EleutherAI/pythia-410m", step=23_000,
              start=0, stop=600, memorized=EARLY, seed=3)
    return runs


def run_report(results: Path, out: Path) -> None:
    assert main(["report", str(results), "-o", str(out)]) == 0


def test_predictability_confusion_matrices_are_exact(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    run_report(study, out)
    pred = pd.read_csv(out / "tables" / "predictability.csv").set_index(["family", "cheap"])

    a = pred.loc[("A", "pythia-70m-step143000")]
    assert a["target"] == "pythia-410m-step143000"
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (7, 5, 11, 900 - 23)
    assert a["precision"] == pytest.approx(7 / 12)
    assert a["recall"] == pytest.approx(7 / 18)
    assert a["fpr"] == pytest.approx(5 / 882)
    assert a["f1"] == pytest.approx(2 * 7 / (2 * 7 + 5 + 11))
    assert (a["start"], a["stop"]) == (100, 1000)
    assert a["cheap_compute"] == pytest.approx(6 * 70_426_624 * 143_000 * 1024 * 2048)

    # Final 410m memorized 3 + 7 + 11 = 21 of [0, 600); the early checkpoint hits 5, 50, 100, 110.
    b = pred.loc[("B", "pythia-410m-step23000")]
    assert b["target"] == "pythia-410m-step143000"
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (4, 2, 17, 600 - 23)
    assert b["precision"] == pytest.approx(4 / 6)
    assert b["recall"] == pytest.approx(4 / 21)
    assert len(pred) == 2

    rates = pd.read_csv(out / "tables" / "memorization_rates.csv").set_index("run")
    assert list(rates.columns[:6]) == ["model", "step", "params", "evaluated", "memorized",
                                       "share"]
    assert rates.loc["pythia-70m-step143000", "memorized"] == 14
    assert rates.loc["pythia-410m-step143000", "evaluated"] == 1000
    assert rates.loc["pythia-410m-step143000", "share"] == pytest.approx(21 / 1000)

    dist = pd.read_csv(out / "tables" / "score_distribution.csv")
    per_run = dist.groupby("run")
    assert (per_run.size() == CONT_LEN + 1).all()
    assert (per_run["sequences"].sum() == rates["evaluated"].reindex(per_run.size().index)).all()


def test_index_bound_restricts_every_comparison_as_mem_graph_did(study: Path, tmp_path: Path,
                                                                  capsys) -> None:
    bound = 300
    out = tmp_path / "report"
    assert main(["report", str(study), "-o", str(out), "--index-bound", str(bound)]) == 0
    pred = pd.read_csv(out / "tables" / "predictability.csv").set_index(["family", "cheap"])
    target = set(BOTH + TARGET_ONLY + TARGET_OUTSIDE)
    for key, cheap, start in ((("A", "pythia-70m-step143000"), set(BOTH + CHEAP_ONLY), 100),
                              (("B", "pythia-410m-step23000"), set(EARLY), 0)):
        row = pred.loc[key]
        below = set(range(start, bound))
        c, t = cheap & below, target & below
        assert (row["start"], row["stop"]) == (start, bound)
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (
            len(c & t), len(c - t), len(t - c), len(below - c - t))
    assert "below index 300 (`--index-bound`)" in (out / "report.md").read_text()

    err = cli_error(capsys, ["report", str(study), "-o", str(tmp_path / "r0"),
                             "--index-bound", "0"])
    assert err == "vmem: error: --index-bound 0: expected a positive sequence index " \
                  "(mem_graph.py's is 23552000)"
    err = cli_error(capsys, ["report", str(study), "-o", str(tmp_path / "r1"),
                             "--index-bound", "50"])
    assert "--index-bound 50: runs pythia-70m-step143000 and pythia-410m-step143000 share only " \
           "indices [100, 1000), none below it" in err
    assert not (tmp_path / "r0").exists() and not (tmp_path / "r1").exists()


def test_runs_over_different_training_orders_are_never_compared(tmp_path: Path) -> None:
    """One model's checkpoints and two models at one checkpoint, where one run read its data
    through GPT-NeoX index maps (seed 3's order): no comparison pairs it with the others."""
    order = dict(kind="gpt-neox-index-maps", seed=3,
                 maps="/data/seed3/pile_20B_tokenizer_text_document_train_0_indexmap_"
                      "147164160ns_2048sl_3s")
    for with_order in (False, True):
        runs = tmp_path / f"runs-{with_order}"
        runs.mkdir()
        for size, step in (("160m", 1_000), ("160m", 143_000), ("410m", 143_000)):
            write_run(runs, f"{size}-{step}", model=f"EleutherAI/pythia-{size}", step=step,
                      start=0, stop=2000, memorized=[1, 2, 3])
        if with_order:
            manifest = runs / "160m-143000.manifest.json"
            found = json.loads(manifest.read_text())
            found["settings"]["data"]["order"] = order
            manifest.write_text(json.dumps(found))
        out = tmp_path / f"report-{with_order}"
        run_report(runs, out)
        pred = pd.read_csv(out / "tables" / "predictability.csv")
        pairs = sorted(zip(pred["family"], pred["cheap"], pred["target"], strict=True))
        if not with_order:
            assert pairs == [("A", "pythia-160m-step143000", "pythia-410m-step143000"),
                             ("B", "pythia-160m-step1000", "pythia-160m-step143000")]
        else:
            assert pairs == []
            assert not (out / "tables" / "forgetting.csv").exists()
            rates = pd.read_csv(out / "tables" / "memorization_rates.csv")
            assert len(rates) == 3


def test_passes_in_small_chunks_agree_with_pandas(tmp_path: Path, monkeypatch) -> None:
    """The chunked numpy passes, with chunks far smaller than the runs, against a plain
    pandas computation on the same files."""
    monkeypatch.setattr(passes, "CHUNK", 7)
    rng = np.random.default_rng(11)
    cheap_path = write_run(tmp_path, "cheap", model="m-small", step=5, start=3, stop=203,
                           memorized=sorted(rng.choice(np.arange(3, 203), 30, replace=False)),
                           sequences_per_step=4)
    target_path = write_run(tmp_path, "target", model="m-large", step=5, start=50, stop=260,
                            memorized=sorted(rng.choice(np.arange(50, 260), 40, replace=False)),
                            sequences_per_step=4, fmt="csv")
    cheap, target = load_run(str(cheap_path)), load_run(str(target_path))
    a = pd.read_parquet(cheap_path).set_index("index")["matches"] == CONT_LEN
    b = pd.read_csv(target_path).set_index("index")["matches"] == CONT_LEN
    a, b = a.loc[50:202], b.loc[50:202]
    cm = confusion(cheap, target)
    assert (cm.tp, cm.fp, cm.fn, cm.tn) == ((a & b).sum(), (a & ~b).sum(), (~a & b).sum(),
                                            (~a & ~b).sum())

    table = pd.read_parquet(cheap_path)
    per_step = table.groupby(table["index"] // 4)["matches"].agg(["size", "sum"])
    profile = step_profile(cheap)
    assert profile.steps.tolist() == per_step.index.tolist()
    assert profile.sequences.tolist() == per_step["size"].tolist()
    assert profile.matches.tolist() == per_step["sum"].tolist()
    assert score_counts(cheap).tolist() == np.bincount(table["matches"],
                                                                minlength=CONT_LEN + 1).tolist()


@pytest.mark.parametrize("size", PUBLISHED_DUPED)
def test_published_counts_give_published_shares(size: str) -> None:
    memorized, share = PUBLISHED_DUPED[size]
    assert f"{passes.memorized_share(memorized, FINAL_SEQUENCES):.3%}" == share


def test_a_run_with_k_memorized_of_n_reports_k_over_n(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    memorized = np.random.default_rng(7).choice(5000, size=81, replace=False) + 20_000
    write_run(runs, "k-of-n", model="EleutherAI/pythia-12b", step=143_000, start=20_000,
              stop=25_000, memorized=sorted(memorized.tolist()))
    run_report(runs, tmp_path / "report")
    row = pd.read_csv(tmp_path / "report" / "tables" / "memorization_rates.csv").iloc[0]
    assert (row["evaluated"], row["memorized"]) == (5000, 81)
    assert row["share"] == pytest.approx(81 / 5000)
    assert "1.620% (81 of 5,000)" in (tmp_path / "report" / "report.md").read_text()


def test_power_law_fit_recovers_exponent() -> None:
    compute = np.geomspace(1e18, 1e23, 9)
    exact = fit_power_law(compute, 3e-6 * compute ** 0.21)
    assert exact.exponent == pytest.approx(0.21, rel=1e-9)
    assert exact.coefficient == pytest.approx(3e-6, rel=1e-6)
    assert exact.r2 == pytest.approx(1.0)
    noise = np.exp(np.random.default_rng(0).normal(0, 0.05, compute.size))
    noisy = fit_power_law(compute, 3e-6 * compute ** 0.21 * noise)
    assert noisy.exponent == pytest.approx(0.21, abs=0.02)
    assert fit_power_law(np.array([1e20, 1e20]), np.array([0.1, 0.2])) is None


def test_equi_compute_compares_fits_of_the_same_target() -> None:
    # Family B (recall = 1e-8 · C^0.35) beats family A (recall = 1e-3 · C^0.1) above C = 1e20.
    compute_a, compute_b = np.array([1e19, 1e20, 1e21]), np.array([3e19, 3e20, 3e21])
    predictability = pd.DataFrame(dict(
        family=["A"] * 3 + ["B"] * 3, target="big-final",
        cheap_compute=np.concatenate([compute_a, compute_b]),
        recall=np.concatenate([1e-3 * compute_a ** 0.1, 1e-8 * compute_b ** 0.35])))
    fits = compute_fits(predictability)
    assert fits[("B", "big-final")].law.exponent == pytest.approx(0.35)
    table = equi_compute_table(predictability, fits).set_index("compute")
    assert table.loc[3e19, "better"] == "A" and table.loc[3e20, "better"] == "B"
    assert table.loc[3e19, "recall_B"] == pytest.approx(1e-8 * 3e19 ** 0.35)
    assert table["within"].tolist() == [False, True, True, True, True, False]


def test_score_trend_against_step(tmp_path: Path) -> None:
    # 4 sequences per step, steps 0..31; every sequence of step s matches s tokens.
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs, "trend", model="local/tiny", step=None, start=0, stop=128, memorized=[],
              sequences_per_step=4, matches=np.repeat(np.arange(32), 4))
    run_report(runs, tmp_path / "report")
    trend = pd.read_csv(tmp_path / "report" / "tables" / "score_trend.csv").iloc[0]
    assert trend["slope_per_1000_steps"] == pytest.approx(1000 / 32)
    assert trend["mean_score"] == pytest.approx(15.5 / 32)
    by_step = pd.read_csv(tmp_path / "report" / "tables" / "score_by_step.csv")
    assert by_step["sequences"].sum() == 128
    first = by_step.iloc[0]
    assert first["mean_score"] == pytest.approx(
        np.mean(np.arange(first["step_start"], first["step_stop"])) / 32)


def test_figures_embedded_and_every_run_named(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    run_report(study, out)
    pngs = sorted((out / "figures").glob("*.png"))
    assert {p.stem for p in pngs} >= {"memorization_rates", "score_distribution", "predictability",
                                     "recall_vs_compute", "score_by_step", "logprob"}
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
        assert f"figures/{png.name}" in markdown
    assert "<img src=\"figures/" not in html
    for run in ("pythia-70m-step143000", "pythia-410m-step143000", "pythia-410m-step23000"):
        assert run in markdown and run in html
    summary = pd.read_csv(out / "tables" / "logprob_summary.csv").set_index("group")
    assert summary.loc["memorized", "sequences"] == 21
    assert summary.loc["memorized", "mean"] > summary.loc["not memorized", "mean"]


def test_report_is_deterministic_and_replaces_an_earlier_report(study: Path,
                                                                 tmp_path: Path) -> None:
    run_report(study, tmp_path / "one")
    run_report(study, tmp_path / "two")
    run_report(study, tmp_path / "two")  # over an earlier report: replaced whole
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*")
                   if p.is_file())
    assert len(files) > 10
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_report_from_s3_and_local_folders_equals_local(study: Path, tmp_path: Path, s3_server,
                                                       s3_client, s3_bucket) -> None:
    """Runs found at any depth under an S3 prefix and a local folder, given together."""
    local = tmp_path / "elsewhere" / "deep"
    local.mkdir(parents=True)
    for path in study.iterdir():
        if path.name.startswith("pythia-410m-step23000"):
            (local / path.name).write_bytes(path.read_bytes())
        else:
            s3_client.upload_file(str(path), s3_bucket, f"study/{path.stem[:10]}/x/{path.name}")
    s3_client.put_object(Bucket=s3_bucket, Key="study/nested/ignored.csv", Body=b"x")
    run_report(study, tmp_path / "local")
    assert main(["report", f"s3://{s3_bucket}/study", str(tmp_path / "elsewhere"), "-o",
                 str(tmp_path / "remote"), "--s3-endpoint", s3_server]) == 0
    for table in (tmp_path / "local" / "tables").iterdir():
        assert (tmp_path / "remote" / "tables" / table.name).read_bytes() == table.read_bytes()


def test_empty_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs").mkdir()
    err = cli_error(capsys, ["report", str(tmp_path / "runs"), "-o", str(tmp_path / "out")])
    assert "no merged runs" in err and str(tmp_path / "runs") in err
    assert not (tmp_path / "out").exists()


def test_manifest_without_its_table(study: Path, tmp_path: Path, capsys) -> None:
    (study / "pythia-410m-step23000.parquet").unlink()
    err = cli_error(capsys, ["report", str(study), "-o", str(tmp_path / "out")])
    assert "pythia-410m-step23000.manifest.json: expected one table beside it" in err
    assert list(tmp_path.iterdir()) == [study]  # nothing written, not even a temp folder


def test_runs_without_common_sequences(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs, "small", model="EleutherAI/pythia-70m", step=143_000, start=0, stop=100,
              memorized=[1])
    write_run(runs, "large", model="EleutherAI/pythia-1b", step=143_000, start=100, stop=200,
              memorized=[101])
    err = cli_error(capsys, ["report", str(runs), "-o", str(tmp_path / "out")])
    assert ("pythia-70m-step143000 [0, 100) and pythia-1b-step143000 [100, 200) share no "
            "sequence index") in err


def test_missing_target_checkpoint(tmp_path: Path) -> None:
    """Intermediate checkpoints without the final one: no family B, said in the report; the
    checkpoints still serve the forgetting analysis."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for step in (23_000, 43_000):
        write_run(runs, f"p1b-{step}", model="EleutherAI/pythia-1b", step=step, start=0,
                  stop=100, memorized=[3])
    run_report(runs, tmp_path / "out")
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "predictability.csv")) == 0
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "forgetting.csv")) == 1
    assert ("No family B comparison for EleutherAI/pythia-1b: several checkpoints but not the "
            "final one (step143000)") in (tmp_path / "out" / "report.md").read_text()


def test_table_with_a_missing_index(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    path = write_run(runs, "gap", model="EleutherAI/pythia-1b", step=143_000, start=0, stop=50,
                     memorized=[], fmt="csv")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:11] + lines[12:]) + "\n")  # drop index 10
    err = cli_error(capsys, ["report", str(runs), "-o", str(tmp_path / "out")])
    assert "gap.csv: row 10 has index 11, expected 10" in err


def test_output_folder_that_is_not_a_report(study: Path, tmp_path: Path, capsys) -> None:
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    err = cli_error(capsys, ["report", str(study), "-o", str(keep)])
    assert "is not a vmem report folder" in err
    assert (keep / "notes.txt").read_text() == "mine"


def test_export_memorized(tmp_path: Path) -> None:
    # A raw Pythia-like .bin: 300 sequences of 2049 uint16 tokens.
    tokens = np.random.default_rng(5).integers(0, 50_000, size=(300, 2049), dtype=np.uint16)
    data = tmp_path / "tokens.bin"
    tokens.tofile(data)
    memorized = [3, 4, 5, 7, 100, 250, 299]
    run = write_run(tmp_path, "run", model="EleutherAI/pythia-70m", step=143_000, start=0,
                    stop=300, memorized=memorized)
    out = tmp_path / "memorized.parquet"
    assert main(["export-memorized", str(run), "-o", str(out), "--data", str(data),
                 "--seq-len", "2049"]) == 0
    table = pq.read_table(out)
    assert table.schema.field("tokens").type == pa.list_(pa.int64())
    assert table.column("index").to_pylist() == memorized
    assert table.column("tokens").to_pylist() == tokens[memorized, :64].tolist()


def test_export_memorized_beyond_the_dataset(tmp_path: Path, capsys) -> None:
    data = tmp_path / "tokens.bin"
    np.zeros((10, 2049), dtype=np.uint16).tofile(data)
    run = write_run(tmp_path, "run", model="EleutherAI/pythia-70m", step=143_000, start=0,
                    stop=20, memorized=[15])
    err = cli_error(capsys, ["export-memorized", str(run), "-o", str(tmp_path / "m.parquet"),
                             "--data", str(data), "--seq-len", "2049"])
    assert "has 10 sequences" in err and "memorized index 15" in err
    assert list(tmp_path.glob("*m.parquet*")) == []
