"""vmem.io.s3 and S3 datasets against a real moto server: exact reads, retries through a proxy that
really fails, missing buckets and keys, IAM-denied access, and `vmem data dump` from S3."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from vmem.cli import main
from vmem.data import iter_batches, open_dataset
from vmem.errors import VmemError
from vmem.io import mmidx, s3
from vmem.io.location import is_s3

N, SEQ_LEN = 200, 41
ROW_BYTES = SEQ_LEN * 2
SHARD_BYTES = 1500  # not a multiple of ROW_BYTES: rows straddle shards


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(s3, "RETRIES", 3)
    monkeypatch.setattr(s3, "BACKOFF_S", 0.001)


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 50_000, size=(N, SEQ_LEN), dtype=np.uint16)


@pytest.fixture
def s3_data(tmp_path, rows, s3_client, s3_bucket) -> str:
    """The rows uploaded with boto3 as merged (`merged/pile`), sharded (`shards/`) and raw
    (`raw/rows.bin`) datasets; returns the bucket's URL."""
    mmidx.write_merged(tmp_path / "pile", rows)
    mmidx.write_sharded(tmp_path / "shards", rows, SHARD_BYTES)
    rows.tofile(tmp_path / "rows.bin")
    for ext in (".bin", ".idx"):
        s3_client.upload_file(str(tmp_path / ("pile" + ext)), s3_bucket, "merged/pile" + ext)
    for name in os.listdir(tmp_path / "shards"):
        s3_client.upload_file(str(tmp_path / "shards" / name), s3_bucket, "shards/" + name)
    s3_client.upload_file(str(tmp_path / "rows.bin"), s3_bucket, "raw/rows.bin")
    return f"s3://{s3_bucket}"


# --- URLs ----------------------------------------------------------------------------------------

def test_parse_s3_url():
    assert s3.parse_s3_url("s3://bucket/a/b.bin") == ("bucket", "a/b.bin")
    assert s3.parse_s3_url("s3://bucket") == ("bucket", "")
    assert s3.parse_s3_url("s3://bucket/") == ("bucket", "")
    for bad in ["s3:/x", "s3://", "s3:///key", "/local/path", "http://bucket/key"]:
        with pytest.raises(VmemError, match=rf"^{re.escape(bad)}: not an S3 URL"):
            s3.parse_s3_url(bad)
    assert is_s3("s3://b/k") and not is_s3("/tmp/s3://x") and not is_s3("data")


# --- the functions, exact ------------------------------------------------------------------------

def test_objects_round_trip(tmp_path, s3_server, s3_bucket):
    client = s3.client(s3_server)
    payload = os.urandom(300_000)
    s3.put_bytes(client, s3_bucket, "a/blob", payload)
    assert s3.get_bytes(client, s3_bucket, "a/blob") == payload
    assert s3.get_range(client, s3_bucket, "a/blob", 1234, 250_000) == payload[1234:250_000]
    assert s3.get_range(client, s3_bucket, "a/blob", 5, 5) == b""
    (tmp_path / "up.txt").write_bytes(b"hello")
    s3.upload_file(client, tmp_path / "up.txt", s3_bucket, "a/sub/up.txt")
    s3.download_file(client, s3_bucket, "a/blob", tmp_path / "down.bin")
    assert (tmp_path / "down.bin").read_bytes() == payload
    assert s3.list_objects(client, s3_bucket, "a/") == {"a/blob": len(payload), "a/sub/up.txt": 5}
    assert s3.list_objects(client, s3_bucket, "a/", recursive=False) == {"a/blob": len(payload)}
    assert sorted(os.listdir(tmp_path)) == ["down.bin", "up.txt"]


def test_transient_failures_are_retried(s3_server, s3_bucket, flaky_s3):
    payload = os.urandom(200_000)
    s3.put_bytes(s3.client(s3_server), s3_bucket, "blob", payload)
    proxy = flaky_s3(["503", "drop", "cut"])
    assert s3.get_range(s3.client(proxy.endpoint), s3_bucket, "blob", 10, 150_000) == (
        payload[10:150_000])
    assert proxy.connections == 4  # three failed tries, then the good one


def test_retries_are_bounded(tmp_path, s3_server, s3_bucket, flaky_s3):
    s3.put_bytes(s3.client(s3_server), s3_bucket, "blob", b"x" * 1000)
    proxy = flaky_s3(["503"] * 10)
    with pytest.raises(VmemError, match=rf"s3://{s3_bucket}/blob: S3 request failed after 4 "):
        s3.get_range(s3.client(proxy.endpoint), s3_bucket, "blob", 0, 10)
    assert proxy.connections == 4
    proxy = flaky_s3(["drop"] * 10)
    with pytest.raises(VmemError, match=rf"s3://{s3_bucket}/blob: S3 connection failed after 4"):
        s3.get_bytes(s3.client(proxy.endpoint), s3_bucket, "blob")
    proxy = flaky_s3(["cut"] * 10)  # the body breaks off while the file is being written
    with pytest.raises(VmemError, match=rf"s3://{s3_bucket}/blob: S3 connection failed after 4"):
        s3.download_file(s3.client(proxy.endpoint), s3_bucket, "blob", tmp_path / "x.bin")
    assert os.listdir(tmp_path) == []


def test_missing_bucket_and_key(s3_server, s3_bucket):
    client = s3.client(s3_server)
    with pytest.raises(VmemError, match=r"^s3://no-such-bucket/k: no such bucket"):
        s3.get_range(client, "no-such-bucket", "k", 0, 10)
    with pytest.raises(VmemError, match=rf"^s3://{s3_bucket}/k: no such object"):
        s3.get_bytes(client, s3_bucket, "k")


def test_access_denied(s3_server, s3_bucket, restricted_s3_user, monkeypatch):
    s3.put_bytes(s3.client(s3_server), s3_bucket, "secret", b"x" * 10)
    key_id, secret = restricted_s3_user({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    client = s3.client(s3_server)
    assert list(s3.list_objects(client, s3_bucket, "")) == ["secret"]  # allowed
    with pytest.raises(VmemError, match=rf"^s3://{s3_bucket}/secret: access denied"):
        s3.get_bytes(client, s3_bucket, "secret")
    with pytest.raises(VmemError, match=rf"^s3://{s3_bucket}/secret: access denied"):
        s3.get_range(client, s3_bucket, "secret", 0, 5)


# --- datasets on S3 ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, layout", [
    ("merged/pile", "merged"), ("merged/pile.bin", "merged"), ("merged/pile.idx", "merged"),
    ("shards", "sharded"), ("shards/", "sharded"),
    ("shards/document-00003-of-00010.bin", "sharded"),
])
def test_s3_datasets_read_exactly(s3_server, s3_data, rows, key, layout):
    dataset = open_dataset(f"{s3_data}/{key}", s3_endpoint=s3_server)
    assert (dataset.layout, dataset.num_sequences, dataset.seq_len) == (layout, N, SEQ_LEN)
    np.testing.assert_array_equal(dataset.read(0, N), rows)
    for start, stop in [(17, 19), (36, 37), (90, 170)]:  # 36/37 straddle shards 1/2
        np.testing.assert_array_equal(dataset.read(start, stop), rows[start:stop])


def test_s3_raw_and_batches(s3_server, s3_data, rows):
    raw = open_dataset(f"{s3_data}/raw/rows.bin", seq_len=SEQ_LEN, s3_endpoint=s3_server)
    assert (raw.layout, raw.num_sequences) == ("raw", N)
    np.testing.assert_array_equal(raw.read(3, 199), rows[3:199])
    sharded = open_dataset(f"{s3_data}/shards", s3_endpoint=s3_server)
    batches = list(iter_batches(sharded, 1, N, rows=30, prompt_len=5, cont_len=7))
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), np.arange(1, N))
    np.testing.assert_array_equal(np.concatenate([b.prompts for b in batches]), rows[1:, :5])
    np.testing.assert_array_equal(np.concatenate([b.continuations for b in batches]),
                                  rows[1:, 5:12])


def test_s3_dataset_through_failing_connections(s3_server, s3_data, rows, flaky_s3):
    # Requests: the listing; the .idx header, first size, sizes, pointers; one GET per shard.
    failures = ["503", "drop", "pass", "pass", "cut", "pass", "503", "pass", "pass", "drop",
                "cut", "pass"]
    proxy = flaky_s3(failures)
    dataset = open_dataset(f"{s3_data}/shards", s3_endpoint=proxy.endpoint)
    np.testing.assert_array_equal(dataset.read(0, N), rows)
    assert proxy.connections == 5 + 11 + 7  # 16 requests, 7 of them tried twice


def test_failure_while_prefetching_reaches_the_consumer(s3_server, s3_data, s3_client):
    dataset = open_dataset(f"{s3_data}/merged/pile", s3_endpoint=s3_server)
    s3_client.delete_object(Bucket=s3_data[5:], Key="merged/pile.bin")
    with pytest.raises(VmemError, match=r"merged/pile.bin: no such object"):
        list(iter_batches(dataset, 0, N, rows=50, prompt_len=4, cont_len=4))


def test_s3_bad_inputs(s3_server, s3_data, s3_client, tmp_path):
    bucket = s3_data[5:]
    idx = (tmp_path / "pile.idx").read_bytes()
    s3_client.put_object(Bucket=bucket, Key="bad/pile.idx", Body=idx[:200] + b"\7" + idx[201:])
    s3_client.put_object(Bucket=bucket, Key="bad/pile.bin", Body=b"\0" * N * ROW_BYTES)
    s3_client.delete_object(Bucket=bucket, Key="shards/document-00004-of-00010.bin")
    cases = [
        ("s3://no-such-bucket/pile", r"^s3://no-such-bucket/: no such bucket"),
        (f"{s3_data}/missing/pile", rf"^{s3_data}/missing/pile: no dataset found"),
        (f"{s3_data}/merged/other.bin", rf"^{s3_data}/merged/other.idx: not found"),
        (f"{s3_data}/bad/pile", rf"^{s3_data}/bad/pile.idx: sequence sizes are not all equal"),
        (f"{s3_data}/shards", rf"^{s3_data}/shards/document-00004-of-00010.bin: missing"),
    ]
    for url, message in cases:
        with pytest.raises(VmemError, match=message):
            open_dataset(url, s3_endpoint=s3_server)


def test_s3_access_denied_dataset(s3_server, s3_data, restricted_s3_user, monkeypatch, tmp_path,
                                  capsys):
    key_id, secret = restricted_s3_user({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["data", "dump", f"{s3_data}/merged/pile", "--s3-endpoint", s3_server,
                 "--start", "0", "--stop", "3", "-o", str(out / "x.npy")]) == 2
    assert f"{s3_data}/merged/pile.idx: access denied" in capsys.readouterr().err
    assert os.listdir(out) == []


@pytest.mark.parametrize("key, extra", [
    ("merged/pile", []), ("shards", []), ("raw/rows.bin", ["--seq-len", str(SEQ_LEN)]),
])
def test_dump_from_s3(s3_server, s3_data, rows, tmp_path, key, extra):
    out = tmp_path / "rows.npy"
    assert main(["data", "dump", f"{s3_data}/{key}", *extra, "--s3-endpoint", s3_server,
                 "--start", "30", "--stop", "170", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), rows[30:170])


def test_dump_failing_midway_leaves_nothing(s3_data, tmp_path, flaky_s3, capsys):
    # The listing and the four .idx reads pass; every try of the first rows fails.
    proxy = flaky_s3(["pass"] * 5 + ["503"] * 10)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["data", "dump", f"{s3_data}/merged/pile", "--s3-endpoint", proxy.endpoint,
                 "--start", "0", "--stop", str(N), "-o", str(out / "rows.npy")]) == 2
    assert f"{s3_data}/merged/pile.bin: S3 request failed after 4 tries" in (
        capsys.readouterr().err)
    assert os.listdir(out) == []
