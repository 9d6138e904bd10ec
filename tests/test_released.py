"""`vmem import-released`: EleutherAI's lists of memorized sequences (parquet rows index,tokens)
as flags-only merged runs, round-tripped against planted runs and data, reported, and refused."""

from __future__ import annotations

import hashlib
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


def import_list(source: Path | str | list, out: Path, *extra: str,
                model: str = "EleutherAI/pythia-70m", step: int = STEP,
                per_step: int = PER_STEP) -> list[str]:
    sources = source if isinstance(source, list) else [source]
    return ["import-released", *map(str, sources), "--model", model, "--step", str(step),
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
    assert (source["split"], source["rows"], source["tokens_checked"]) == (
        None, len(MEMORIZED), True)
    assert [(f["file"], f["rows"]) for f in source["files"]] == [(str(released), len(MEMORIZED))]
    assert source["files"][0]["sha256"] == hashlib.sha256(released.read_bytes()).hexdigest()
    assert len(manifest["fingerprint"]) == 10

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
    assert manifest["source"]["files"][0]["file"] == f"{remote}/{released.name}"
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


# --- a split stored as several files (data/<split>-0000k-of-0000n-<hash>.parquet) ----------------

def write_parts(folder: Path, table: pa.Table, split: str, parts: int) -> list[Path]:
    """`table`'s rows cut into `parts` consecutive files, named as the dataset names a split's
    files (each with a hash of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, parts + 1).round().astype(int)
    paths = []
    for k in range(parts):
        path = folder / f"{split}-{k:05d}-of-{parts:05d}-{k + 0x86e948f5c2689f6a:x}.parquet"
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), path)
        paths.append(path)
    return paths


def imported(out: Path) -> list[int]:
    return np.flatnonzero(load_run(str(out / f"{NAME}.parquet")).flags).tolist()


def test_a_split_in_two_files_imports_every_row(capsys, tmp_path, released, data) -> None:
    data_folder = tmp_path / "pythia-memorized-evals" / "data"
    first, second = write_parts(data_folder, pq.read_table(released), "deduped.1b.new", 2)
    assert 0 < pq.read_metadata(first).num_rows < len(MEMORIZED)  # rows in both files
    write_parts(data_folder, pq.read_table(released).slice(0, 3), "duped.70m", 1)  # another split

    ways = {"paths": [str(second), str(first)],  # in any order
            "glob": [str(data_folder / "deduped.1b.new-*.parquet")],
            "folder": [str(data_folder), "--split", "deduped.1b.new"],
            "split's folder": [str(tmp_path / "alone")]}
    (tmp_path / "alone").mkdir()
    for path in (first, second):
        shutil.copy(path, tmp_path / "alone" / path.name)
    for way, args in ways.items():
        out = tmp_path / way
        argv = import_list([a for a in args if not a.startswith(("--", "deduped"))], out,
                           *[a for a in args if a.startswith(("--", "deduped"))], "--data", data)
        assert main(argv) == 0, way
        assert imported(out) == MEMORIZED, way
        source = json.loads((out / f"{NAME}.manifest.json").read_text())["source"]
        folder = tmp_path / "alone" if way == "split's folder" else data_folder
        assert source["split"] == "deduped.1b.new" and source["rows"] == len(MEMORIZED)
        assert [f["file"] for f in source["files"]] == [str(folder / first.name),
                                                         str(folder / second.name)]
        assert [f["rows"] for f in source["files"]] == [pq.read_metadata(p).num_rows
                                                        for p in (first, second)]
        assert "warning" not in capsys.readouterr().err  # no card figure for this split

    # The data/ folder holds two splits: which one is asked for.
    err = cli_error(capsys, import_list(data_folder, tmp_path / "none"))
    assert "holds the files of 2 splits (deduped.1b.new, duped.70m); name one with --split" in err
    assert not (tmp_path / "none").exists()


def test_a_split_on_s3_as_a_glob_and_a_folder(tmp_path, released, s3_server, s3_client,
                                              s3_bucket) -> None:
    for path in write_parts(tmp_path / "data", pq.read_table(released), "deduped.1b.new", 2):
        s3_client.upload_file(str(path), s3_bucket, f"evals/data/{path.name}")
    remote = f"s3://{s3_bucket}/evals/data"
    for way, source in (("glob", f"{remote}/deduped.1b.new-0000?-of-00002-*.parquet"),
                        ("folder", f"{remote}/")):
        out = tmp_path / way
        assert main(import_list(source, out, "--s3-endpoint", s3_server)) == 0, way
        assert imported(out) == MEMORIZED, way


@pytest.mark.parametrize("case", ["overlap", "missing part", "two splits", "unnamed file",
                                  "part twice", "no match", "another --split"])
def test_a_split_whose_files_disagree_is_refused_in_one_line(capsys, tmp_path, released,
                                                             case) -> None:
    table = pq.read_table(released)
    folder = tmp_path / "data"
    first, second = write_parts(folder, table, "duped.1b", 2)
    sources, extra = [first, second], []
    if case == "overlap":
        # The second file also lists one of the first file's sequences.
        shared = pq.read_table(first).slice(0, 1)
        pq.write_table(pa.concat_tables([pq.read_table(second), shared]), second)
        expected = (f"{first} and {second} both list index {shared.column('index')[0]} (1 "
                    f"index(es) in two files); a split's files do not overlap")
    elif case == "missing part":
        sources = [second]
        expected = "split duped.1b: part(s) 00000 of its 2 file(s) missing (found 00001)"
    elif case == "two splits":
        other = write_parts(folder, table, "deduped.1b", 1)[0]
        sources = [first, other]
        expected = (f"{first} and {other} are not parts of one split (split duped.1b of 2 "
                    f"files, split deduped.1b of 1)")
    elif case == "unnamed file":
        sources = [first, write_list(tmp_path / "mine.parquet", [1])]
        expected = f"{tmp_path / 'mine.parquet'}: not named as a part of a split"
    elif case == "part twice":
        copy = folder / second.name.replace("-of-00002-", "-of-00002-ff")
        shutil.copy(second, copy)
        sources = [first, second, copy]
        expected = "are both part 00001 of split duped.1b"
    elif case == "no match":
        sources = [folder / "deduped.12b-*.parquet"]
        expected = f"{folder / 'deduped.12b-*.parquet'}: matches no file"
    else:
        extra = ["--split", "duped.12b"]
        expected = "--split duped.12b: the files given are of split duped.1b"
    out = tmp_path / "results"
    err = cli_error(capsys, import_list(sources, out, *extra))
    assert expected in err
    assert not out.exists()


def test_a_known_split_with_another_count_than_its_card_warns(capsys, tmp_path,
                                                              released) -> None:
    paths = write_parts(tmp_path / "data", pq.read_table(released), "duped.70m", 2)
    out = tmp_path / "results"
    assert main(import_list(paths, out)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    # The card lists 463,953 memorized sequences for duped.70m.
    assert warnings == [f"vmem import-released: warning: split duped.70m lists "
                        f"{len(MEMORIZED)} sequences, its dataset card 463,953; are all its "
                        f"files here?"]
    assert imported(out) == MEMORIZED  # imported all the same
