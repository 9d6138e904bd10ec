"""Every path to Pythia's published preshuffled data opens the same dataset, and `.npy` files read
back as rows.

Pythia publishes `document-00000-of-00020.bin` … `document-00020-of-00020.bin` and one
`document.idx` in one folder DIR. `DIR`, `DIR/document`, `DIR/document.idx`, any shard and (once
merged) `DIR/document.bin` must all name one dataset: the README's own examples use
`DIR/document.idx`, launch/task.sh `DIR/document`. The layout is written here from the format's
description, not by vmem's writer, so that a reader and writer sharing one mistake cannot pass.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cli import cli_error
from tests.models import NUM_SEQUENCES, SEQ_LEN
from tests.test_slurm import ON_TEST_NODE, REPO, VMEM, job_logs
from vmem.cli import main
from vmem.data import open_dataset
from vmem.errors import VmemError

SHARDS = 21  # document-00000-of-00020.bin … document-00020-of-00020.bin, as Pythia publishes


# --- the published layout, from its description ------------------------------------------------

def index_bytes(num_sequences: int, seq_len: int) -> bytes:
    """A Megatron .idx of uint16 rows: 9-byte magic, uint64 version 1, uint8 dtype code (8 =
    uint16), uint64 N, uint64 M, then N int32 sizes, N int64 byte pointers, M int64 document
    index entries (one document per sequence: 0..N)."""
    n, m = num_sequences, num_sequences + 1
    header = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack(
        "<QQ", n, m)
    sizes = struct.pack(f"<{n}i", *[seq_len] * n)
    pointers = struct.pack(f"<{n}q", *[i * seq_len * 2 for i in range(n)])
    documents = struct.pack(f"<{m}q", *range(m))
    return header + sizes + pointers + documents


def write_published(folder: Path, rows: np.ndarray, shards: int = SHARDS,
                    merged: bool = False) -> list[Path]:
    """`rows` (uint16) as Pythia publishes them in `folder`: `document.idx` and the rows back to
    back, cut byte-wise into `shards` files of equal size (the last one shorter); with `merged`
    also `document.bin`, as unsharding them in place leaves it. Returns the shard paths."""
    folder.mkdir(parents=True, exist_ok=True)
    n, seq_len = rows.shape
    (folder / "document.idx").write_bytes(index_bytes(n, seq_len))
    data = rows.astype("<u2").tobytes()
    size = -(-len(data) // shards)
    size += size % 2  # whole tokens, as Pythia's shards hold
    assert (shards - 1) * size < len(data) < shards * size  # the last one is shorter
    paths = [folder / f"document-{k:05d}-of-{shards - 1:05d}.bin" for k in range(shards)]
    for k, path in enumerate(paths):
        path.write_bytes(data[k * size:(k + 1) * size])
    if merged:
        (folder / "document.bin").write_bytes(data)
    return paths


def path_forms(folder: str, shards: list[str], merged: bool = False) -> list[str]:
    """Every way to name the dataset in `folder` (a local path or an s3:// URL)."""
    forms = [folder, folder + "/", folder + "/document", folder + "/document.idx",
             shards[0], shards[len(shards) // 2], shards[-1]]
    return [*forms, folder + "/document.bin"] if merged else forms


def info(capsys, path: str, *extra: str) -> str:
    capsys.readouterr()
    assert main(["data", "info", path, *extra]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    # 230 rows of 53 tokens (106 bytes) in 21 shards of 1162 bytes: the shards end inside rows.
    return np.random.default_rng(11).integers(0, 50_000, size=(230, 53), dtype=np.uint16)


# --- every form opens the same dataset ---------------------------------------------------------

@pytest.mark.parametrize("merged", [False, True], ids=["sharded", "merged beside shards"])
def test_every_path_form_opens_one_dataset(tmp_path, rows, capsys, merged):
    folder = tmp_path / "pile-deduped"
    shards = write_published(folder, rows, merged=merged)
    forms = path_forms(str(folder), [str(p) for p in shards], merged)
    layout = "merged" if merged else "sharded"
    shown = {form: info(capsys, form) for form in forms}
    expected = shown[str(folder)]
    assert f"layout     {layout}" in expected and "sequences  230" in expected
    assert f"location   {folder / 'document' if merged else folder}\n" in expected
    assert "seq_len    53" in expected and "dtype      uint16" in expected
    assert all(text == expected for text in shown.values()), shown
    for form in forms:
        dataset = open_dataset(form)
        assert (dataset.layout, dataset.num_sequences, dataset.seq_len) == (layout, 230, 53)
        np.testing.assert_array_equal(dataset.read(0, 230), rows)
        for k in range(1, SHARDS):  # the rows on either side of each shard boundary
            row = k * shards[0].stat().st_size // (53 * 2)
            np.testing.assert_array_equal(dataset.read(row - 1, row + 2), rows[row - 1:row + 2])
    dumped = []
    for k, form in enumerate(forms):
        out = tmp_path / f"dump-{k}.npy"
        assert main(["data", "dump", form, "--start", "7", "--stop", "219", "-o", str(out)]) == 0
        dumped.append(out.read_bytes())
    assert len(set(dumped)) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "dump-0.npy"), rows[7:219])


def test_every_path_form_opens_one_dataset_on_s3(tmp_path, rows, capsys, s3_server, s3_client,
                                                  s3_bucket):
    local = tmp_path / "pile-deduped"
    write_published(local, rows)
    for path in local.iterdir():
        s3_client.upload_file(str(path), s3_bucket, f"pythia/pile-deduped/{path.name}")
    folder = f"s3://{s3_bucket}/pythia/pile-deduped"
    shards = [f"{folder}/document-{k:05d}-of-00020.bin" for k in range(SHARDS)]
    forms = path_forms(folder, shards)
    endpoint = ["--s3-endpoint", s3_server]
    shown = {form: info(capsys, form, *endpoint) for form in forms}
    expected = shown[folder]
    assert f"location   {folder}\n" in expected and "layout     sharded (21 shards)" in expected
    assert all(text == expected for text in shown.values()), shown
    for form in forms:
        dataset = open_dataset(form, s3_endpoint=s3_server)
        np.testing.assert_array_equal(dataset.read(0, 230), rows)
        np.testing.assert_array_equal(dataset.read(100, 131), rows[100:131])
    out = tmp_path / "rows.npy"
    assert main(["data", "dump", f"{folder}/document.idx", *endpoint, "--start", "3", "--stop",
                 "200", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), rows[3:200])
    # A prefix with neither its .bin nor its shards, and one with nothing: one line each.
    s3_client.put_object(Bucket=s3_bucket, Key="lone/document.idx",
                         Body=index_bytes(230, 53))
    for path, message in [
        (f"s3://{s3_bucket}/lone/document.idx",
         f"s3://{s3_bucket}/lone/document.bin: not found, nor shards "
         f"document-NNNNN-of-LLLLL.bin beside s3://{s3_bucket}/lone/document.idx"),
        (f"s3://{s3_bucket}/nothing/document", f"s3://{s3_bucket}/nothing/document: no dataset "
         f"found (expected PREFIX.idx beside PREFIX.bin or beside its shards"),
    ]:
        assert cli_error(capsys, ["data", "info", path, *endpoint]).startswith(
            f"vmem: error: {message}")


def test_paths_that_name_no_dataset_say_what_was_expected(tmp_path, rows, capsys):
    folder = tmp_path / "pile"
    shards = write_published(folder, rows)
    # The .idx alone: neither document.bin nor shards beside it.
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "document.idx").write_bytes((folder / "document.idx").read_bytes())
    for form in [lone / "document", lone / "document.idx", lone]:
        err = cli_error(capsys, ["data", "info", str(form)])
        assert err == (f"vmem: error: {lone}/document.bin: not found, nor shards "
                       f"document-NNNNN-of-LLLLL.bin beside {lone}/document.idx (a dataset is "
                       f"PREFIX.idx beside PREFIX.bin or beside its shards)")
    for form in [tmp_path / "nowhere", folder / "other"]:
        assert cli_error(capsys, ["data", "info", str(form)]).startswith(
            f"vmem: error: {form}: no dataset found (expected PREFIX.idx beside PREFIX.bin or "
            f"beside its shards PREFIX-NNNNN-of-LLLLL.bin")
    # Broken shard sets keep their lines, whichever form names them.
    shards[5].unlink()
    for form in [folder, folder / "document", folder / "document.idx", shards[0]]:
        assert cli_error(capsys, ["data", "info", str(form)]) == (
            f"vmem: error: {shards[5]}: missing from the shard set (1 of 21 shards missing)")
    # A document.bin beside the shards is what is read: a partial one is named, with the way out.
    (folder / "document.bin").write_bytes(rows.tobytes()[:1000])
    for form in [folder, folder / "document.idx", shards[0]]:
        err = cli_error(capsys, ["data", "info", str(form)])
        assert err.startswith(f"vmem: error: {folder}/document.bin: 1000 bytes, but "
                              f"{folder}/document.idx describes 230 sequences")
        assert err.endswith("(truncated download?); while document.bin exists it is read "
                            "instead of the shards beside it: complete or remove it")


# --- the commands agree for every form ----------------------------------------------------------

def test_evaluate_spot_and_duplicates_agree_for_every_path_form(tmp_path, capsys, tiny_tokens,
                                                                 tiny_model_dir):
    folder = tmp_path / "pile-deduped"
    shards = write_published(folder, tiny_tokens)
    engine = ["--engine", "hf", "--dtype", "float32"]
    scores, spots, counts, manifests = {}, {}, {}, {}
    # Each kind of form once (the folder, the prefix, its .idx, a shard): the commands are slow.
    forms = [str(folder), f"{folder}/document", f"{folder}/document.idx", str(shards[10])]
    for k, form in enumerate(forms):
        out = tmp_path / f"run-{k}"
        assert main(["evaluate", "--model", tiny_model_dir, "--data", form, *engine,
                     "--start", "0", "--stop", "12", "--chunk-size", "6", "--out", str(out),
                     "--no-progress"]) == 0
        scores[form] = {p.name: p.read_bytes() for p in out.glob("scores-*.csv")}
        manifests[form] = json.loads((out / "manifest.json").read_text())["settings"]["data"]
        capsys.readouterr()
        assert main(["spot", "--model", tiny_model_dir, "--data", form, *engine,
                     "--index", "0", "--index", "201"]) == 0
        spots[form] = capsys.readouterr().out
        # One index for all forms: it is refused for another dataset, so this also checks that
        # every form is the same one.
        output = tmp_path / f"counts-{k}.parquet"
        assert main(["duplicates", "--data", form, "--index", str(tmp_path / "index"),
                     "--start", "0", "--stop", "40", "-o", str(output), "--no-progress"]) == 0
        counts[form] = pd.read_parquet(output)
    first = str(folder)
    assert len(scores[first]) == 2 and "sequence 201 (training step 0)" in spots[first]
    assert manifests[first] == {"location": first, "layout": "sharded",
                                "num_sequences": NUM_SEQUENCES, "seq_len": SEQ_LEN,
                                "dtype": "uint16"}
    for form in scores:
        assert scores[form] == scores[first], form  # same names: the same run, resumable
        assert manifests[form] == manifests[first] and spots[form] == spots[first], form
        pd.testing.assert_frame_equal(counts[form], counts[first])
    assert counts[first]["count"].min() >= 1


# --- .npy files -----------------------------------------------------------------------------------

def npy_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


@pytest.mark.parametrize("seq_len", [64, 32, 37])
def test_dump_reads_back_equal(tmp_path, capsys, seq_len):
    # np.save's header is 128 bytes: 64 or 2 x 32 uint16 tokens. Read as a raw .bin (the old
    # way) its size was a whole number of rows and every index shifted by one or two.
    rows = np.random.default_rng(seq_len).integers(0, 50_000, size=(50, seq_len),
                                                   dtype=np.uint16)
    (tmp_path / "rows.bin").write_bytes(rows.tobytes())
    dumped = tmp_path / "dumped.npy"
    assert main(["data", "dump", str(tmp_path / "rows.bin"), "--seq-len", str(seq_len),
                 "--start", "0", "--stop", "50", "-o", str(dumped)]) == 0
    if seq_len != 37:  # where the old bug struck: headerless rows of the whole file, shifted
        offset = npy_data_offset(dumped)
        as_raw = np.fromfile(dumped, dtype=np.uint16).reshape(-1, seq_len)
        assert offset % (seq_len * 2) == 0 and len(as_raw) == 50 + offset // (seq_len * 2)
        np.testing.assert_array_equal(as_raw[offset // (seq_len * 2):], rows)
    for extra in ([], ["--seq-len", str(seq_len)], ["--data-dtype", "uint16"]):
        assert info(capsys, str(dumped), *extra).startswith(
            f"location   {dumped}\nlayout     npy\nsequences  50\nseq_len    {seq_len}\n")
    np.testing.assert_array_equal(open_dataset(dumped).read(0, 50), rows)
    np.testing.assert_array_equal(open_dataset(dumped, seq_len=seq_len).read(0, 50), rows)
    again = tmp_path / "again.npy"
    assert main(["data", "dump", str(dumped), "--start", "1", "--stop", "49", "-o",
                 str(again)]) == 0
    np.testing.assert_array_equal(np.load(again), rows[1:49])
    # Any 2-D C-order integer array numpy saves reads back, in its own dtype and byte order.
    for array in [rows.astype(np.int32), rows.astype(">u2"), rows[:, :5].copy()]:
        np.save(tmp_path / "other.npy", array)
        dataset = open_dataset(tmp_path / "other.npy")
        assert dataset.dtype == array.dtype and dataset.seq_len == array.shape[1]
        np.testing.assert_array_equal(dataset.read(3, 9), array[3:9])


def test_evaluate_and_duplicates_read_a_dumped_npy_like_its_source(tmp_path, tiny_dataset,
                                                                    tiny_model_dir):
    rows = tmp_path / "rows.npy"
    assert main(["data", "dump", tiny_dataset, "--start", "0", "--stop", str(NUM_SEQUENCES),
                 "-o", str(rows)]) == 0
    engine = ["--engine", "hf", "--dtype", "float32"]
    scores, counts = {}, {}
    for k, data in enumerate((tiny_dataset, str(rows))):
        out = tmp_path / f"run-{k}"
        assert main(["evaluate", "--model", tiny_model_dir, "--data", data, *engine, "--start",
                     "0", "--stop", "20", "--chunk-size", "10", "--out", str(out),
                     "--no-progress"]) == 0
        scores[data] = [p.read_bytes() for p in sorted(out.glob("scores-*.csv"))]
        # The .npy's header must not reach the index as tokens (it cannot map the file itself).
        output = tmp_path / f"counts-{k}.parquet"
        assert main(["duplicates", "--data", data, "--index", str(tmp_path / f"index-{k}"),
                     "--start", "0", "--stop", "60", "-o", str(output), "--no-progress"]) == 0
        counts[data] = pd.read_parquet(output)
    assert len(scores[tiny_dataset]) == 2 and scores[str(rows)] == scores[tiny_dataset]
    pd.testing.assert_frame_equal(counts[str(rows)], counts[tiny_dataset])
    assert "part-00000.tokens" in os.listdir(tmp_path / "index-1")
    settings = json.loads((tmp_path / "run-1" / "manifest.json").read_text())["settings"]
    assert settings["data"] == {"location": str(rows), "layout": "npy",
                                "num_sequences": NUM_SEQUENCES, "seq_len": SEQ_LEN,
                                "dtype": "uint16"}


def test_npy_on_s3(tmp_path, s3_server, s3_client, s3_bucket, capsys):
    rows = np.random.default_rng(5).integers(0, 50_000, size=(40, 64), dtype=np.uint16)
    np.save(tmp_path / "rows.npy", rows)
    s3_client.upload_file(str(tmp_path / "rows.npy"), s3_bucket, "dumps/rows.npy")
    url = f"s3://{s3_bucket}/dumps/rows.npy"
    dataset = open_dataset(url, seq_len=64, dtype="uint16", s3_endpoint=s3_server)
    assert (dataset.layout, dataset.num_sequences, dataset.seq_len) == ("npy", 40, 64)
    np.testing.assert_array_equal(dataset.read(0, 40), rows)
    np.testing.assert_array_equal(dataset.read(13, 14), rows[13:14])
    out = tmp_path / "back.npy"
    assert main(["data", "dump", url, "--s3-endpoint", s3_server, "--start", "2", "--stop",
                 "39", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), rows[2:39])
    s3_client.put_object(Bucket=s3_bucket, Key="dumps/short.npy",
                         Body=(tmp_path / "rows.npy").read_bytes()[:-2])
    assert cli_error(capsys, ["data", "info", f"s3://{s3_bucket}/dumps/short.npy",
                              "--s3-endpoint", s3_server]).endswith("(truncated download?)")


def test_bad_npy_files_are_one_line(tmp_path, capsys):
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((4, 6), dtype=np.uint16))
    cases = [
        (np.zeros(10, dtype=np.uint16), r"holds an array of shape \(10,\); expected a non-empty"),
        (np.zeros((2, 3, 4), dtype=np.uint16), r"holds an array of shape \(2, 3, 4\)"),
        (np.zeros((0, 4), dtype=np.uint16), r"holds an array of shape \(0, 4\)"),
        (np.zeros((4, 6), dtype=np.float32), r"holds float32 values; token ids need an integer"),
        (np.asfortranarray(np.zeros((4, 6), dtype=np.uint16)), r"holds a Fortran-order array"),
    ]
    for k, (array, message) in enumerate(cases):
        path = tmp_path / f"bad-{k}.npy"
        np.save(path, array)
        with pytest.raises(VmemError, match=rf"^{path}: {message}"):
            open_dataset(path)
    (tmp_path / "text.npy").write_bytes(b"not numpy at all")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "short.npy").write_bytes(good.read_bytes()[:-1])
    (tmp_path / "long.npy").write_bytes(good.read_bytes() + b"\0\0")
    lines = [
        (["text.npy"], r"text.npy: not a readable .npy file \(the magic string is not correct"),
        (["empty.npy"], r"empty.npy: not a readable .npy file \(0 bytes\)"),
        (["short.npy"], r"short.npy: 175 bytes, but its header describes 4 sequences x 6 tokens "
                        r"x 2 bytes = 48 bytes after a 128-byte header \(truncated download\?\)"),
        (["long.npy"], r"long.npy: 178 bytes, but its header describes"),
        (["missing.npy"], r"missing.npy: not found"),
        (["good.npy", "--seq-len", "5"], r"--seq-len 5: .*good.npy holds rows of 6 tokens"),
        (["good.npy", "--data-dtype", "int32"], r"--data-dtype int32: .*good.npy holds uint16"),
        (["good.npy", "--data-dtype", "float32"], r"--data-dtype float32: token ids need an"),
    ]
    for (name, *extra), message in lines:
        err = cli_error(capsys, ["data", "info", str(tmp_path / name), *extra])
        assert re.search(message, err), err


# --- launch/array.sbatch under Slurm ------------------------------------------------------------

@pytest.mark.slow
def test_array_sbatch_takes_the_published_paths(slurm_cluster, tiny_tokens, tiny_model_dir,
                                                tmp_path):
    # DATA as launch/task.sh documents it (DIR/document) and as the README writes it
    # (DIR/document.idx), against one direct run on the folder: the same score files.
    folder = tmp_path / "pile-deduped"
    write_published(folder, tiny_tokens)
    stop, chunk = 32, 8
    direct = tmp_path / "direct"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    subprocess.run([VMEM, "evaluate", "--model", tiny_model_dir, "--data", str(folder), "--out",
                    str(direct), "--start", "0", "--stop", str(stop), "--engine", "hf",
                    "--dtype", "float32", "--chunk-size", str(chunk), "--no-progress"],
                   env=env, check=True, capture_output=True, timeout=300)
    expected = {p.name: p.read_bytes() for p in direct.glob("scores-*.csv")}
    assert len(expected) == stop // chunk
    jobs = {}
    for name in ("document", "document.idx"):
        out, logs = tmp_path / f"run-{name}", tmp_path / f"logs-{name}"
        logs.mkdir()
        env = {"MODEL": tiny_model_dir, "DATA": str(folder / name), "OUT": str(out),
               "START": "0", "STOP": str(stop),
               "VMEM_ARGS": f"--engine hf --dtype float32 --chunk-size {chunk}",
               "OMP_NUM_THREADS": "1"}
        jobs[name] = slurm_cluster.sbatch("--array=0-1", f"--output={logs}/%A_%a.out",
                                          *ON_TEST_NODE, str(REPO / "launch" / "array.sbatch"),
                                          env=env)
    for name, job in jobs.items():
        states = slurm_cluster.wait(job, timeout=600)
        assert set(states.values()) == {"COMPLETED"}, job_logs(tmp_path / f"logs-{name}")
        out = tmp_path / f"run-{name}"
        assert {p.name: p.read_bytes() for p in out.glob("scores-*.csv")} == expected, name
        assert len(list((out / "tasks").iterdir())) == 2
