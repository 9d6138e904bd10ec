"""Training orders read through maps: GPT-NeoX index maps and Pythia's parquet files.

Each order is built tiny in its real format, by code written here from the format's own source
(GPT-NeoX's `gpt2_dataset.py` and `indexed_dataset.py`; the parquet files' published schema),
and every index is checked against an independent reader written the way GPT-NeoX reads it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli import cli_error
from tests.models import SEQ_LEN, VOCAB, reference_cont_logprobs
from tests.test_duplicates import brute_force, brute_force_rows
from vmem.cli import main
from vmem.data import iter_batches, manifest_entry, open_dataset

SEQ_LENGTH = SEQ_LEN - 1  # GPT-NeoX's seq_length: each sample holds seq_length + 1 tokens
SEED = 1234
DOCS = "pile_20B_tokenizer_text_document"
SPLIT = "train_0"
PER_STEP = 4  # sequences per training step in these tiny orders


# --- GPT-NeoX's document dataset and index maps, written as GPT-NeoX writes them ----------------

def write_documents(prefix, documents: list[np.ndarray]) -> None:
    """MMapIndexedDataset: PREFIX.bin the documents end to end; PREFIX.idx the header
    (b"MMIDIDX\\x00\\x00", version <Q 1, dtype code <B (8 = uint16), <Q count, <Q doc_idx count),
    int32 sizes, int64 byte pointers, int64 document indices."""
    sizes = np.array([len(d) for d in documents], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes.astype(np.int64) * 2)[:-1]]).astype(np.int64)
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)
                + struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(sizes) + 1))
        f.write(sizes.tobytes() + pointers.tobytes()
                + np.arange(len(sizes) + 1, dtype=np.int64).tobytes())
    with open(f"{prefix}.bin", "wb") as f:
        for document in documents:
            f.write(document.astype(np.uint16).tobytes())


def build_index_maps(sizes: np.ndarray, num_samples: int, seq_length: int, seed: int):
    """GPT-NeoX's `_build_index_mappings` for packed data (its `_num_epochs`, `_build_doc_idx`,
    `_build_sample_idx` (the C++ helper's int32 output) and `_build_shuffle_idx`)."""
    tokens_per_epoch = int(sizes.sum())
    num_epochs = 0
    while True:
        num_epochs += 1
        if (num_epochs * tokens_per_epoch - 1) // seq_length >= num_samples:
            break
    rng = np.random.RandomState(seed=seed)
    doc_idx = np.mgrid[0:num_epochs, 0:len(sizes)][1]
    doc_idx[:] = np.arange(len(sizes))
    doc_idx = doc_idx.reshape(-1).astype(np.int32)
    rng.shuffle(doc_idx)
    total = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_idx = np.zeros([total + 1, 2], dtype=np.int32)
    index, offset = 0, 0
    for s in range(1, total + 1):
        remaining = seq_length + 1
        while remaining != 0:
            length = sizes[doc_idx[index]] - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - 1
                remaining = 0
            else:
                index += 1
                offset = 0
        sample_idx[s] = index, offset
    shuffle_idx = np.arange(total, dtype=np.uint32)
    rng.shuffle(shuffle_idx)
    return doc_idx, sample_idx, shuffle_idx


def maps_name(num_samples: int, seed: int) -> str:
    return f"{DOCS}_{SPLIT}_indexmap_{num_samples}ns_{SEQ_LENGTH}sl_{seed}s"


def write_index_maps(folder, sizes: np.ndarray, num_samples: int, seed: int) -> str:
    """The three maps saved as GPT-NeoX saves them (np.save); the maps prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / maps_name(num_samples, seed)
    for kind, array in zip(("doc", "sample", "shuffle"),
                           build_index_maps(sizes, num_samples, SEQ_LENGTH, seed), strict=True):
        np.save(f"{prefix}_{kind}_idx.npy", array, allow_pickle=True)
    return str(prefix)


def neox_sample(documents: list[np.ndarray], prefix: str, i: int) -> np.ndarray:
    """Sample i as `GPT2Dataset.__getitem__` reads it, document by document."""
    doc_idx = np.load(f"{prefix}_doc_idx.npy")
    sample_idx = np.load(f"{prefix}_sample_idx.npy")
    j = np.load(f"{prefix}_shuffle_idx.npy")[i]
    (doc_f, offset_f), (doc_l, offset_l) = sample_idx[j], sample_idx[j + 1]
    if doc_f == doc_l:
        return documents[doc_idx[doc_f]][offset_f:offset_l + 1]
    parts = [documents[doc_idx[doc_f]][offset_f:]]
    parts += [documents[doc_idx[k]] for k in range(doc_f + 1, doc_l)]
    parts.append(documents[doc_idx[doc_l]][:offset_l + 1])
    return np.concatenate(parts)


def make_documents(count: int = 70, seed: int = 0) -> list[np.ndarray]:
    """Documents of any length (1 to 300 tokens), each ending in end-of-text (0) as the Pile's."""
    rng = np.random.default_rng(seed)
    documents = []
    for length in rng.integers(1, 300, size=count):
        document = rng.integers(1, VOCAB, size=length, dtype=np.uint16)
        document[-1] = 0
        documents.append(document)
    return documents


@pytest.fixture(scope="module")
def polypythia(tmp_path_factory):
    """PolyPythias' layout: the document dataset at the top, one folder of maps per seed."""
    root = tmp_path_factory.mktemp("pile-preshuffled-seeds")
    documents = make_documents()
    write_documents(root / DOCS, documents)
    sizes = np.array([len(d) for d in documents], dtype=np.int32)
    maps = {seed: write_index_maps(root / f"seed{k}", sizes, 40, seed)
            for k, seed in enumerate((SEED, 1))}
    return root, documents, maps


def test_index_maps_give_every_sample_as_gpt_neox_reads_it(polypythia):
    root, documents, maps = polypythia
    for prefix in maps.values():
        dataset = open_dataset(prefix + "_shuffle_idx.npy")
        expected = np.stack([neox_sample(documents, prefix, i)
                             for i in range(len(np.load(prefix + "_shuffle_idx.npy")))])
        assert dataset.num_sequences == len(expected) and dataset.seq_len == SEQ_LEN
        assert np.array_equal(dataset.read(0, dataset.num_sequences), expected)
        # Any window: the batches read a span of the order, not from its start.
        assert np.array_equal(dataset.read(7, 19), expected[7:19])
        assert dataset.read(5, 5).shape == (0, SEQ_LEN)
        batches = list(iter_batches(dataset, 3, 30, rows=5, prompt_len=32, cont_len=32))
        assert np.array_equal(np.concatenate([b.prompts for b in batches]), expected[3:30, :32])
    seeds = [open_dataset(p).read(0, 8) for p in maps.values()]
    assert not np.array_equal(*seeds)  # two seeds, two orders of the same documents


def test_every_name_of_the_maps_opens_the_same_order(polypythia, capsys):
    root, _, maps = polypythia
    prefix = maps[SEED]
    forms = [prefix, prefix + "_doc_idx.npy", prefix + "_sample_idx.npy", str(root / "seed0")]
    entries = [manifest_entry(open_dataset(form)) for form in forms]
    assert all(entry == entries[0] for entry in entries)
    order = entries[0]["order"]
    assert order["kind"] == "gpt-neox-index-maps" and order["seed"] == SEED
    assert order["documents"] == str(root / DOCS) and order["maps"] == prefix
    assert set(order["file_sizes"]) == {str(root / f"{DOCS}.idx"), str(root / f"{DOCS}.bin"),
                                        *(f"{prefix}_{k}_idx.npy" for k in
                                          ("doc", "sample", "shuffle"))}
    assert main(["data", "info", str(root / "seed1")]) == 0
    assert "gpt-neox-index-maps (seed 1)" in capsys.readouterr().out


def test_index_maps_over_sharded_documents_read_in_place(polypythia, tmp_path):
    # The document .bin cut into byte-wise shards of an odd size (a token straddles two).
    root, documents, maps = polypythia
    data = (root / f"{DOCS}.bin").read_bytes()
    (tmp_path / f"{DOCS}.idx").write_bytes((root / f"{DOCS}.idx").read_bytes())
    shard_bytes = 1001
    last = (len(data) - 1) // shard_bytes
    for k in range(last + 1):
        (tmp_path / f"{DOCS}-{k:05d}-of-{last:05d}.bin").write_bytes(
            data[k * shard_bytes:(k + 1) * shard_bytes])
    seed_folder = tmp_path / "seed0"
    seed_folder.mkdir()
    for kind in ("doc", "sample", "shuffle"):
        name = f"{maps_name(40, SEED)}_{kind}_idx.npy"
        (seed_folder / name).write_bytes((root / "seed0" / name).read_bytes())
    dataset = open_dataset(seed_folder)
    expected = open_dataset(maps[SEED])
    assert np.array_equal(dataset.read(0, dataset.num_sequences),
                          expected.read(0, expected.num_sequences))


def test_bad_index_maps_are_one_line(polypythia, tmp_path, capsys):
    root, _, maps = polypythia
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    name = f"{maps_name(40, SEED)}_doc_idx.npy"
    (lonely / name).write_bytes((root / "seed0" / name).read_bytes())
    err = cli_error(capsys, ["data", "info", str(lonely / name)])
    assert err.endswith(f"{maps_name(40, SEED)}_sample_idx.npy: not found (GPT-NeoX index maps "
                        f"are three files, MAPS_doc_idx.npy, MAPS_sample_idx.npy and "
                        f"MAPS_shuffle_idx.npy)")
    for kind in ("sample", "shuffle"):
        other = f"{maps_name(40, SEED)}_{kind}_idx.npy"
        (lonely / other).write_bytes((root / "seed0" / other).read_bytes())
    err = cli_error(capsys, ["data", "info", str(lonely)])
    assert "no document dataset found for these index maps" in err
    err = cli_error(capsys, ["data", "info", maps[SEED], "--seq-len", "96"])
    assert "leave them out" in err


# --- Pythia's data as parquet --------------------------------------------------------------------

def write_parquet(folder, rows: np.ndarray, steps_per_file: int, per_step: int) -> list:
    """`train-{N:06d}.parquet`, each holding steps [N - steps_per_file, N): columns uid,
    batch_idx, token_ids, in small row groups."""
    folder.mkdir(parents=True, exist_ok=True)
    rows_per_file = steps_per_file * per_step
    paths = []
    for k, first in enumerate(range(0, len(rows), rows_per_file), start=1):
        part = rows[first:first + rows_per_file]
        index = np.arange(first, first + len(part))
        table = pa.table({"uid": pa.array(index, pa.int64()),
                          "batch_idx": pa.array(index // per_step, pa.int64()),
                          "token_ids": pa.array(list(part), pa.list_(pa.uint16()))})
        path = folder / f"train-{k * steps_per_file:06d}.parquet"
        pq.write_table(table, path, row_group_size=3)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def parquet_rows(tmp_path_factory):
    rows = np.random.default_rng(3).integers(1, VOCAB, size=(40, SEQ_LEN), dtype=np.uint16)
    folder = tmp_path_factory.mktemp("pile-deduped-pythia-preshuffled")
    return folder, write_parquet(folder, rows, steps_per_file=2, per_step=PER_STEP)


def parquet_reference(paths) -> np.ndarray:
    return np.array([tokens for path in paths
                     for tokens in pq.read_table(path).column("token_ids").to_pylist()])


def test_parquet_rows_in_file_order(parquet_rows):
    folder, paths = parquet_rows
    expected = parquet_reference(paths)
    for form in (folder, paths[2]):  # the folder, or any one of its files
        dataset = open_dataset(form)
        assert (dataset.num_sequences, dataset.seq_len) == expected.shape
        assert dataset.dtype == np.uint16
        assert np.array_equal(dataset.read(0, len(expected)), expected)
        for start, stop in ((5, 6), (7, 17), (0, 40), (39, 40), (9, 9)):
            assert np.array_equal(dataset.read(start, stop), expected[start:stop])
    order = manifest_entry(open_dataset(folder))["order"]
    assert order["kind"] == "pythia-parquet" and order["steps_per_file"] == 2
    assert list(order["file_sizes"]) == [str(p) for p in paths]


def test_a_gap_in_the_parquet_files_is_one_line(parquet_rows, tmp_path, capsys):
    _, paths = parquet_rows
    for path in paths[:1] + paths[2:3]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    err = cli_error(capsys, ["data", "info", str(tmp_path)])
    assert err.endswith("train-000006.parquet follows train-000002.parquet, but "
                        "train-000004.parquet is missing (the files must cover steps [0, N) "
                        "without a gap: train-000002.parquet first)")


# --- downstream: evaluate, spot, Slurm slicing, S3 ----------------------------------------------

def test_evaluate_checkpoint_scores_what_that_step_trained_on(polypythia, tmp_path, capsys,
                                                             tiny_model_dir):
    _, documents, maps = polypythia
    checkpoint = 3
    expected = np.stack([neox_sample(documents, maps[SEED], i)
                         for i in range(checkpoint * PER_STEP)])
    out = tmp_path / "run"
    args = ["evaluate", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32",
            "--data", maps[SEED], "--checkpoint", str(checkpoint), "--revision", "main",
            "--sequences-per-step", str(PER_STEP), "--logprobs", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    # Resumed from the seed's folder (another name of the same order): nothing left to score.
    again = list(args)
    again[args.index("--data") + 1] = str(Path(maps[SEED]).parent)
    assert main(again) == 0
    assert "already finished" in capsys.readouterr().err
    rows = pd.concat(map(pd.read_csv, sorted(out.glob("scores-*.csv")))).sort_values("index")
    assert rows["index"].tolist() == list(range(checkpoint * PER_STEP))
    np.testing.assert_allclose(rows["cont_logprob"],
                               reference_cont_logprobs(tiny_model_dir, expected, 32, 32),
                               rtol=1e-4, atol=1e-3)
    data = json.loads((out / "manifest.json").read_text())["settings"]["data"]
    assert data["order"]["kind"] == "gpt-neox-index-maps" and data["order"]["seed"] == SEED


def test_spot_shows_the_sample_of_the_order(polypythia, parquet_rows, capsys, tiny_model_dir):
    _, documents, maps = polypythia
    assert main(["spot", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32",
                 "--data", maps[1], "--index", "11", "--sequences-per-step",
                 str(PER_STEP)]) == 0
    text = capsys.readouterr().out
    assert "sequence 11 (training step 2)" in text
    truth = next(line for line in text.splitlines() if "truth" in line)
    assert truth.split()[1:] == [str(t) for t in neox_sample(documents, maps[1], 11)[32:64]]
    folder, paths = parquet_rows
    assert main(["spot", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32",
                 "--data", str(folder), "--index", "21"]) == 0
    truth = next(line for line in capsys.readouterr().out.splitlines() if "truth" in line)
    assert truth.split()[1:] == [str(t) for t in parquet_reference(paths)[21, 32:64]]


def test_slurm_tasks_over_parquet_cover_the_checkpoint_once(parquet_rows, tmp_path,
                                                            tiny_model_dir):
    folder, paths = parquet_rows
    out = tmp_path / "run"
    base = ["evaluate", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32",
            "--data", str(folder), "--checkpoint", "5", "--revision", "main",
            "--sequences-per-step", str(PER_STEP), "--logprobs", "--out", str(out),
            "--num-tasks", "3", "--no-progress"]
    for task in range(3):
        assert main(base + ["--task-id", str(task)]) == 0
    rows = pd.concat(map(pd.read_csv, sorted(out.glob("scores-*.csv")))).sort_values("index")
    assert rows["index"].tolist() == list(range(5 * PER_STEP))
    np.testing.assert_allclose(
        rows["cont_logprob"],
        reference_cont_logprobs(tiny_model_dir, parquet_reference(paths)[:5 * PER_STEP], 32, 32),
        rtol=1e-4, atol=1e-3)


def test_both_orders_read_in_place_on_s3(polypythia, parquet_rows, s3_server, s3_client,
                                         s3_bucket):
    root, documents, maps = polypythia
    for path in [root / f"{DOCS}.idx", root / f"{DOCS}.bin", *sorted((root / "seed1").iterdir())]:
        key = str(path.relative_to(root))
        s3_client.put_object(Bucket=s3_bucket, Key=f"seeds/{key}", Body=path.read_bytes())
    remote = open_dataset(f"s3://{s3_bucket}/seeds/seed1", s3_endpoint=s3_server)
    local = open_dataset(maps[1])
    assert np.array_equal(remote.read(0, remote.num_sequences),
                          local.read(0, local.num_sequences))
    folder, paths = parquet_rows
    for path in paths:
        s3_client.put_object(Bucket=s3_bucket, Key=f"parquet/{path.name}",
                             Body=path.read_bytes())
    remote = open_dataset(f"s3://{s3_bucket}/parquet/{paths[1].name}", s3_endpoint=s3_server)
    assert np.array_equal(remote.read(3, 37), parquet_reference(paths)[3:37])


def test_duplicates_count_the_order_as_its_rows(polypythia, tmp_path):
    # The index of a mapped order is built from all its rows, in order: counts as a brute force
    # over the samples GPT-NeoX reads.
    _, documents, maps = polypythia
    total = len(np.load(maps[SEED] + "_shuffle_idx.npy"))
    samples = np.stack([neox_sample(documents, maps[SEED], i) for i in range(total)])
    output = tmp_path / "counts.parquet"
    assert main(["duplicates", "--data", maps[SEED], "--index", str(tmp_path / "index"),
                 "--start", "0", "--stop", "40", "-o", str(output), "--no-progress"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(output), brute_force(samples).head(40))
    rows = tmp_path / "rows.parquet"  # semantic-memorization's definition, on the same order
    assert main(["duplicates", "--data", maps[SEED], "--index", str(tmp_path / "rows-index"),
                 "--definition", "rows", "--start", "0", "--stop", "40", "-o", str(rows),
                 "--no-progress"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(rows), brute_force_rows(samples).head(40))
