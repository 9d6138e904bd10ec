"""`vmem import-released`: EleutherAI's lists of memorized sequences (parquet rows index,tokens)
as flags-only merged runs, round-tripped against planted runs and data, reported, and refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli import cli_error
from tests.test_report import write_run
from vmem.cli import main
from vmem.io import mmidx
from vmem.study.merged_runs import load_run

SEQUENCES, SEQ_LEN, STEP, PER_STEP = 300, 70, 30, 10  # step 30 has seen [0, 300)
MEMORIZED = [0, 3, 4, 5, 41, 42, 150, 298, 299]
NAME = "pythia-70m-step30-released"


@pytest.fixture
def data(tmp_path: Path) -> str:
    """A tiny dataset in Pythia's merged format."""
    rows = np.random.default_rng(3).integers(0, 50_000, size=(SEQUENCES, SEQ_LEN),
                                             dtype=np.uint16)
    prefix = str(tmp_path / "data" / "pile")
    mmidx.write_merged(prefix, rows)
    return prefix


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    """A generation run of pythia-70m at step 30 that memorized MEMORIZED."""
    folder = tmp_path / "generated"
    folder.mkdir()
    return write_run(folder, "p70m", model="EleutherAI/pythia-70m", step=STEP, start=0,
                     stop=SEQUENCES, memorized=MEMORIZED, sequences_per_step=PER_STEP)


@pytest.fixture
def released(tmp_path: Path, generated: Path, data: str) -> Path:
    """The list EleutherAI would publish for that run: its memorized indices and their first 64
    tokens (as `vmem export-memorized` writes them), rows shuffled, and the published lists'
    extra column (a copy of index left by pandas)."""
    exported = tmp_path / "exported.parquet"
    assert main(["export-memorized", str(generated), "-o", str(exported), "--data", data]) == 0
    table = pq.read_table(exported)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    path = tmp_path / "duped.70m.parquet"
    pq.write_table(shuffled.append_column("__index_level_0__", shuffled.column("index")), path)
    return path


def import_list(source: Path | str, out: Path, *extra: str, model: str = "EleutherAI/pythia-70m",
                step: int = STEP, per_step: int = PER_STEP) -> list[str]:
    return ["import-released", str(source), "--model", model, "--step", str(step),
            "--sequences-per-step", str(per_step), "-o", str(out), *extra]


def write_list(path: Path, indices: list[int], tokens: int = 64) -> Path:
    """A released list without real tokens (enough where no --data checks them)."""
    pq.write_table(pa.table({"index": pa.array(indices, pa.int64()),
                             "tokens": pa.array([[7] * tokens] * len(indices),
                                                pa.list_(pa.int64()))}), path)
    return path


def test_imported_flags_equal_the_runs_flags(tmp_path, released, generated, data) -> None:
    out = tmp_path / "results"
    assert main(import_list(released, out, "--data", data)) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{NAME}.manifest.json", f"{NAME}.parquet"]
    run = load_run(str(out / f"{NAME}.parquet"))
    assert (run.method, run.step, run.start, run.stop) == ("released", STEP, 0, SEQUENCES)
    np.testing.assert_array_equal(run.memorized(), load_run(str(generated)).memorized())
    assert run.matches is None and np.flatnonzero(run.flags).tolist() == MEMORIZED

    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())
    settings = manifest["settings"]
    assert {k: settings[k] for k in ("model", "revision", "start", "stop", "cont_len",
                                     "prompt_len", "method", "batch_size", "eos_mode",
                                     "logprobs")} == dict(
        model="EleutherAI/pythia-70m", revision="step30", start=0, stop=SEQUENCES, cont_len=32,
        prompt_len=32, method="released", batch_size=PER_STEP, eos_mode="paper", logprobs=False)
    assert settings["data"]["num_sequences"] == SEQUENCES
    assert manifest["params"] == 70_426_624 and manifest["step"] == STEP
    source = manifest["source"]
    assert (source["file"], source["rows"], source["tokens_checked"]) == (
        str(released), len(MEMORIZED), True)
    assert len(source["sha256"]) == 64 and len(manifest["fingerprint"]) == 10

    table = pq.ParquetFile(out / f"{NAME}.parquet")
    assert table.schema_arrow == pa.schema([("index", pa.int64()), ("memorized", pa.bool_())])
    assert "DELTA_BINARY_PACKED" in table.metadata.row_group(0).column(0).encodings

    # Without --data nothing is checked, and the same flags come out.
    again = tmp_path / "again"
    assert main(import_list(released, again)) == 0
    assert load_run(str(again / f"{NAME}.parquet")).flags.tolist() == run.flags.tolist()
    manifest = json.loads((again / f"{NAME}.manifest.json").read_text())
    assert manifest["settings"]["data"] is None and not manifest["source"]["tokens_checked"]


def test_list_and_data_on_s3(tmp_path, released, data, s3_server, s3_client,
                             s3_bucket) -> None:
    for path in [released, *Path(data).parent.iterdir()]:
        s3_client.upload_file(str(path), s3_bucket, f"released/{path.name}")
    remote = f"s3://{s3_bucket}/released"
    assert main(import_list(f"{remote}/{released.name}", tmp_path / "results", "--data",
                            f"{remote}/pile", "--s3-endpoint", s3_server)) == 0
    manifest = json.loads((tmp_path / "results" / f"{NAME}.manifest.json").read_text())
    assert manifest["source"]["file"] == f"{remote}/{released.name}"
    assert manifest["settings"]["data"]["location"] == f"{remote}/pile"
    run = load_run(str(tmp_path / "results" / f"{NAME}.parquet"))
    assert np.flatnonzero(run.flags).tolist() == MEMORIZED


def test_report_of_two_released_final_models(tmp_path) -> None:
    # One sequence per step: step 143000 has seen [0, 143000).
    both, small_only, large_only = [5, 900, 142_999], [17, 60_000], [1, 2, 3, 4, 100_000]
    lists = tmp_path / "lists"
    lists.mkdir()
    results = tmp_path / "results"
    for size, memorized in (("70m", both + small_only), ("410m", both + large_only)):
        write_list(lists / f"duped.{size}.parquet", memorized[::-1])
        assert main(import_list(lists / f"duped.{size}.parquet", results,
                                model=f"EleutherAI/pythia-{size}", step=143_000,
                                per_step=1)) == 0
    assert main(["report", str(results), "-o", str(tmp_path / "report")]) == 0
    tables = tmp_path / "report" / "tables"
    pred = pd.read_csv(tables / "predictability.csv")
    assert pred[["family", "cheap", "target", "tp", "fp", "fn"]].values.tolist() == [
        ["A", "pythia-70m-step143000-released", "pythia-410m-step143000-released", 3, 2, 5]]
    assert pred.loc[0, "precision"] == pytest.approx(3 / 5)
    assert pred.loc[0, "recall"] == pytest.approx(3 / 8)
    rates = pd.read_csv(tables / "memorization_rates.csv").set_index("run")
    assert rates["method"].tolist() == ["released", "released"]
    assert rates.loc["pythia-410m-step143000-released", "memorized"] == 8
    assert pd.read_csv(tables / "score_distribution.csv").empty
    assert "not shown for the flags-only run(s)" in (tmp_path / "report" / "report.md").read_text()


def test_released_and_generated_run_of_one_checkpoint(capsys, tmp_path, released,
                                                      generated) -> None:
    results = generated.parent
    # Named as a user might, without the hub's organisation: taken as the id evaluate records,
    # so the list pairs with the generation run of that checkpoint.
    assert main(import_list(released, results, model="pythia-70m")) == 0
    assert "--model pythia-70m taken as EleutherAI/pythia-70m" in capsys.readouterr().err
    assert main(["report", str(results), "-o", str(tmp_path / "report")]) == 0
    agreement = pd.read_csv(tmp_path / "report" / "tables" / "method_agreement.csv")
    assert agreement[["run", "method", "reference", "reference_method", "sequences",
                      "memorized_both", "only_run", "only_reference", "agreement"]
                     ].values.tolist() == [[NAME, "released", "pythia-70m-step30", "generate",
                                            SEQUENCES, len(MEMORIZED), 0, 0, 1.0]]
    # The generation run stands for the checkpoint: it alone has a score distribution.
    distribution = pd.read_csv(tmp_path / "report" / "tables" / "score_distribution.csv")
    assert set(distribution["run"]) == {"pythia-70m-step30"}

    # A second copy of the list claims the same run: refused, naming both files.
    (results / "copy").mkdir()
    for suffix in (".parquet", ".manifest.json"):
        shutil.copy(results / f"{NAME}{suffix}", results / "copy" / f"{NAME}{suffix}")
    err = cli_error(capsys, ["report", str(results), "-o", str(tmp_path / "report2")])
    assert (f"{results / 'copy' / NAME}.parquet and {results / NAME}.parquet claim the same "
            "run") in err


def rewrite(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("case", ["tokens differ", "too few tokens", "no index", "outside",
                                  "twice", "step 0", "output is a file", "output not local nor S3",
                                  "missing", "not parquet", "data too short"])
def test_refused_in_one_line_writing_nothing(capsys, tmp_path, released, data, case) -> None:
    out, extra, step = tmp_path / "results", ["--data", data], STEP
    table = pq.read_table(released)
    if case == "tokens differ":
        tokens = table.column("tokens").to_pylist()
        wrong = sorted(table.column("index").to_pylist())[2:4]
        for row, index in enumerate(table.column("index").to_pylist()):
            if index in wrong:
                tokens[row][40] += 1
        source = rewrite(released, table.set_column(1, "tokens", pa.array(tokens)))
        expected = f"the tokens of 2 listed sequence(s) differ from {data} (indices " \
                   f"{wrong[0]}, {wrong[1]})"
    elif case == "too few tokens":
        source = write_list(tmp_path / "short.parquet", [3], tokens=63)
        expected = "index 3 has 63 tokens; expected 64 to 70"
    elif case == "no index":
        source = rewrite(released, table.drop_columns(["index"]))
        expected = "no column index (found tokens, __index_level_0__)"
    elif case == "outside":
        source, extra = write_list(tmp_path / "far.parquet", [3, 300, 301]), []
        expected = "lists 2 sequence(s) outside [0, 300)"
    elif case == "twice":
        source, extra = write_list(tmp_path / "twice.parquet", [8, 3, 8]), []
        expected = "lists 1 sequence(s) more than once (index 8)"
    elif case == "step 0":
        source, step, expected = released, 0, "--step 0: expected the positive training step"
    elif case == "output is a file":
        out.write_text("mine")
        source, expected = released, f"-o {out}: exists and is not a folder"
    elif case == "output not local nor S3":
        source, expected = released, "-o gs://bucket/results: not a local path or an s3:// URL"
        out = "gs://bucket/results"
    elif case == "missing":
        source, expected = tmp_path / "nothing.parquet", "no such file"
    elif case == "not parquet":
        source = tmp_path / "list.parquet"
        source.write_text("index,tokens\n")
        expected = "not a readable parquet file"
    else:
        source, step, expected = released, STEP + 1, f"has {SEQUENCES} sequences, but checkpoint"
    err = cli_error(capsys, import_list(source, out, *extra, step=step))
    assert expected in err
    assert out.read_text() == "mine" if case == "output is a file" else not Path(out).exists()
    assert not Path("gs:").exists()  # no local folder named after the URL
