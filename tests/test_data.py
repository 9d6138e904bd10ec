"""Local datasets: the writer against the published format, every reader against plain numpy,
the batch iterator, step arithmetic, `vmem data info/dump`, and every bad input."""

from __future__ import annotations

import os
import re
import struct
import threading

import numpy as np
import pytest

from vmem.cli import main
from vmem.data import (
    checkpoint_range,
    iter_batches,
    open_dataset,
    resolve_range,
    step_of,
    step_range,
)
from vmem.errors import VmemError
from vmem.io import mmidx

N, SEQ_LEN = 300, 37  # a row is 74 bytes: shard sizes below are deliberately not multiples
ROW_BYTES = SEQ_LEN * 2


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 50_000, size=(N, SEQ_LEN), dtype=np.uint16)


@pytest.fixture
def merged(tmp_path, rows) -> str:
    prefix = str(tmp_path / "data" / "pile")
    mmidx.write_merged(prefix, rows)  # creates the folder
    return prefix


@pytest.fixture
def sharded(tmp_path, rows) -> str:
    folder = tmp_path / "shards"
    mmidx.write_sharded(folder, rows, shard_bytes=1001)
    return str(folder)


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def dump(*argv: str) -> int:
    return main(["data", "dump", *argv])


# --- the writer produces the published format -------------------------------------------------

def test_merged_index_follows_the_published_layout(merged, rows):
    idx = open(merged + ".idx", "rb").read()
    magic, version, code, n, m = struct.unpack_from("<9sQBQQ", idx, 0)
    assert (magic, version, code, n) == (b"MMIDIDX\x00\x00", 1, 8, N)  # 8 = uint16
    sizes = np.frombuffer(idx, "<i4", count=N, offset=34)
    pointers = np.frombuffer(idx, "<i8", count=N, offset=34 + 4 * N)
    assert (sizes == SEQ_LEN).all()
    assert (pointers == np.arange(N) * ROW_BYTES).all()
    assert len(idx) == 34 + 12 * N + 8 * m
    assert open(merged + ".bin", "rb").read() == rows.tobytes()
    assert sorted(os.listdir(os.path.dirname(merged))) == ["pile.bin", "pile.idx"]


def test_shards_are_byte_pieces_named_by_the_last_shard_number(sharded, rows):
    total = N * ROW_BYTES  # 22200 bytes in shards of 1001: 22 full ones and one of 178
    last = total // 1001
    names = sorted(n for n in os.listdir(sharded) if n.endswith(".bin"))
    assert names == [f"document-{k:05d}-of-{last:05d}.bin" for k in range(last + 1)]
    assert sorted(os.listdir(sharded)) == sorted([*names, "document.idx"])  # no temp files left
    sizes = [os.path.getsize(os.path.join(sharded, n)) for n in names]
    assert sizes[:-1] == [1001] * last and sizes[-1] == total - 1001 * last
    joined = b"".join(open(os.path.join(sharded, n), "rb").read() for n in names)
    assert joined == rows.tobytes()


# --- every reader equals numpy -----------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".bin", ".idx"])
def test_merged_reads(merged, rows, suffix):
    dataset = open_dataset(merged + suffix)
    assert (dataset.layout, dataset.num_sequences, dataset.seq_len) == ("merged", N, SEQ_LEN)
    assert dataset.dtype == np.uint16 and dataset.location == merged
    assert dataset.files == [merged + ".idx", merged + ".bin"]
    for start, stop in [(0, N), (0, 1), (N - 1, N), (17, 211), (5, 5)]:
        got = dataset.read(start, stop)
        assert got.shape == (stop - start, SEQ_LEN) and got.dtype == np.uint16
        np.testing.assert_array_equal(got, rows[start:stop])


def test_merged_folder_with_one_index(merged, rows):
    np.testing.assert_array_equal(open_dataset(os.path.dirname(merged)).read(0, N), rows)


@pytest.mark.parametrize("shard_bytes, n", [
    (1001, N), (7 * ROW_BYTES, N), (N * ROW_BYTES, N),
    (40, 60),  # a row spans up to three shards
])
def test_sharded_reads_across_every_boundary(tmp_path, rows, shard_bytes, n):
    rows = rows[:n]
    folder = tmp_path / "s"
    paths = mmidx.write_sharded(folder, rows, shard_bytes=shard_bytes)
    for path in [str(folder), paths[len(paths) // 2], paths[-1]]:
        dataset = open_dataset(path)
        assert (dataset.layout, dataset.location, dataset.num_sequences) == (
            "sharded", str(folder), n)
        assert dataset.files == [str(folder / "document.idx"), *paths]
        np.testing.assert_array_equal(dataset.read(0, n), rows)
    for k in range(1, len(paths)):  # the rows around each shard boundary
        row = k * shard_bytes // ROW_BYTES
        start, stop = max(0, row - 2), min(n, row + 2)
        np.testing.assert_array_equal(dataset.read(start, stop), rows[start:stop])


def test_raw_reads(tmp_path, rows):
    path = tmp_path / "raw.bin"
    rows.tofile(path)
    dataset = open_dataset(path, seq_len=SEQ_LEN)
    assert (dataset.layout, dataset.num_sequences, dataset.dtype) == ("raw", N, np.uint16)
    np.testing.assert_array_equal(dataset.read(3, 250), rows[3:250])
    wide = rows.astype(np.int32)
    wide.tofile(path)
    np.testing.assert_array_equal(
        open_dataset(path, seq_len=SEQ_LEN, dtype="int32").read(0, N), wide)


def test_raw_defaults_to_pythia_rows(tmp_path):
    pythia_rows = np.arange(3 * 2049, dtype=np.uint16).reshape(3, 2049)
    pythia_rows.tofile(tmp_path / "raw.bin")
    dataset = open_dataset(tmp_path / "raw.bin", dtype="uint16")
    assert (dataset.num_sequences, dataset.seq_len) == (3, 2049)
    np.testing.assert_array_equal(dataset.read(0, 3), pythia_rows)


def test_other_token_dtypes_round_trip(tmp_path):
    for dtype, code in [(np.int32, 4), (np.uint8, 1), (np.int64, 5)]:
        rows = np.arange(40, dtype=dtype).reshape(8, 5)
        prefix = str(tmp_path / np.dtype(dtype).name)
        mmidx.write_merged(prefix, rows)
        assert open(prefix + ".idx", "rb").read()[17] == code
        dataset = open_dataset(prefix)
        assert dataset.dtype == dtype
        np.testing.assert_array_equal(dataset.read(0, 8), rows)


# --- batches -----------------------------------------------------------------------------------

def test_batches_cover_the_range_exactly(sharded, rows):
    dataset = open_dataset(sharded)
    batches = list(iter_batches(dataset, 5, 290, rows=64, prompt_len=4, cont_len=6,
                                offset=3))
    assert [len(b.indices) for b in batches] == [64, 64, 64, 64, 29]
    indices = np.concatenate([b.indices for b in batches])
    np.testing.assert_array_equal(indices, np.arange(5, 290))
    for b in batches:
        assert b.indices.dtype == b.prompts.dtype == b.continuations.dtype == np.int64
        np.testing.assert_array_equal(b.prompts, rows[b.indices, 3:7])
        np.testing.assert_array_equal(b.continuations, rows[b.indices, 7:13])


def test_batches_default_to_the_papers_window(tmp_path):
    rows = np.random.default_rng(1).integers(0, 50_000, size=(10, 2049), dtype=np.uint16)
    mmidx.write_merged(tmp_path / "p", rows)
    (batch,) = iter_batches(open_dataset(tmp_path / "p"), 0, 10, rows=10)
    np.testing.assert_array_equal(batch.prompts, rows[:, :32])
    np.testing.assert_array_equal(batch.continuations, rows[:, 32:64])


def test_leaving_early_stops_the_prefetch_thread(merged):
    before = threading.active_count()
    batches = iter_batches(open_dataset(merged), 0, N, rows=1, prompt_len=2, cont_len=2)
    next(batches)
    batches.close()
    assert threading.active_count() == before


def test_window_longer_than_a_sequence_names_the_flags(merged):
    with pytest.raises(VmemError, match=r"--offset 10 \+ --prompt-len 20 \+ --cont-len 8 = 38 "
                                        r"exceeds the 37-token sequences"):
        iter_batches(open_dataset(merged), 0, N, rows=8, prompt_len=20, cont_len=8,
                     offset=10)


# --- steps and ranges --------------------------------------------------------------------------

def test_step_arithmetic():
    assert checkpoint_range(143_000) == (0, 146_432_000)
    assert step_range(3) == (3072, 4096)
    assert step_of(1023) == 0 and step_of(1024) == 1 and step_of(146_431_999) == 142_999
    assert step_range(2, sequences_per_step=10) == (20, 30) and checkpoint_range(2, 10) == (0, 20)
    assert step_of(25, sequences_per_step=10) == 2
    with pytest.raises(VmemError, match="sequences-per-step"):
        step_of(5, sequences_per_step=0)


def test_resolve_range(merged):
    dataset = open_dataset(merged)
    assert resolve_range(dataset, 10, 20) == (10, 20)
    assert resolve_range(dataset, None, None, step=2, sequences_per_step=100) == (200, 300)
    assert resolve_range(dataset, None, None, checkpoint=3, sequences_per_step=100) == (0, 300)
    assert resolve_range(dataset, 50, None, checkpoint=3, sequences_per_step=100) == (50, 300)
    cases = [
        ((10, 10), {}, r"--start 10 --stop 10: selects no sequences"),
        ((20, 10), {}, r"--stop must be greater than --start"),
        ((0, N + 1), {}, rf"outside {merged}, which has sequences \[0, {N}\)"),
        ((-1, 5), {}, r"outside"),
        ((None, 5), {}, rf"give --start and --stop .* \[0, {N}\)"),
        ((5, None), {}, r"give --start and --stop"),
        ((None, None), {"checkpoint": 4, "sequences_per_step": 100},
         r"--checkpoint 4: selects \[0, 400\)"),
        ((None, None), {"step": 3, "sequences_per_step": 100}, r"--step 3: selects \[300, 400\)"),
        ((None, None), {"step": -1}, r"--step -1: training steps are numbered from 0"),
        ((150, None), {"step": 0, "sequences_per_step": 100},
         r"must lie inside the range \[0, 100\)"),
        ((None, None), {"step": 1, "checkpoint": 1}, r"--step or --checkpoint, not both"),
    ]
    for (start, stop), kwargs, message in cases:
        with pytest.raises(VmemError, match=message):
            resolve_range(dataset, start, stop, **kwargs)


# --- the CLI -----------------------------------------------------------------------------------

def test_info(sharded, capsys):
    assert main(["data", "info", sharded, "--sequences-per-step", "64"]) == 0
    out = capsys.readouterr().out
    assert "sharded (23 shards)" in out and "sequences  300" in out and "seq_len    37" in out
    assert "dtype      uint16" in out
    assert "4 full steps of 64 sequences, and 44 sequences of step 4" in out


@pytest.mark.parametrize("source", ["merged", "sharded", "raw"])
def test_dump_writes_exactly_the_rows(request, tmp_path, out_dir, rows, source):
    extra: list[str] = []
    if source == "raw":
        path = str(tmp_path / "raw.bin")
        rows.tofile(path)
        extra = ["--seq-len", str(SEQ_LEN)]
    else:
        path = request.getfixturevalue(source)
    out = out_dir / "rows.npy"
    assert dump(path, *extra, "--start", "13", "--stop", "277", "-o", str(out)) == 0
    got = np.load(out)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, rows[13:277])
    assert dump(path, *extra, "--step", "2", "--sequences-per-step", "100", "-o", str(out)) == 0
    np.testing.assert_array_equal(np.load(out), rows[200:300])
    assert os.listdir(out_dir) == ["rows.npy"]


# --- bad inputs: one clear line, exit 2, nothing written ---------------------------------------

def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _bad_merged(kind: str, prefix: str) -> str:
    """Spoil a good merged dataset; return the message expected (a regex)."""
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    if kind == "missing idx":
        os.unlink(idx)
        return rf"{idx}: not found"
    if kind == "missing bin":
        os.unlink(bin_)
        return rf"{bin_}: not found"
    if kind == "magic":
        _patch(idx, 0, b"NOTANIDX!")
        return rf"{idx}: not an mmap indexed dataset index"
    if kind == "version":
        _patch(idx, 9, struct.pack("<Q", 2))
        return rf"{idx}: unsupported index version 2 \(expected 1\)"
    if kind == "dtype code":
        _patch(idx, 17, bytes([9]))
        return rf"{idx}: unknown dtype code 9"
    if kind == "sizes":
        _patch(idx, 34 + 4 * 123, struct.pack("<i", 36))
        return rf"{idx}: sequence sizes are not all equal \(sequence 123 has 36 tokens"
    if kind == "pointers":
        _patch(idx, 34 + 4 * N + 8 * 200, struct.pack("<q", 200 * ROW_BYTES + 2))
        return rf"{idx}: sequence pointers are not contiguous \(sequence 200 starts at byte"
    if kind == "truncated idx":
        os.truncate(idx, 34 + 12 * N - 5)
        return rf"{idx}: .* needs .* \(truncated download\?\)"
    if kind == "truncated bin":
        os.truncate(bin_, N * ROW_BYTES - 100)
        return rf"{bin_}: {N * ROW_BYTES - 100} bytes, but {idx} describes .*truncated download"
    raise AssertionError(kind)


BAD_MERGED = ["missing idx", "missing bin", "magic", "version", "dtype code", "sizes", "pointers",
              "truncated idx", "truncated bin"]


@pytest.mark.parametrize("kind", BAD_MERGED)
def test_bad_merged_dataset(merged, out_dir, capsys, kind):
    message = _bad_merged(kind, merged)
    out = out_dir / "rows.npy"
    assert dump(merged, "--start", "0", "--stop", "5", "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vmem: error: ")
    assert re.search(message, err), err
    assert os.listdir(out_dir) == []


def _bad_shards(kind: str, folder: str) -> str:
    names = sorted(n for n in os.listdir(folder) if n.endswith(".bin"))
    if kind == "missing shard":
        os.unlink(os.path.join(folder, names[7]))
        return rf"{folder}/{names[7]}: missing from the shard set \(1 of {len(names)}"
    if kind == "missing idx":
        os.unlink(os.path.join(folder, "document.idx"))
        return rf"{folder}/document.idx: not found"
    if kind == "short middle shard":
        os.truncate(os.path.join(folder, names[4]), 1000)
        return rf"{folder}/{names[4]}: 1000 bytes, but {names[0]} has 1001"
    if kind == "short last shard":
        os.truncate(os.path.join(folder, names[-1]), 10)
        return rf"{folder}/{names[-1]}: 10 bytes, expected 178 .*truncated download"
    if kind == "bad header":
        _patch(os.path.join(folder, "document.idx"), 0, b"XX")
        return rf"{folder}/document.idx: not an mmap indexed dataset index"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing shard", "missing idx", "short middle shard",
                                  "short last shard", "bad header"])
def test_bad_shard_set(sharded, out_dir, capsys, kind):
    message = _bad_shards(kind, sharded)
    shard = os.path.join(sharded, "document-00001-of-00022.bin")
    for path in [sharded, shard] if kind != "missing shard" else [sharded]:
        assert dump(path, "--start", "0", "--stop", "5", "-o", str(out_dir / "x.npy")) == 2
        assert re.search(message, capsys.readouterr().err)
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("argv, message", [
    (["--start", "0", "--stop", "301"], r"--start 0 --stop 301: selects \[0, 301\), outside"),
    (["--start", "-3", "--stop", "4"], r"outside"),
    (["--start", "9", "--stop", "9"], r"selects no sequences"),
    (["--start", "9", "--stop", "2"], r"--stop must be greater than --start"),
    (["--start", "9"], r"give --start and --stop .* \[0, 300\)"),
    (["--step", "3"], r"--step 3: selects \[3072, 4096\), outside .* \[0, 300\)"),
    (["--start", "0", "--stop", "1", "--sequences-per-step", "0", "--step", "0"],
     r"--sequences-per-step 0"),
    # --batch-size was an alias of --sequences-per-step that users read as --chunk-size.
    (["--step", "2", "--batch-size", "16"],
     r"--batch-size: .* --sequences-per-step .* --chunk-size"),
])
def test_bad_range(merged, out_dir, capsys, argv, message):
    assert dump(merged, *argv, "-o", str(out_dir / "x.npy")) == 2
    assert re.search(message, capsys.readouterr().err)
    assert os.listdir(out_dir) == []


def test_bad_raw_and_paths(tmp_path, out_dir, capsys):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 100)
    cases = [
        ([str(raw), "--seq-len", "7"], rf"{raw}: 100 bytes is not a whole number of rows of 7"),
        ([str(raw), "--seq-len", "0"], r"--seq-len 0: must be a positive"),
        ([str(raw), "--data-dtype", "float32"], r"--data-dtype float32: token ids need an int"),
        ([str(raw), "--data-dtype", "nonsense"], r"--data-dtype nonsense: not a numpy dtype"),
        ([str(raw)], rf"{tmp_path}/raw.idx: not found .*give --seq-len"),
        ([str(tmp_path / "nothing.bin"), "--seq-len", "2"], r"nothing.bin: not found"),
        ([str(tmp_path / "nowhere")], rf"{tmp_path}/nowhere: no dataset found"),
    ]
    for argv, message in cases:
        assert dump(*argv, "--start", "0", "--stop", "1", "-o", str(out_dir / "x.npy")) == 2
        assert re.search(message, capsys.readouterr().err)
    assert dump(str(raw), "--seq-len", "2", "--start", "0", "--stop", "1", "-o",
                str(out_dir / "x.txt")) == 2
    assert "expected a local FILE.npy" in capsys.readouterr().err
    assert dump(str(raw), "--seq-len", "2", "--start", "0", "--stop", "1", "-o",
                str(tmp_path / "missing" / "x.npy")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert os.listdir(out_dir) == []
