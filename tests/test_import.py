"""`vmem data import`: every input kind round-trips through `vmem data dump`; text is tokenized and
packed as the test packs it with the tokenizer itself; padding is recorded and refused at evaluate
time; every bad input is one line and leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli import cli_error
from tests.models import EOS_SEQUENCE, MEMORIZED
from tests.test_evaluate import run
from tests.test_failures import small_disk  # noqa: F401 (the tmpfs fixture)
from vmem import corpus
from vmem.cli import main
from vmem.data import check_lengths, open_dataset, resolve_range
from vmem.demo.corpus import EOS_TOKEN, save_tokenizer, train_tokenizer
from vmem.errors import VmemError
from vmem.io import mmidx

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Memorization is measured on sequences the model was trained on.",
    "A short one.",
    "def add(a, b):\n    return a + b\n",
    "Numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25.",
    "Padding is never scored, and the end of text joins documents when they are concatenated.",
    "x",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A byte-level BPE trained here (the `tokenizers` object the test encodes with) and its
    folder (what vmem loads through transformers)."""
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    trained = train_tokenizer(TEXTS * 3, vocab=300)
    save_tokenizer(trained, folder)
    return trained, str(folder)


def import_(*argv: str) -> int:
    return main(["data", "import", *map(str, argv)])


def dumped(prefix: Path, tmp_path: Path) -> np.ndarray:
    n = open_dataset(prefix).num_sequences
    out = tmp_path / "dump.npy"
    assert main(["data", "dump", str(prefix), "--start", "0", "--stop", str(n),
                 "-o", str(out)]) == 0
    return np.load(out)


def manifest(prefix: Path) -> dict:
    return json.loads(Path(str(prefix) + ".manifest.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


ROWS = np.random.default_rng(3).integers(0, 50_000, size=(23, 17))


# --- rows already ---------------------------------------------------------------------------------

def test_npy_rows_round_trip_with_their_checksums(tmp_path):
    source = tmp_path / "rows.npy"
    np.save(source, ROWS)  # int64: stored as uint16, every id fits
    prefix = tmp_path / "out" / "corpus"
    assert import_(source, "-o", prefix, "--sequences-per-step", 4) == 0
    np.testing.assert_array_equal(dumped(prefix, tmp_path), ROWS)
    made = manifest(prefix)
    assert made["sources"] == [{"path": str(source), "bytes": source.stat().st_size,
                                "sha256": sha256(source)}]
    assert (made["packing"], made["seq_len"], made["num_sequences"], made["dtype"],
            made["sequences_per_step"]) == ("rows", 17, 23, "uint16", 4)
    dataset = open_dataset(prefix)
    assert dataset.dtype == np.uint16
    # The recorded batch is the order's: --checkpoint 3 is the rows steps 0..2 trained on.
    assert resolve_range(dataset, None, None, checkpoint=3) == (0, 12)
    assert resolve_range(dataset, None, None, checkpoint=3, sequences_per_step=4) == (0, 12)
    with pytest.raises(VmemError, match="records its training batch, 4 sequences per step"):
        resolve_range(dataset, None, None, checkpoint=3, sequences_per_step=8)


def test_raw_bins_round_trip_one_after_the_other(tmp_path):
    wide = (ROWS + 70_000).astype(np.int32)  # beyond uint16: kept as int32
    wide[:12].tofile(tmp_path / "a.bin")
    wide[12:].tofile(tmp_path / "b.bin")
    prefix = tmp_path / "corpus"
    assert import_(tmp_path / "a.bin", tmp_path / "b.bin", "--seq-len", 17,
                   "--data-dtype", "int32", "-o", prefix) == 0
    np.testing.assert_array_equal(dumped(prefix, tmp_path), wide)
    assert open_dataset(prefix).dtype == np.int32
    assert [s["sha256"] for s in manifest(prefix)["sources"]] == [
        sha256(tmp_path / "a.bin"), sha256(tmp_path / "b.bin")]


# --- token id lists -------------------------------------------------------------------------------

def test_parquet_token_lists_round_trip(tmp_path):
    source = tmp_path / "train.parquet"
    pq.write_table(pa.table({"uid": np.arange(len(ROWS)),
                             "ids": pa.array(ROWS.tolist(), type=pa.list_(pa.int32()))}),
                   source, row_group_size=5)
    prefix = tmp_path / "corpus"
    assert import_(source, "--field", "ids", "-o", prefix) == 0
    np.testing.assert_array_equal(dumped(prefix, tmp_path), ROWS)
    assert manifest(prefix)["field"] == "ids"


def test_jsonl_token_lists_round_trip(tmp_path):
    source = write_jsonl(tmp_path / "train.jsonl", [{"token_ids": r} for r in ROWS.tolist()])
    prefix = tmp_path / "corpus"
    assert import_(source, "-o", prefix) == 0
    np.testing.assert_array_equal(dumped(prefix, tmp_path), ROWS)


def test_ragged_token_lists_are_packed_as_asked(tmp_path):
    docs = [list(range(k, k + n)) for k, n in [(1, 5), (100, 9), (7, 2), (300, 11)]]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"token_ids": d} for d in docs])
    prefix = tmp_path / "corpus"
    assert import_(source, "--packing", "concat", "--seq-len", 6, "--eos-id", 0,
                   "-o", prefix) == 0
    stream = [t for d in docs for t in [*d, 0]]
    n = len(stream) // 6
    expected = np.array(stream[:n * 6]).reshape(n, 6)
    np.testing.assert_array_equal(dumped(prefix, tmp_path), expected)
    assert manifest(prefix)["dropped_tokens"] == len(stream) - n * 6


# --- text with a tokenizer ------------------------------------------------------------------------

def test_text_concatenated_equals_the_tokenizers_own_packing(tmp_path, tokenizer, capsys):
    trained, folder = tokenizer
    source = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in TEXTS])
    prefix = tmp_path / "corpus"
    assert import_(source, "--tokenizer", folder, "--packing", "concat", "--seq-len", 8,
                   "-o", prefix) == 0
    eos = trained.token_to_id(EOS_TOKEN)
    stream = [t for text in TEXTS for t in [*trained.encode(text).ids, eos]]
    n = len(stream) // 8
    np.testing.assert_array_equal(dumped(prefix, tmp_path), np.array(stream[:n * 8]).reshape(n, 8))
    made = manifest(prefix)
    assert (made["tokenizer"], made["eos_id"], made["packing"]) == (folder, eos, "concat")
    if len(stream) % 8:
        assert f"dropped the last {len(stream) % 8} tokens" in capsys.readouterr().out


def test_text_one_per_row_records_lengths_and_padding_is_refused(tmp_path, tokenizer, capsys):
    trained, folder = tokenizer
    source = write_jsonl(tmp_path / "text.jsonl", [{"body": t} for t in TEXTS])
    prefix = tmp_path / "corpus"
    seq_len, pad = 12, 299
    assert import_(source, "--tokenizer", folder, "--field", "body", "--packing", "document",
                   "--seq-len", seq_len, "--pad-id", pad, "-o", prefix) == 0
    ids = [trained.encode(text).ids[:seq_len] for text in TEXTS]
    expected = np.array([[*d, *[pad] * (seq_len - len(d))] for d in ids])
    np.testing.assert_array_equal(dumped(prefix, tmp_path), expected)
    lengths = np.load(str(prefix) + ".lengths.npy")
    np.testing.assert_array_equal(lengths, [len(d) for d in ids])
    assert manifest(prefix)["truncated_documents"] == sum(
        len(trained.encode(t).ids) > seq_len for t in TEXTS)

    # Evaluating a window that reaches into a row's padding is refused before any model loads.
    dataset = open_dataset(prefix)
    short = int(np.argmin(lengths))
    err = cli_error(capsys, ["evaluate", "--model", "no-such-model", "--data", str(prefix),
                             "--start", "0", "--stop", str(len(TEXTS)), "--prompt-len", "4",
                             "--cont-len", "4", "--out", str(tmp_path / "run")])
    assert f"row {short} has {lengths[short]}" in err and "padding is never scored" in err
    assert not (tmp_path / "run").exists()
    # So do a spot check of that row and counting its windows' duplicates.
    err = cli_error(capsys, ["spot", "--model", "no-such-model", "--data", str(prefix),
                             "--index", str(short), "--prompt-len", "4", "--cont-len", "4"])
    assert f"row {short} has {lengths[short]}" in err
    err = cli_error(capsys, ["duplicates", "--data", str(prefix), "--start", "0", "--stop",
                             str(len(TEXTS)), "--prompt-len", "4", "--cont-len", "4", "--index",
                             str(tmp_path / "index"), "-o", str(tmp_path / "dup.parquet")])
    assert f"row {short} has {lengths[short]}" in err
    assert not (tmp_path / "dup.parquet").exists() and not (tmp_path / "index").exists()
    full = np.flatnonzero(lengths == seq_len)
    check_lengths(dataset, int(full[0]), int(full[0]) + 1, seq_len)  # a full row is fine
    with pytest.raises(VmemError):
        check_lengths(dataset, int(full[0]), int(full[0]) + 1, seq_len + 1)


def test_a_later_import_without_padding_drops_the_old_lengths(tmp_path, tokenizer):
    _, folder = tokenizer
    source = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in TEXTS])
    prefix = tmp_path / "corpus"
    assert import_(source, "--tokenizer", folder, "--packing", "document", "--seq-len", 8,
                   "--pad-id", 0, "-o", prefix) == 0
    assert os.path.exists(str(prefix) + ".lengths.npy")
    assert import_(source, "--tokenizer", folder, "--packing", "concat", "--seq-len", 8,
                   "-o", prefix) == 0
    assert not os.path.exists(str(prefix) + ".lengths.npy")
    assert manifest(prefix)["lengths"] is None


# --- bad inputs: one line, nothing written --------------------------------------------------------

def bad_inputs(tmp_path: Path, folder: str) -> list[tuple[list, str]]:
    ragged = write_jsonl(tmp_path / "ragged.jsonl", [{"token_ids": [1, 2, 3]},
                                                     {"token_ids": [4, 5]}])
    too_big = write_jsonl(tmp_path / "big.jsonl", [{"token_ids": [1, 300]}])
    negative = write_jsonl(tmp_path / "neg.jsonl", [{"token_ids": [1, -2]}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "hello"}])
    no_tokenizer = tmp_path / "not-a-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    float_rows = tmp_path / "floats.npy"
    np.save(float_rows, np.ones((2, 3)))
    float_lists = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"token_ids": [[1.5, 2.0]]}), float_lists)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"token_ids": [1, 2]}\n{"token_ids": [1,\n')
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    return [
        ([ragged], "ragged rows (row 1 has 2 tokens, row 0 has 3)"),
        ([too_big, "--tokenizer", folder], "token id 300 lies outside the vocabulary"),
        ([negative], "token id -2 lies outside the token dtypes"),
        ([empty], "no tokens to import (empty input)"),
        ([text, "--tokenizer", no_tokenizer], "cannot be loaded as a tokenizer"),
        ([text], "is text; give the --tokenizer"),
        ([text, "--tokenizer", folder, "--packing", "document", "--seq-len", 4],
         "give --pad-id"),
        ([ragged, "--packing", "concat"], "give --seq-len"),
        ([ragged, "--packing", "concat", "--seq-len", 2], "give --eos-id"),
        ([float_rows], "token ids need an integer dtype"),
        ([tmp_path / "notes.txt"], "expected a .npy or .bin"),
        ([float_lists], "expected lists of integer token ids"),
        ([broken], "broken.jsonl:2: not a JSON line"),
        ([latin1, "--tokenizer", folder], "not UTF-8 text"),
        ([float_rows, ragged], "mixes rows (.npy, .bin) with documents"),
    ]


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, tokenizer, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    out = tmp_path / "out"
    out.mkdir()
    for argv, expected in bad_inputs(tmp_path, tokenizer[1]):
        err = cli_error(capsys, ["data", "import", *map(str, argv), "-o", str(out / "corpus")])
        assert expected in err, (argv, err)
        assert os.listdir(out) == [], argv
    good = write_jsonl(tmp_path / "good.jsonl", [{"token_ids": [1, 2]}])
    for prefix in (f"{out}/", f"{out}/corpus.bin"):
        assert "expected a local prefix" in cli_error(capsys, ["data", "import", str(good),
                                                               "-o", prefix])
    assert os.listdir(out) == []


def test_a_corpus_the_disk_cannot_hold_is_one_line_and_leaves_nothing(tmp_path, capsys,
                                                                     small_disk):  # noqa: F811
    rows = np.random.default_rng(4).integers(0, 50_000, size=(40, 500))  # 80 KB as int32
    source = write_jsonl(tmp_path / "rows.jsonl", [{"token_ids": r} for r in rows.tolist()])
    err = cli_error(capsys, ["data", "import", str(source), "-o", str(small_disk / "new" / "c")])
    assert "no space left on its disk" in err and "nothing was written" in err
    assert os.listdir(small_disk) == []


# --- a corpus larger than a chunk -----------------------------------------------------------------

@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks far smaller than the corpora below, so that every chunk boundary (rows read,
    documents gathered, texts tokenized, bytes read, ids narrowed, index entries) falls inside
    documents and rows."""
    for name, value in (("CHUNK_TOKENS", 16), ("CHUNK_DOCUMENTS", 3), ("TOKENIZE_BATCH", 2),
                        ("READ_BYTES", 10)):
        monkeypatch.setattr(corpus, name, value)
    monkeypatch.setattr(mmidx, "ENTRIES_PER_BLOCK", 4)


def documents(high: int, count: int = 19) -> list[list[int]]:
    """Token id lists of 0 to 15 tokens (a row is cut at 7 below: some are longer)."""
    rng = np.random.default_rng(high)
    return [rng.integers(1, high, size=rng.integers(0, 16)).tolist() for _ in range(count)]


def packed(docs: list[list[int]], packing: str, seq_len: int, eos: int | None,
           pad: int | None) -> tuple[np.ndarray, list[int] | None, int, int]:
    """(rows, true lengths, dropped tokens, cut documents) as the training packs them."""
    if packing == "concat":
        stream = [t for d in docs for t in [*d, eos]]
        n = len(stream) // seq_len
        rows = np.array(stream[:n * seq_len]).reshape(n, seq_len)
        return rows, None, len(stream) - n * seq_len, 0
    ends = [[*d, eos] if eos is not None else d for d in docs]
    rows = np.array([[*d[:seq_len], *[pad] * (seq_len - len(d[:seq_len]))] for d in ends])
    return rows, [min(len(d), seq_len) for d in ends], 0, sum(len(d) > seq_len for d in ends)


def the_dataset(prefix: Path, tmp_path: Path, rows: np.ndarray) -> dict:
    """The dataset at `prefix` holds `rows` in the narrowest dtype they fit; its manifest."""
    dtype = np.uint16 if rows.max() <= np.iinfo(np.uint16).max else np.int32
    assert Path(str(prefix) + ".bin").read_bytes() == rows.astype(dtype).tobytes()
    assert open_dataset(prefix).dtype == dtype
    np.testing.assert_array_equal(dumped(prefix, tmp_path), rows)
    made = manifest(prefix)
    assert (made["seq_len"], made["num_sequences"], made["dtype"]) == (
        rows.shape[1], rows.shape[0], np.dtype(dtype).name)
    return made


@pytest.mark.parametrize("high", [300, 70_000])  # narrowed to uint16, or kept as int32
@pytest.mark.parametrize("packing", ["concat", "document"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_token_lists_larger_than_a_chunk(tmp_path, small_chunks, high, packing, suffix):
    docs = documents(high)
    halves = docs[:11], docs[11:]
    sources = [tmp_path / f"part-{k}{suffix}" for k in range(2)]
    for source, half in zip(sources, halves, strict=True):
        if suffix == ".jsonl":
            write_jsonl(source, [{"token_ids": d} for d in half])
        else:
            pq.write_table(pa.table({"token_ids": pa.array(half, type=pa.list_(pa.int64()))}),
                           source, row_group_size=4)
    prefix = tmp_path / "corpus"
    assert import_(*sources, "--packing", packing, "--seq-len", 7, "--eos-id", 5, "--pad-id", 0,
                   "-o", prefix) == 0
    rows, lengths, dropped, cut = packed(docs, packing, 7, 5, 0)  # --eos-id ends each document
    made = the_dataset(prefix, tmp_path, rows)
    assert (made["dropped_tokens"], made["truncated_documents"]) == (dropped, cut)
    assert [s["sha256"] for s in made["sources"]] == [sha256(s) for s in sources]
    if lengths is not None:
        np.testing.assert_array_equal(np.load(str(prefix) + ".lengths.npy"), lengths)


def test_equal_token_lists_larger_than_a_chunk(tmp_path, small_chunks):
    rows = np.random.default_rng(5).integers(0, 40_000, size=(13, 7))
    source = write_jsonl(tmp_path / "rows.jsonl", [{"token_ids": r} for r in rows.tolist()])
    prefix = tmp_path / "corpus"
    assert import_(source, "-o", prefix) == 0
    the_dataset(prefix, tmp_path, rows)
    ragged = write_jsonl(tmp_path / "ragged.jsonl",
                         [{"token_ids": r} for r in [*rows.tolist(), [1, 2]]])
    with pytest.raises(VmemError, match="row 13 has 2 tokens, row 0 has 7"):
        corpus.import_corpus(corpus.Import([str(ragged)], str(tmp_path / "other")))
    assert sorted(os.listdir(tmp_path)) == ["corpus.bin", "corpus.idx", "corpus.manifest.json",
                                            "dump.npy", "ragged.jsonl", "rows.jsonl"]


@pytest.mark.parametrize("packing", ["concat", "document"])
def test_text_larger_than_a_chunk(tmp_path, small_chunks, tokenizer, packing):
    trained, folder = tokenizer
    texts = TEXTS * 3
    source = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    prefix = tmp_path / "corpus"
    assert import_(source, "--tokenizer", folder, "--packing", packing, "--seq-len", 7,
                   "--pad-id", 1, "-o", prefix) == 0
    eos = trained.token_to_id(EOS_TOKEN) if packing == "concat" else None
    rows, lengths, dropped, cut = packed([trained.encode(t).ids for t in texts], packing, 7, eos, 1)
    made = the_dataset(prefix, tmp_path, rows)
    assert (made["dropped_tokens"], made["truncated_documents"]) == (dropped, cut)
    if lengths is not None:
        np.testing.assert_array_equal(np.load(str(prefix) + ".lengths.npy"), lengths)


@pytest.mark.parametrize("high", [300, 70_000])
def test_rows_larger_than_a_chunk(tmp_path, small_chunks, high):
    """A .npy, a raw .bin and Pythia's shards (rows straddling shards) one after the other; each
    file's checksum is the one of its bytes."""
    rows = np.random.default_rng(high).integers(0, high, size=(31, 7))
    np.save(tmp_path / "rows.npy", rows[:9])
    rows[9:17].astype(np.int32).tofile(tmp_path / "raw.bin")
    shards = mmidx.write_sharded(tmp_path / "shards", rows[17:].astype(np.int32), shard_bytes=50)
    sources = [tmp_path / "rows.npy", tmp_path / "shards" / "document.idx"]
    prefix = tmp_path / "corpus"
    assert import_(sources[0], "-o", prefix) == 0  # one source alone reads as it is
    the_dataset(prefix, tmp_path, rows[:9])
    assert import_(tmp_path / "raw.bin", "--seq-len", 7, "--data-dtype", "int32", "-o",
                   tmp_path / "raw") == 0
    the_dataset(tmp_path / "raw", tmp_path, rows[9:17])
    assert import_(*sources, "-o", prefix) == 0
    made = the_dataset(prefix, tmp_path, np.concatenate([rows[:9], rows[17:]]))
    files = [sources[0], sources[1], *map(Path, shards)]
    assert made["sources"] == [{"path": str(f), "bytes": f.stat().st_size, "sha256": sha256(f)}
                               for f in files]


# --- sources on S3 --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rows.npy", "merged.idx", "docs.parquet", "docs.jsonl"])
def test_a_source_on_s3_imports_as_the_local_file_does(tmp_path, monkeypatch, small_chunks,
                                                        s3_server, s3_client, s3_bucket, name):
    monkeypatch.setattr(corpus, "READ_BYTES", 256)  # several ranged reads, not hundreds
    docs = documents(70_000, count=12)
    local = tmp_path / name
    rows = np.array([(d * 16)[:9] for d in docs if d])
    packing = []
    if name == "rows.npy":
        np.save(local, rows)
    elif name == "merged.idx":  # the .bin is hashed from the rows read, the .idx read whole
        mmidx.write_merged(tmp_path / "merged", rows.astype(np.int32))
    elif name == "docs.parquet":
        pq.write_table(pa.table({"token_ids": pa.array(docs, type=pa.list_(pa.int64()))}), local,
                       row_group_size=5)
        packing = ["--packing", "concat", "--seq-len", 6, "--eos-id", 0]
    else:
        write_jsonl(local, [{"token_ids": d} for d in docs])
        packing = ["--packing", "document", "--seq-len", 6, "--pad-id", 0]
    files = [local, *([tmp_path / "merged.bin"] if name == "merged.idx" else [])]
    for path in files:
        s3_client.upload_file(str(path), s3_bucket, f"corpus/{path.name}")
    url = f"s3://{s3_bucket}/corpus/{name}"
    assert import_(local, *packing, "-o", tmp_path / "local") == 0
    assert import_(url, *packing, "--s3-endpoint", s3_server, "-o", tmp_path / "remote") == 0
    for suffix in (".bin", ".idx", *([".lengths.npy"] if "document" in packing else [])):
        assert (Path(f"{tmp_path}/remote{suffix}").read_bytes()
                == Path(f"{tmp_path}/local{suffix}").read_bytes()), suffix
    assert manifest(tmp_path / "remote")["sources"] == [
        {"path": f"s3://{s3_bucket}/corpus/{path.name}", "bytes": path.stat().st_size,
         "sha256": sha256(path)} for path in files]


def test_s3_sources_and_outputs_that_cannot_be(tmp_path, capsys, s3_server, s3_bucket):
    source = write_jsonl(tmp_path / "docs.jsonl", [{"token_ids": [1, 2]}])
    err = cli_error(capsys, ["data", "import", f"s3://{s3_bucket}/none.jsonl", "--s3-endpoint",
                             s3_server, "-o", str(tmp_path / "corpus")])
    assert err.endswith(f"s3://{s3_bucket}/none.jsonl: no such file")
    err = cli_error(capsys, ["data", "import", str(source), "-o", f"s3://{s3_bucket}/corpus"])
    assert "expected a local path (vmem data import writes local files" in err
    err = cli_error(capsys, ["data", "import", str(source), "-o", "/proc/no-such-folder/corpus"])
    assert "-o /proc/no-such-folder/corpus: cannot write there" in err
    assert sorted(os.listdir(tmp_path)) == ["docs.jsonl"]


# --- an import is evaluated like any dataset ------------------------------------------------------

def test_a_document_packed_import_scores_its_full_rows(tmp_path, hf_engine, tiny_model_dir,
                                                      tiny_tokens):
    """The tiny model memorized rows 0..7 (tests/models.py); imported one per row after a short
    document, they keep their scores, and the short row's padding is never reached."""
    docs = [tiny_tokens[0, :10], *tiny_tokens[:MEMORIZED]]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"token_ids": d.tolist()} for d in docs])
    prefix = tmp_path / "corpus"
    assert import_(source, "--packing", "document", "--seq-len", tiny_tokens.shape[1],
                   "--pad-id", 0, "-o", prefix) == 0
    rows = run(tmp_path, hf_engine, tiny_model_dir, str(prefix), start=1, stop=len(docs),
               engine_name="hf")
    memorized = set(rows.loc[rows["score"] == 1.0, "index"])
    assert memorized == {k + 1 for k in range(MEMORIZED)} - {EOS_SEQUENCE + 1}
    with pytest.raises(VmemError, match="row 0 has 10"):
        run(tmp_path, hf_engine, tiny_model_dir, str(prefix), start=0, stop=len(docs),
            engine_name="hf", name="with-the-short-row")
