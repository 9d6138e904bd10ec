"""The study beyond the paper, on planted merged runs with known answers: runs found in nested
folders, forgetting between checkpoints, (n, p)-extraction, approximate memorization and
memorization by duplication."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli import cli_error
from tests.models import NUM_SEQUENCES
from tests.test_report import CONT_LEN, run_report, write_run
from vmem.cli import main
from vmem.engines import EngineConfig
from vmem.evaluate import Evaluation, evaluate
from vmem.runs.folder import fingerprint
from vmem.runs.merge import merge_run
from vmem.scoring import edit_similarity, generation_values

PYTHIA_1B = "EleutherAI/pythia-1b"


def table(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report / "tables" / f"{name}.csv")


# -- nested folders -------------------------------------------------------------------------------
def test_runs_are_found_at_any_depth_and_named_from_their_manifests(tmp_path: Path) -> None:
    """As a new user leaves them: each run merged into its own folder beside its score files."""
    runs = tmp_path / "runs"
    for folder, model, step in (("small", "EleutherAI/pythia-70m", 143_000),
                                ("large/final", PYTHIA_1B, 143_000),
                                ("large/early", PYTHIA_1B, 1_000)):
        (runs / folder).mkdir(parents=True)
        write_run(runs / folder, "merged", model=model, step=step, start=0, stop=500,
                  memorized=[1, 2, 3])
        (runs / folder / "scores-0123456789-000000000000-000000000500.csv").write_text("x")
    run_report(runs, tmp_path / "report")
    rates = table(tmp_path / "report", "memorization_rates")
    assert sorted(rates["run"]) == ["pythia-1b-step1000", "pythia-1b-step143000",
                                    "pythia-70m-step143000"]
    pred = table(tmp_path / "report", "predictability")
    assert sorted(zip(pred["family"], pred["cheap"], strict=True)) == [
        ("A", "pythia-70m-step143000"), ("B", "pythia-1b-step1000")]

    # The same folder given twice, once through its parent: each run counted once.
    assert main(["report", str(runs), str(runs / "large"), "-o", str(tmp_path / "again")]) == 0
    assert len(table(tmp_path / "again", "memorization_rates")) == 3


def test_two_files_claiming_one_run_are_refused(tmp_path: Path, capsys) -> None:
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        write_run(tmp_path / folder, "run", model=PYTHIA_1B, step=143_000, start=0, stop=100,
                  memorized=[5])
    err = cli_error(capsys, ["report", str(tmp_path), "-o", str(tmp_path / "out")])
    assert (f"{tmp_path / 'a' / 'run.parquet'} and {tmp_path / 'b' / 'c' / 'run.parquet'} "
            "claim the same run (EleutherAI/pythia-1b, revision step143000, [0, 100)") in err
    assert not (tmp_path / "out").exists()


def test_runs_whose_names_would_clash_are_named_by_their_files(tmp_path: Path) -> None:
    for folder, params in (("a", 1000), ("b", 2000)):  # two local models of one folder name
        (tmp_path / folder).mkdir()
        write_run(tmp_path / folder, "run", model=f"/models/{folder}/tiny", step=None, start=0,
                  stop=100, memorized=[5], params=params)
    run_report(tmp_path, tmp_path / "report")
    assert sorted(table(tmp_path / "report", "memorization_rates")["run"]) == [
        str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]


# -- forgetting -----------------------------------------------------------------------------------
# pythia-1b at steps 1, 2 and 3 (1024 sequences per step), each evaluated on [0, 3072); the
# step-1 checkpoint has seen [0, 1024) only, the step-2 one [0, 2048).
STEP_1 = [10, 11, 12, 13, 20, 1500]  # 1500: not seen yet at step 1, so never counted from there
STEP_2 = [10, 11, 30, 31, 32, 1500, 1600]
STEP_3 = [10, 12, 13, 30, 40, 1600, 2500]


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    for step, memorized in ((1, STEP_1), (2, STEP_2), (3, STEP_3)):
        write_run(runs, f"s{step}", model=PYTHIA_1B, step=step, start=0, stop=3072,
                  memorized=memorized, seed=step,
                  method="verify" if step == 2 else "generate")  # flags suffice
    return runs


def test_forgetting_counts_on_the_sequences_both_checkpoints_have_seen(checkpoints, tmp_path):
    run_report(checkpoints, tmp_path / "report")
    forgetting = table(tmp_path / "report", "forgetting")
    assert list(forgetting.columns) == ["model", "from_step", "to_step", "kept", "forgotten",
                                        "new", "never"]
    # step 1 → 2 on [0, 1024): kept 10, 11; forgotten 12, 13, 20; new 30, 31, 32.
    # step 2 → 3 on [0, 2048): kept 10, 30, 1600; forgotten 11, 31, 32, 1500; new 12, 13, 40.
    assert forgetting.values.tolist() == [
        ["pythia-1b", 1, 2, 2, 3, 3, 1024 - 8],
        ["pythia-1b", 2, 3, 3, 4, 3, 2048 - 10],
    ]
    # On [0, 3072), each sequence from the first checkpoint that has seen it: forgotten at some
    # point 11, 12, 13, 20, 31, 32 and 1500 (its step-1 flag does not count); of those memorized
    # again later 12, 13 (forgotten at step 2, back at step 3).
    recurrence = table(tmp_path / "report", "forgetting_recurrence")
    assert recurrence.values.tolist() == [["pythia-1b", "1,2,3", 3072, 7, 2]]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Forgetting between checkpoints" in markdown
    # Without step143000 there is no family B target: said, not refused.
    assert "No family B comparison for EleutherAI/pythia-1b" in markdown
    assert (tmp_path / "report" / "figures" / "forgetting.png").stat().st_size > 0


def test_one_checkpoint_per_model_has_no_forgetting_table(tmp_path: Path) -> None:
    write_run(tmp_path, "one", model=PYTHIA_1B, step=3, start=0, stop=100, memorized=[1])
    run_report(tmp_path, tmp_path / "report")
    assert not (tmp_path / "report" / "tables" / "forgetting.csv").exists()
    assert "Forgetting" not in (tmp_path / "report" / "report.md").read_text()


# -- (n, p)-extraction ----------------------------------------------------------------------------
def test_np_extractable_shares_on_chosen_logprobs(tmp_path: Path) -> None:
    # p_z per sequence: 1 (greedy-memorized), 0.6, 0.05, 0.001, 1e-6 (none on a threshold).
    p_z = np.array([1.0, 0.6, 0.05, 0.001, 1e-6])
    write_run(tmp_path, "run", model=PYTHIA_1B, step=143_000, start=0, stop=5, memorized=[0],
              cont_logprob=np.log(p_z))
    run_report(tmp_path, tmp_path / "report")
    shares = table(tmp_path / "report", "extraction_np").set_index(["n", "p"])
    for n in (1, 10, 100, 1000):
        for p in (0.1, 0.5, 0.9):
            expected = sum(1 - (1 - z) ** n >= p for z in p_z)
            row = shares.loc[(n, p)]
            assert row["extractable"] == expected, (n, p)
            assert row["share"] == pytest.approx(expected / 5)
            assert row["greedy_share"] == pytest.approx(1 / 5)
    # Spot values worked by hand: n=10 makes p_z=0.05 a 40% chance (1 - 0.95^10); n=1000 makes
    # 0.001 a 63% chance.
    assert shares.loc[(10, 0.1), "extractable"] == 3
    assert shares.loc[(10, 0.5), "extractable"] == 2
    assert shares.loc[(1000, 0.5), "extractable"] == 4
    assert shares.loc[(1000, 0.9), "extractable"] == 3
    assert "Probabilistic extraction" in (tmp_path / "report" / "report.md").read_text()


# -- approximate memorization ---------------------------------------------------------------------
def test_edit_similarity_never_falls_below_the_score() -> None:
    """Where the distance equals the count of mismatches, similarity equals the score exactly,
    whatever the continuation length (1 - d/L would round below m/L for L = 10, say)."""
    rng = np.random.default_rng(0)
    for length in (1, 3, 10, 20, 32, 48, 100):
        truth = rng.integers(1, 1000, size=(200, length))
        generated = np.where(rng.random((200, length)) < 0.5, truth, 0)  # substitutions only
        values = generation_values(generated, truth, None)
        assert (values["edit_similarity"] >= values["score"]).all(), length
        assert np.array_equal(values["edit_similarity"], values["score"]), length


def test_edit_similarity_on_hand_made_pairs() -> None:
    truth = np.arange(1, 9)[None, :]  # 8 tokens
    cases = {
        "equal": (np.arange(1, 9), 1.0),
        "one substitution": ([1, 2, 3, 0, 5, 6, 7, 8], 7 / 8),
        "shifted by one (insert + delete)": ([0, 1, 2, 3, 4, 5, 6, 7], 6 / 8),
        "reversed": (np.arange(8, 0, -1), 0.0),
        "two swaps": ([2, 1, 3, 4, 5, 6, 8, 7], 4 / 8),
        "disjoint": ([0] * 8, 0.0),
    }
    generated = np.array([np.asarray(g) for g, _ in cases.values()])
    got = edit_similarity(generated, np.repeat(truth, len(cases), axis=0))
    assert got.tolist() == [expected for _, expected in cases.values()]
    # Each "reversed" token sits elsewhere: substitutions are cheapest, as Levenshtein says.
    values = generation_values(generated, np.repeat(truth, len(cases), axis=0), None)
    assert (values["edit_similarity"] >= values["score"]).all()


def test_a_run_started_before_edit_similarity_resumes_and_merges_without_it(
        tmp_path, hf_engine, tiny_model_dir, tiny_dataset) -> None:
    out = tmp_path / "run"
    first = Evaluation(engine=EngineConfig(tiny_model_dir, engine="hf", dtype="float32"),
                       data=tiny_dataset, out=str(out), start=0, stop=NUM_SEQUENCES,
                       chunk_size=100, progress=False, num_tasks=2, task_id=0)
    evaluate(first, engine=hf_engine)
    # Make the half that is done what an earlier vmem wrote: settings, fingerprint and score
    # files without edit similarity.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"].pop("edit_similarity") is True
    old, manifest["fingerprint"] = manifest["fingerprint"], fingerprint(manifest["settings"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    for path in out.glob("scores-*.csv"):
        rows = pd.read_csv(path).drop(columns="edit_similarity")
        rows.to_csv(out / path.name.replace(old, manifest["fingerprint"]), index=False)
        path.unlink()
    evaluate(dataclasses.replace(first, task_id=1), engine=hf_engine)
    assert {tuple(pd.read_csv(p).columns) for p in out.glob("scores-*.csv")} == {
        ("index", "score", "matches", "prefix_match")}
    merge_run(str(out), str(tmp_path / "merged" / "old.parquet"))
    assert len(pd.read_parquet(tmp_path / "merged" / "old.parquet")) == NUM_SEQUENCES
    run_report(tmp_path / "merged", tmp_path / "report")
    assert not (tmp_path / "report" / "tables" / "approximate.csv").exists()


def test_an_edit_similarity_outside_0_1_is_one_line(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, "run", model=PYTHIA_1B, step=143_000, start=0, stop=3, memorized=[],
              matches=np.array([0, 1, 2]), edit_similarity=np.array([0.0, 1.5, 0.2]))
    err = cli_error(capsys, ["report", str(tmp_path), "-o", str(tmp_path / "out")])
    assert f"{tmp_path / 'run.parquet'}: edit_similarity must lie in 0..1, found 1.5" in err
    assert not (tmp_path / "out").exists()


def test_a_method_python_callers_cannot_run_is_one_line(tmp_path: Path) -> None:
    from vmem.errors import VmemError
    from vmem.spot import spot

    ev = Evaluation(engine=EngineConfig("unused"), data=str(tmp_path / "none"),
                    out=str(tmp_path / "out"), method="released")
    with pytest.raises(VmemError, match=r"^--method released: expected generate or verify$"):
        evaluate(ev)
    with pytest.raises(VmemError, match=r"^--method sample: expected generate or verify$"):
        spot(None, [0], EngineConfig("unused"), method="sample")
    assert not (tmp_path / "out").exists()


def test_approximate_shares_beside_exact(tmp_path: Path) -> None:
    similarity = np.array([1.0, 0.95, 0.9, 0.8, 0.75, 0.5, 0.0, 1.0])
    matches = np.array([CONT_LEN, 30, 28, 20, 10, 5, 0, CONT_LEN])
    write_run(tmp_path, "run", model=PYTHIA_1B, step=143_000, start=0, stop=8, memorized=[],
              matches=matches, edit_similarity=similarity)
    write_run(tmp_path, "flags", model="EleutherAI/pythia-70m", step=143_000, start=0, stop=8,
              memorized=[0], method="verify")  # no generation: not in the table
    run_report(tmp_path, tmp_path / "report")
    approximate = table(tmp_path / "report", "approximate")
    assert approximate[["run", "evaluated", "exact_share", "share_above_0.9",
                        "share_above_0.75"]].values.tolist() == [
        ["pythia-1b-step143000", 8, 2 / 8, 3 / 8, 5 / 8]]
    assert approximate["mean_edit_similarity"].iloc[0] == pytest.approx(similarity.mean())
    assert "Approximate memorization" in (tmp_path / "report" / "report.md").read_text()


# -- duplication ----------------------------------------------------------------------------------
def test_memorized_share_by_duplication_bucket(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs, "run", model=PYTHIA_1B, step=143_000, start=100, stop=110,
              memorized=[100, 104, 105, 106, 109], method="verify")
    # 100: 0 copies; 101-102: once; 103-104: 2-3; 105-108: 4-7 (107, 108 unlisted: left out);
    # 109: 9; 7 and 200 lie outside the run.
    counts = {7: 1, 100: 0, 101: 1, 102: 1, 103: 2, 104: 3, 105: 4, 106: 7, 109: 9, 200: 50}
    path = tmp_path / "dups.csv"
    pd.DataFrame(dict(index=list(counts)[::-1], count=list(counts.values())[::-1])).to_csv(
        path, index=False)
    assert main(["report", str(runs), "-o", str(tmp_path / "report"), "--duplicates",
                     str(path)]) == 0
    dup = table(tmp_path / "report", "duplication")
    assert dup[["occurrences", "sequences", "memorized"]].values.tolist() == [
        ["0", 1, 1], ["1", 2, 0], ["2-3", 2, 1], ["4-7", 2, 2], ["8-15", 1, 1]]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Memorization against duplication" in markdown
    assert "Sequences the table does not list are left out: pythia-1b-step143000-verify 2" \
        in markdown
    assert (tmp_path / "report" / "figures" / "duplication.png").stat().st_size > 0

    # The same table as parquet gives the same answer.
    pq.write_table(pa.table(dict(index=list(counts), count=list(counts.values()))),
                   tmp_path / "dups.parquet")
    assert main(["report", str(runs), "-o", str(tmp_path / "report2"), "--duplicates",
                     str(tmp_path / "dups.parquet")]) == 0
    assert table(tmp_path / "report2", "duplication").equals(dup)


@pytest.mark.parametrize("case", ["no index", "twice", "negative", "not integers", "missing",
                                  "unreadable"])
def test_bad_duplicates_tables_are_one_line(tmp_path: Path, capsys, case: str) -> None:
    write_run(tmp_path, "run", model=PYTHIA_1B, step=143_000, start=0, stop=10, memorized=[1])
    path = tmp_path / "dups.csv"
    text, expected = {
        "no index": ("sequence,count\n1,2\n", "expected columns index,count (vmem duplicates) "
                     "or sequence_id,counts (EleutherAI's published counts), found "
                     "sequence,count"),
        "twice": ("index,count\n1,2\n1,3\n", "index 1 is listed more than once"),
        "negative": ("index,count\n1,-2\n", "indices and counts must not be negative"),
        "not integers": ("index,count\n1,many\n", "column count must hold integers"),
        "missing": (None, "no such file"),
        "unreadable": ("\x00\x01", "not a readable .parquet or .csv table"),
    }[case]
    if text is not None:
        path.write_text(text)
    err = cli_error(capsys, ["report", str(tmp_path), "-o", str(tmp_path / "out"),
                             "--duplicates", str(path)])
    assert f"--duplicates {path}: {expected}" in err, err
    assert not (tmp_path / "out").exists()
