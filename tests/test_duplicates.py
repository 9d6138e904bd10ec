"""`vmem duplicates`: exact against a brute-force count over real files, real tokengrams indexes
and the S3 server; damaged and foreign indexes, a killed run, a full disk, the range flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.cli import cli_error
from tests.test_failures import small_disk  # noqa: F401 (the tmpfs fixture)
from tests.test_report import write_run
from vmem.cli import main
from vmem.data import open_dataset
from vmem.duplicates import (
    COLUMNS,
    METADATA_KEY,
    Counting,
    count_duplicates,
    plan_index,
    token_counts,
)
from vmem.io import mmidx
from vmem.study.duplication import read_duplicates

SEQ_LEN = 100
ROWS = 240
SHARD_TOKENS = 4321  # shard boundaries fall inside rows


def planted_rows(seed: int = 0, rows: int = ROWS, seq_len: int = SEQ_LEN,
                 window: tuple[int, int] = (32, 64)) -> np.ndarray:
    """Random rows with known duplicates of some rows' windows: inside other rows at odd
    alignments, across row boundaries, across shard boundaries, and runs of one token (windows
    that overlap themselves)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 2000, size=(rows, seq_len), dtype=np.uint16)
    stream = data.reshape(-1)
    a, b = window
    n = b - a
    sources = [data[k, a:b].copy() for k in range(4)]  # the windows of rows 0..3
    places = [4 * seq_len + 5, 10 * seq_len - n // 2, 11 * seq_len - 1]  # inside; across rows
    cuts = range(SHARD_TOKENS, len(stream) - n, SHARD_TOKENS)
    # Across a shard boundary, ending at one, starting at one, one token over one.
    places += [cut - (n // 2, n, 0, 1)[j % 4] for j, cut in enumerate(cuts)]
    for k, place in enumerate(places):
        stream[place:place + n] = sources[k % 4]
    stream[20 * seq_len:22 * seq_len + 10] = 7  # two rows of one token, running on
    stream[30 * seq_len + a:30 * seq_len + b] = data[20, a:b]
    return data


def brute_force(rows: np.ndarray, offset: int = 0, prompt_len: int = 32,
                cont_len: int = 32) -> pd.DataFrame:
    """Every row's window counted over the whole stream at every alignment, by sliding
    windows; token frequencies by np.bincount."""
    stream = rows.reshape(-1)
    grams = np.lib.stride_tricks.sliding_window_view(stream, cont_len)
    seen = Counter(map(bytes, grams))
    first = offset + prompt_len
    windows = rows[:, first:first + cont_len]
    freqs = np.bincount(stream)[windows]
    return pd.DataFrame({"index": np.arange(len(rows), dtype=np.int64),
                         "count": np.array([seen[bytes(w)] for w in windows], dtype=np.int64),
                         "freq_min": freqs.min(axis=1).astype(np.int64),
                         "freq_median": np.median(freqs, axis=1),
                         "freq_max": freqs.max(axis=1).astype(np.int64)})


def write_layout(rows: np.ndarray, folder, layout: str) -> str:
    """The rows as a merged, sharded or raw dataset under `folder`; its path."""
    if layout == "merged":
        mmidx.write_merged(folder / "data", rows)
        return str(folder / "data")
    if layout == "sharded":
        mmidx.write_sharded(folder / "shards", rows, SHARD_TOKENS * rows.itemsize)
        return str(folder / "shards")
    rows.tofile(folder / "rows.bin")
    return str(folder / "rows.bin")


def counted(data: str, index, output, *extra: str) -> pd.DataFrame:
    assert main(["duplicates", "--data", data, "--index", str(index), "-o", str(output),
                 "--no-progress", *extra]) == 0
    table = pd.read_parquet(output)
    assert list(table.columns) == COLUMNS
    return table


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return planted_rows()


@pytest.mark.parametrize("layout", ["merged", "sharded", "raw"])
def test_counts_equal_brute_force_on_every_sequence(tmp_path, rows, layout):
    data = write_layout(rows, tmp_path, layout)
    extra = ["--seq-len", str(SEQ_LEN)] if layout == "raw" else []
    table = counted(data, tmp_path / "index", tmp_path / "counts.parquet", "--start", "0",
                    "--stop", str(ROWS), *extra)
    expected = brute_force(rows)
    pd.testing.assert_frame_equal(table, expected)
    assert (expected["count"] >= 2).sum() >= 7 and expected["count"].max() >= 5  # planted
    stream = rows.reshape(-1)
    assert np.array_equal(token_counts(str(tmp_path / "index"))[:stream.max() + 1],
                          np.bincount(stream))
    parts = plan_index(open_dataset(data, seq_len=SEQ_LEN if extra else None), 32)["parts"]
    assert len(parts) == (-(-stream.size // SHARD_TOKENS) if layout == "sharded" else 1)
    if layout == "sharded":  # overlap of 31 tokens: without it the planted windows go missing
        assert all(p["stop"] - p["start"] == SHARD_TOKENS + 31 for p in parts[:-1])
    assert not (tmp_path / "counts.parquet.parts").exists()


@pytest.mark.parametrize("layout", ["merged", "sharded"])
def test_counts_of_s3_data_equal_brute_force(tmp_path, rows, layout, s3_server, s3_client,
                                             s3_bucket):
    local = write_layout(rows, tmp_path, layout)
    names = ["data.bin", "data.idx"] if layout == "merged" else os.listdir(local)
    for name in names:
        path = os.path.join(local if layout == "sharded" else tmp_path, name)
        s3_client.upload_file(path, s3_bucket, f"{layout}/{name}")
    data = f"s3://{s3_bucket}/{layout}" + ("/data" if layout == "merged" else "")
    table = counted(data, tmp_path / "index", tmp_path / "counts.parquet", "--start", "0",
                    "--stop", str(ROWS), "--s3-endpoint", s3_server)
    pd.testing.assert_frame_equal(table, brute_force(rows))
    assert "part-00000.tokens" in os.listdir(tmp_path / "index")  # a local copy of S3 tokens


def test_another_window_counts_exactly_up_to_the_end_of_the_stream(tmp_path):
    # Rows of exactly offset + prompt + continuation: the last window ends the stream.
    offset, prompt_len, cont_len = 3, 10, 8
    data = planted_rows(seed=1, rows=700, seq_len=21, window=(13, 21))
    data[-1, 13:] = data[5, 13:]
    path = write_layout(data, tmp_path, "sharded")
    table = counted(path, tmp_path / "index", tmp_path / "counts.parquet", "--start", "0",
                    "--stop", "700", "--offset", str(offset), "--prompt-len", str(prompt_len),
                    "--cont-len", str(cont_len), "--chunk-size", "97")
    expected = brute_force(data, offset, prompt_len, cont_len)
    pd.testing.assert_frame_equal(table, expected)
    assert table["count"].iloc[-1] >= 2


def test_checkpoint_range_and_build_only_per_shard(tmp_path, rows, monkeypatch, capsys):
    data = write_layout(rows, tmp_path, "sharded")
    index = tmp_path / "index"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")  # one array task per shard
    assert main(["duplicates", "--data", data, "--index", str(index), "--build-only",
                 "--no-progress"]) == 0
    assert sorted(p for p in os.listdir(index) if p.endswith(".json")) == [
        "manifest.json", "part-00002.json"]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    capsys.readouterr()
    table = counted(data, index, tmp_path / "c.parquet", "--checkpoint", "3",
                    "--sequences-per-step", "16", "--start", "5")
    assert "building 5 of 6 index parts" in capsys.readouterr().err  # part 2 was reused
    assert table["index"].tolist() == list(range(5, 48))
    pd.testing.assert_frame_equal(table, brute_force(rows).iloc[5:48].reset_index(drop=True))
    err = cli_error(capsys, ["duplicates", "--data", data, "--index", str(index),
                             "--checkpoint", "16", "--sequences-per-step", "16",
                             "-o", str(tmp_path / "d.parquet"), "--no-progress"])
    assert "--checkpoint 16: selects [0, 256)" in err and f"has sequences [0, {ROWS})" in err
    err = cli_error(capsys, ["duplicates", "--data", data, "--index", str(index),
                             "--build-only", "--shard", "9"])
    assert "--shard 9: " in err and "6 index parts" in err
    # A finished table is not counted again; a raw dataset of other tokens is refused.
    assert main(["duplicates", "--data", data, "--index", str(index), "--checkpoint", "3",
                 "--sequences-per-step", "16", "--start", "5", "-o", str(tmp_path / "c.parquet"),
                 "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().err
    rows.astype(np.int32).tofile(tmp_path / "wide.bin")
    err = cli_error(capsys, ["duplicates", "--data", str(tmp_path / "wide.bin"), "--seq-len",
                             str(SEQ_LEN), "--data-dtype", "int32", "--index",
                             str(tmp_path / "i2"), "--start", "0", "--stop", "2",
                             "-o", str(tmp_path / "e.parquet")])
    assert "tokens are int32" in err and "uint16 or uint32" in err


def untouched(tmp_path, output) -> bool:
    """Nothing of a refused command is left: no table, no work folder, no temporary file."""
    return (not output.exists() and not os.path.exists(str(output) + ".parts")
            and not list(tmp_path.rglob(".*.tmp")))


def test_damaged_and_foreign_indexes_are_refused_in_one_line(tmp_path, rows, capsys):
    data = write_layout(rows, tmp_path, "sharded")
    index = tmp_path / "index"
    counted(data, index, tmp_path / "first.parquet", "--start", "0", "--stop", "10")
    output = tmp_path / "counts.parquet"
    args = ["duplicates", "--data", data, "--index", str(index), "--start", "0", "--stop", "10",
            "-o", str(output), "--no-progress"]
    table = index / "part-00003.table"
    whole = table.read_bytes()
    table.write_bytes(whole[:-8])
    err = cli_error(capsys, args)
    assert f"{table}: {len(whole) - 8} bytes, expected {len(whole)}" in err and "damaged" in err
    assert untouched(tmp_path, output)
    table.unlink()
    assert f"{table}: missing" in cli_error(capsys, args) and untouched(tmp_path, output)
    table.write_bytes(whole)
    (index / "part-00001.tokens").write_bytes(b"\0\0")
    assert "part-00001.tokens: 2 bytes" in cli_error(capsys, args)
    (index / "manifest.json").write_text("{not json")
    assert "not a duplicate index manifest" in cli_error(capsys, args)
    (index / "manifest.json").unlink()
    assert "holds files but no manifest.json" in cli_error(capsys, args)
    assert untouched(tmp_path, output)
    # Foreign: a sound index of another dataset, and one built for another --cont-len.
    other = tmp_path / "other"
    other.mkdir()
    other_data = write_layout(planted_rows(seed=5), other, "sharded")
    other_index = tmp_path / "other-index"
    counted(other_data, other_index, tmp_path / "o.parquet", "--start", "0", "--stop", "3")
    err = cli_error(capsys, [*args[:4], str(other_index), *args[5:]])
    assert f"an index of {other_data}" in err and f"not of {data}" in err
    err = cli_error(capsys, ["duplicates", "--data", other_data, "--index", str(other_index),
                             "--start", "0", "--stop", "3", "--cont-len", "16", "-o",
                             str(output)])
    assert "built for --cont-len 32" in err and "--cont-len 16 needs an index of its own" in err
    assert untouched(tmp_path, output)


def test_a_killed_run_resumes_to_the_table_of_an_uninterrupted_one(tmp_path, capsys):
    data_rows = planted_rows(seed=2, rows=20000)
    data = write_layout(data_rows, tmp_path, "merged")
    index, output = tmp_path / "index", tmp_path / "counts.parquet"
    whole = counted(data, index, tmp_path / "whole.parquet", "--start", "0", "--stop", "20000")
    work = tmp_path / "counts.parquet.parts"
    args = ["duplicates", "--data", data, "--index", str(index), "--start", "0", "--stop",
            "20000", "-o", str(output), "--chunk-size", "50", "--no-progress"]
    child = subprocess.Popen([sys.executable, "-m", "vmem.cli", *args],
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (work.exists() and len(list(work.glob("counts-*.parquet"))) >= 3):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = len(list(work.glob("counts-*.parquet")))
    assert not output.exists() and 3 <= left < 400
    (work / ".counts-000000019950-000000020000.parquet.1234.tmp").write_bytes(b"PAR1")
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"counted {20000 - 50 * left:,} windows" in err  # only what the kill left
    pd.testing.assert_frame_equal(pd.read_parquet(output), whole)
    assert not work.exists()


def test_slices_and_a_damaged_chunk_complete_to_the_same_table(tmp_path, rows, capsys):
    data = write_layout(rows, tmp_path, "merged")
    index, output = tmp_path / "index", tmp_path / "counts.parquet"
    args = ["duplicates", "--data", data, "--index", str(index), "--start", "0", "--stop",
            str(ROWS), "-o", str(output), "--chunk-size", "30", "--no-progress"]
    assert main([*args, "--task-id", "0", "--num-tasks", "2"]) == 0
    assert "left to other tasks" in capsys.readouterr().err and not output.exists()
    chunk = tmp_path / "counts.parquet.parts" / "counts-000000000030-000000000060.parquet"
    chunk.write_bytes(chunk.read_bytes()[:100])  # as a disk fault would leave it
    assert main([*args, "--task-id", "1", "--num-tasks", "2"]) == 0
    err = capsys.readouterr().err
    assert f"{chunk} is damaged" in err and "counted 120 windows" in err
    assert "left to other tasks" in err and not output.exists()
    assert main(args) == 0  # the whole range: only the damaged chunk is left
    assert "counted 30 windows" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(output), brute_force(rows))


def test_an_index_the_disk_cannot_hold_is_refused_in_one_line(tmp_path, rows, small_disk,  # noqa: F811
                                                              capsys):
    data = write_layout(rows, tmp_path, "merged")
    index = small_disk / "index"
    err = cli_error(capsys, ["duplicates", "--data", data, "--index", str(index), "--start",
                             "0", "--stop", "10", "-o", str(tmp_path / "c.parquet")])
    assert f"{ROWS * SEQ_LEN:,} tokens x 8 bytes" in err and "GB free; nothing was written" in err
    assert not index.exists() and os.listdir(small_disk) == []
    assert untouched(tmp_path, tmp_path / "c.parquet")


def test_the_python_api_counts_as_the_cli(tmp_path, rows):
    data = write_layout(rows, tmp_path, "merged")
    path = count_duplicates(Counting(data=data, index=str(tmp_path / "i"),
                                     output=str(tmp_path / "c.parquet"), start=0, stop=ROWS,
                                     progress=False))
    pd.testing.assert_frame_equal(pd.read_parquet(path), brute_force(rows))


# -- the two definitions: stream (any alignment) and rows (semantic-memorization's) ---------------

def brute_force_rows(rows: np.ndarray, counted: int | None = None,
                     cont_len: int = 32) -> pd.DataFrame:
    """Every row's window [32, 32 + cont_len) counted as semantic-memorization did: the windows
    of each row of [0, counted) at offsets 0 … seq_len - cont_len - 1 (its `range(2049 - 32)`),
    by a loop over rows; token frequencies over those rows by np.bincount."""
    inside = rows[:counted]
    seen = Counter()
    for row in inside:
        seen.update(bytes(row[j:j + cont_len]) for j in range(row.size - cont_len))
    windows = rows[:counted, 32:32 + cont_len]
    freqs = np.bincount(inside.reshape(-1))[windows]
    return pd.DataFrame({"index": np.arange(len(windows), dtype=np.int64),
                         "count": np.array([seen[bytes(w)] for w in windows], dtype=np.int64),
                         "freq_min": freqs.min(axis=1).astype(np.int64),
                         "freq_median": np.median(freqs, axis=1),
                         "freq_max": freqs.max(axis=1).astype(np.int64)})


def definitions_planted() -> np.ndarray:
    """`planted_rows` (windows across rows and shards, runs of one token) and, of rows 0..2's
    windows, copies where the definitions differ: at offset seq_len - 32 (the last window of a
    row, not counted by rows), at offset seq_len - 33 (the last counted) and across a row end."""
    data = planted_rows(seed=3)
    last = SEQ_LEN - 32
    stream = data.reshape(-1)
    for k, place in enumerate([60 * SEQ_LEN + last, 61 * SEQ_LEN + last - 1, 62 * SEQ_LEN + 80,
                               64 * SEQ_LEN + last - 1, 65 * SEQ_LEN + last]):
        stream[place:place + 32] = data[k % 3, 32:64]
    return data


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    return definitions_planted()


@pytest.mark.parametrize("layout", ["merged", "sharded"])
def test_both_definitions_equal_their_brute_force_on_every_sequence(tmp_path, planted, layout):
    data = write_layout(planted, tmp_path, layout)
    tables = {definition: counted(data, tmp_path / f"index-{definition}",
                                  tmp_path / f"{definition}.parquet", "--start", "0",
                                  "--stop", str(ROWS), "--definition", definition)
              for definition in ("stream", "rows")}
    pd.testing.assert_frame_equal(tables["stream"], brute_force(planted))
    rows = brute_force_rows(planted)
    pd.testing.assert_frame_equal(tables["rows"], rows)
    # The plants make the definitions differ: rows 0..2's windows have 1, 2 and 3 copies that
    # only the stream counts (at offset 68, across a row end); the rows of one token too.
    stream = brute_force(planted)["count"]
    assert (stream - rows["count"])[:3].tolist() == [1, 2, 3]
    assert rows["count"][1] >= 3 and (stream > rows["count"]).sum() >= 5
    for definition in ("stream", "rows"):
        assert read_duplicates(str(tmp_path / f"{definition}.parquet")).definition == definition
    assert all(not p["tokens"].startswith("/") for p in plan_index(
        open_dataset(data), 32, "rows")["parts"])  # rows index marked copies, never the data


def test_rows_counts_over_its_rows_only(tmp_path, planted, monkeypatch, capsys):
    # semantic-memorization's rows [0, 146,432,000), here a bound inside the data.
    monkeypatch.setattr("vmem.duplicates.ROWS_COUNTED", 200)
    data = write_layout(planted, tmp_path, "sharded")
    table = counted(data, tmp_path / "index", tmp_path / "rows.parquet", "--start", "0",
                    "--stop", "200", "--definition", "rows")
    pd.testing.assert_frame_equal(table, brute_force_rows(planted, counted=200))
    assert len(plan_index(open_dataset(data), 32, "rows")["parts"]) == -(-200 * SEQ_LEN //
                                                                           SHARD_TOKENS)
    err = cli_error(capsys, ["duplicates", "--data", data, "--index", str(tmp_path / "index"),
                             "--start", "190", "--stop", "201", "--definition", "rows", "-o",
                             str(tmp_path / "more.parquet")])
    assert "--definition rows: counts over rows [0, 200); the range ends at 201" in err
    assert untouched(tmp_path, tmp_path / "more.parquet")


def test_definitions_never_share_an_index_and_rows_refuses_what_it_cannot_count(
        tmp_path, planted, capsys):
    data = write_layout(planted, tmp_path, "merged")
    index, output = tmp_path / "index", tmp_path / "counts.parquet"
    counted(data, index, tmp_path / "stream.parquet", "--start", "0", "--stop", "3")
    args = ["duplicates", "--data", data, "--index", str(index), "--start", "0", "--stop", "3",
            "-o", str(output), "--no-progress"]
    err = cli_error(capsys, [*args, "--definition", "rows"])
    assert ("built for --definition stream; --definition rows needs an index of its own"
            in err)
    # An index and a table written before there were two definitions counted the stream.
    manifest = json.loads((index / "manifest.json").read_text())
    del manifest["definition"]
    (index / "manifest.json").write_text(json.dumps(manifest))
    table = pq.read_table(tmp_path / "stream.parquet")
    settings = json.loads(table.schema.metadata[METADATA_KEY])
    del settings["definition"]
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(settings)}),
                   tmp_path / "stream.parquet")
    assert read_duplicates(str(tmp_path / "stream.parquet")).definition == "stream"
    assert main([*args[:-3], "-o", str(tmp_path / "stream.parquet"), "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert "--definition rows needs an index of its own" in cli_error(
        capsys, [*args, "--definition", "rows"])
    counted(data, tmp_path / "rows-index", tmp_path / "rows.parquet", "--start", "0", "--stop",
            "3", "--definition", "rows")
    err = cli_error(capsys, [*args[:4], str(tmp_path / "rows-index"), *args[5:]])
    assert "built for --definition rows; --definition stream needs an index of its own" in err
    # The continuation at offset seq_len - 32: the last window of a row, which rows never counts.
    err = cli_error(capsys, [*args[:4], str(tmp_path / "rows-index"), *args[5:],
                             "--definition", "rows", "--prompt-len", str(SEQ_LEN - 32)])
    assert ("--definition rows: counts windows at offsets 0 … 67 of a row; the continuation "
            "starts at 68" in err)
    assert untouched(tmp_path, output)
    # The separator (the type's largest id) in the data: counted as any id outside the windows
    # counted; a window that holds it is refused.
    marked = planted.copy()
    marked[[1, 4, 7, 99], [40, 6, 99, 10]] = 2**16 - 1
    other = tmp_path / "other"
    other.mkdir()
    data = write_layout(marked, other, "merged")
    table = counted(data, tmp_path / "i3", tmp_path / "marked.parquet", "--start", "2",
                    "--stop", str(ROWS), "--definition", "rows")
    pd.testing.assert_frame_equal(table, brute_force_rows(marked)[2:].reset_index(drop=True))
    err = cli_error(capsys, ["duplicates", "--data", data, "--index", str(tmp_path / "i3"),
                             "--start", "0", "--stop", str(ROWS), "--definition", "rows",
                             "-o", str(output), "--no-progress"])
    assert ("--definition rows: the window of sequence 1 holds token id 65535, which the rows "
            "index marks row ends with; count it with --definition stream" in err)
    assert not output.exists()


def test_the_report_names_the_definition(tmp_path, planted):
    data = write_layout(planted, tmp_path, "merged")
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs, "run", model="EleutherAI/pythia-70m", step=143_000, start=0, stop=ROWS,
              memorized=[0, 1, 2])
    counts = tmp_path / "rows.parquet"
    counted(data, tmp_path / "index", counts, "--start", "0", "--stop", str(ROWS),
            "--definition", "rows")
    assert main(["report", str(runs), "-o", str(tmp_path / "report"), "--duplicates",
                 str(counts)]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Counted by definition `rows`: windows inside rows at offsets 0" in text
    assert "semantic-memorization's" in text
    pd.DataFrame({"index": [0], "count": [1]}).to_csv(tmp_path / "bare.csv", index=False)
    assert main(["report", str(runs), "-o", str(tmp_path / "report2"), "--duplicates",
                 str(tmp_path / "bare.csv")]) == 0
    assert "The table does not say how it counted" in (tmp_path / "report2" /
                                                      "report.md").read_text()
    # EleutherAI's published counts are semantic-memorization's.
    pd.DataFrame({"sequence_id": [0], "counts": [1]}).to_csv(tmp_path / "eai.csv", index=False)
    assert main(["report", str(runs), "-o", str(tmp_path / "report3"), "--duplicates",
                 str(tmp_path / "eai.csv")]) == 0
    assert "Counted by definition `rows`" in (tmp_path / "report3" / "report.md").read_text()
