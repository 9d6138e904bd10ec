"""OLMo's training order: its rules against transcriptions of allenai/OLMo's own code (59a53e3f),
and the order folder `vmem data olmo` builds from a config, read by evaluate, merge and spot."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tests.cli import cli_error
from tests.models import VOCAB, reference_cont_logprobs
from vmem import olmo
from vmem.cli import main
from vmem.data import manifest_entry, open_dataset
from vmem.olmo import build_order
from vmem.study.merged_runs import order_name


# --- allenai/OLMo olmo/data/util.py, transcribed (Apache-2.0): the reference for the filter ---
def _end_first_true(arr):
    if not arr[0]:
        return 0
    prog = np.cumsum(arr)
    if prog[-1] == len(arr):
        return len(arr)
    return np.where(prog[:-1:] == prog[1::])[0][0] + 1


def _start_last_true(arr):
    reverse = _end_first_true(arr[::-1])
    return len(arr) - reverse if reverse > 0 else -1


def _find_periodic_sequences(arr, max_period, min_period=1, mask_value=-1):
    max_period = min(max_period, len(arr) // 3)
    for period in range(min_period, max_period + 1):
        padded = np.pad(arr, (0, period - (len(arr) % period)), constant_values=mask_value)
        shaped = padded.reshape(-1, period)
        is_equal = shaped == np.roll(shaped, shift=1, axis=0)
        rows, *_ = np.where(is_equal.all(axis=1))
        if len(rows) == 0:
            continue
        for sequence in np.split(rows, np.where(np.diff(rows) != 1)[0] + 1):
            start_row, end_row = sequence[0], sequence[-1]
            start_offset = _start_last_true(is_equal[start_row - 1])
            start_offset = period - start_offset if start_offset > 0 else 0
            end_offset = _end_first_true(is_equal[end_row + 1])
            start = (start_row - 1) * period - start_offset
            end = ((end_row + 1) * period) + end_offset
            times = (end - start) // period
            if times > 2:
                yield times


def _olmo_masks(row, max_period=13, min_period=1, max_count=32):
    return any(times >= max_count for times in _find_periodic_sequences(
        row.astype(np.int64), max_period=max_period, min_period=min_period))
# --- end of the transcription ---


def _planted_instances(rng, n, length):
    """Random instances, most with one repeat planted: periods 1–15, counts around 32, at
    offsets that start and end mid-row, some two repeats in one instance."""
    rows = rng.integers(0, 50_000, size=(n, length))
    for row in rows[: n * 3 // 4]:
        for _ in range(rng.integers(1, 3)):
            period = int(rng.integers(1, 16))
            times = int(rng.integers(28, 36))
            unit = rng.integers(0, 50_000, size=period)
            span = np.resize(unit, period * times + int(rng.integers(0, period)))
            if span.size >= length:
                continue
            at = int(rng.integers(0, length - span.size))
            row[at:at + span.size] = span
    return rows


def test_instance_filter_masks_exactly_what_olmos_code_masks():
    rng = np.random.default_rng(7)
    rows = _planted_instances(rng, 400, 512)
    expected = np.array([_olmo_masks(row) for row in rows])
    assert 0 < expected.sum() < len(rows)  # both kinds present
    assert (olmo.masked(rows) == expected).all()
    assert not olmo.masked(rows[~expected]).any() and olmo.masked(rows[:0]).size == 0


def test_instance_filter_follows_the_configured_rule_and_short_rows():
    rng = np.random.default_rng(8)
    rows = _planted_instances(rng, 200, 300)
    rule = olmo.InstanceFilter(max_period=5, min_period=2, max_count=31)
    expected = np.array([_olmo_masks(row, 5, 2, 31) for row in rows])
    assert (olmo.masked(rows, rule) == expected).all()
    short = np.array([[5, 5, 5, 5, 5, 5, 5, 5]])  # periods capped at len // 3
    assert olmo.masked(short, olmo.InstanceFilter(max_count=3))[0] == _olmo_masks(short[0],
                                                                                  max_count=3)


def _olmo_order(n, seed, epoch, world_size, drop_last):
    """olmo/data/iterable_dataset.py IterableDataset.__init__ + _build_global_indices."""
    if drop_last and n % world_size != 0:
        total = math.ceil((n - world_size) / world_size) * world_size
    else:
        total = math.ceil(n / world_size) * world_size
    indices = np.arange(n, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed=seed + epoch)).shuffle(indices)
    if not drop_last:
        parts, padding = [indices], total - len(indices)
        while padding > 0:
            parts.append(indices[:min(padding, len(indices))])
            padding -= len(parts[-1])
        return np.concatenate(parts)
    return indices[:total]


@pytest.mark.parametrize("seed", [6198, 0])
@pytest.mark.parametrize("epoch", [0, 1])
@pytest.mark.parametrize("world_size,drop_last", [(1, True), (7, True), (7, False)])
def test_global_indices_equal_the_trainers_permutation(seed, epoch, world_size, drop_last):
    n = 10_001
    got = olmo.global_indices(n, seed=seed, epoch=epoch, world_size=world_size,
                              drop_last=drop_last)
    want = _olmo_order(n, seed, epoch, world_size, drop_last)
    assert got.dtype == np.uint32 and (got == want).all()
    other = olmo.global_indices(n, seed=seed + 1, epoch=epoch)
    assert (other[:100] != got[:100]).any()


def test_instances_drop_each_files_remainder():
    # two uint32 files of 4096-token instances: 2 whole + 100 tokens, and exactly 3
    sizes = [(2 * 4096 + 100) * 4, 3 * 4096 * 4]
    assert olmo.instances_per_file(sizes, 4, 4096) == [2, 3]


@pytest.mark.parametrize("revision,step", [("stage1-step928646-tokens3896B", 928646),
                                           ("stage2-ingredient2-step11931-tokens50B", 11931),
                                           ("step143000", None), ("main", None)])
def test_revision_steps(revision, step):
    assert olmo.revision_step(revision) == step


# --- the order folder: built from a config, read by every command ------------------------------

SEQ = 128  # tokens per instance of these tiny runs (OLMo-2: 4096)
PER_STEP = 4  # global_train_batch_size
FILES = [(7, 13), (5, 0), (9, 100)]  # (whole instances, tokens left over) of each token file
HOST = "http://olmo-data.example/"


def write_corpus(root, instances: np.ndarray) -> list[str]:
    """The instances as OLMo's headerless uint32 token files (FILES' shapes), at the paths a
    config names them by (HOST's, mirrored under root); their URLs."""
    rng = np.random.default_rng(3)
    urls, at = [], 0
    for k, (count, extra) in enumerate(FILES):
        rel = f"preprocessed/src{k % 2}/allenai/dolma2-tokenizer/part-{k:02d}-00000.npy"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tail = rng.integers(0, VOCAB, size=extra)
        np.concatenate([instances[at:at + count].reshape(-1), tail]).astype(np.uint32).tofile(path)
        urls.append(HOST + rel)
        at += count
    return urls


def write_config(path, urls: list[str], *, seed: int, epoch: int | None = None,
                 datasets: dict | None = None) -> str:
    """A training config as OLMo's official ones write it (only what the order needs, plus
    some of what it does not)."""
    import yaml

    data = {"drop_last": True, "memmap_dtype": "uint32", "num_workers": 32,
            "instance_filter": {"repetition_max_period": 13, "repetition_min_period": 1,
                                "repetition_max_count": 32}}
    data.update({"datasets": datasets} if datasets else {"paths": urls})
    config = {"run_name": "tiny", "seed": seed, "model": {"d_model": 128,
                                                          "max_sequence_length": SEQ},
              "global_train_batch_size": PER_STEP, "device_train_microbatch_size": 2,
              "data": data, "device_eval_batch_size": "${device_train_microbatch_size}"}
    if epoch is not None:
        config["epoch"] = epoch
    path.write_text(yaml.safe_dump(config))
    return str(path)


def reference_rows(root, urls: list[str], order: np.ndarray) -> np.ndarray:
    """The rows in training order, read the way MemMapDataset reads instances."""
    instances = []
    for url in urls:
        tokens = np.fromfile(root / url[len(HOST):], dtype=np.uint32)
        instances.append(tokens[:len(tokens) // SEQ * SEQ].reshape(-1, SEQ))
    return np.concatenate(instances)[order]


def instances_with_repeats(order: np.ndarray, slots: list[int]) -> np.ndarray:
    """Random instances; those trained at `slots` carry a token repeated 40 times (masked)."""
    count = sum(n for n, _ in FILES)
    instances = np.random.default_rng(11).integers(0, VOCAB, size=(count, SEQ))
    for slot in slots:
        instances[order[slot], 70:110] = 7
    return instances


@pytest.mark.parametrize("seed", [6198, 3])
@pytest.mark.parametrize("epoch", [None, 1])
def test_the_built_order_is_the_trainers(tmp_path, capsys, seed, epoch):
    count = sum(n for n, _ in FILES)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(np.arange(count), []))
    config = write_config(tmp_path / "run.yaml", urls, seed=seed, epoch=epoch)
    out = tmp_path / "order"
    assert main(["data", "olmo", config, "-o", str(out), "--root", str(root)]) == 0
    assert f"built the order of {count} instances in 3 files" in capsys.readouterr().out
    want = _olmo_order(count, seed, epoch or 0, 1, True)
    assert (np.fromfile(out / olmo.INDICES_FILE, dtype=np.uint32) == want).all()
    for name in [str(out), str(out / olmo.ORDER_FILE)]:
        dataset = open_dataset(name)
        assert (dataset.layout, dataset.seq_len, dataset.dtype) == ("olmo", SEQ, np.uint32)
        assert dataset.sequences_per_step == PER_STEP
        assert np.array_equal(dataset.read(0, count), reference_rows(root, urls, want))
    assert np.array_equal(dataset.read(5, 9), reference_rows(root, urls, want)[5:9])


def test_datasets_are_read_in_the_order_of_their_labels(tmp_path):
    count = sum(n for n, _ in FILES)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(np.arange(count), []))
    # OLMo concatenates data.datasets in sorted label order: b (files 0, 1) after a (file 2).
    config = write_config(tmp_path / "run.yaml", urls, seed=5,
                          datasets={"b": urls[:2], "a": urls[2:]})
    build_order(config, str(tmp_path / "order"), root=str(root))
    want = _olmo_order(count, 5, 0, 1, True)
    assert np.array_equal(open_dataset(str(tmp_path / "order")).read(0, count),
                          reference_rows(root, urls[2:] + urls[:2], want))


def test_a_published_order_is_read_in_place_and_checked(tmp_path, capsys):
    count = sum(n for n, _ in FILES)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(np.arange(count), []))
    config = write_config(tmp_path / "run.yaml", urls, seed=6198)
    published = tmp_path / "global_indices.npy"
    order = np.random.default_rng(2).permutation(count)[:count - 3].astype(np.uint32)
    order.tofile(published)  # a raw memmap, as the trainer saves it
    out = tmp_path / "order"
    assert main(["data", "olmo", config, "-o", str(out), "--root", str(root),
                 "--global-indices", str(published)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [olmo.ORDER_FILE]
    dataset = open_dataset(str(out))
    assert dataset.num_sequences == count - 3
    assert np.array_equal(dataset.read(0, count - 3), reference_rows(root, urls, order))
    longer = tmp_path / "longer.npy"
    np.arange(count + 1, dtype=np.uint32).tofile(longer)
    err = cli_error(capsys, ["data", "olmo", config, "-o", str(tmp_path / "o2"), "--root",
                             str(root), "--global-indices", str(longer)])
    assert err.endswith(f"holds {count + 1} indices, but the token files of {config} hold "
                        f"{count} instances (another run's indices, or files missing from the "
                        f"config?)")
    beyond = tmp_path / "beyond.npy"
    np.array([0, count], dtype=np.uint32).tofile(beyond)
    err = cli_error(capsys, ["data", "olmo", config, "-o", str(tmp_path / "o3"), "--root",
                             str(root), "--global-indices", str(beyond)])
    assert f"names instances beyond the {count}" in err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_the_built_order_is_cached_by_checksum(tmp_path):
    count = sum(n for n, _ in FILES)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(np.arange(count), []))
    config = write_config(tmp_path / "run.yaml", urls, seed=1)
    out = tmp_path / "order"
    build_order(config, str(out), root=str(root))
    indices = out / olmo.INDICES_FILE
    first = indices.stat().st_ino
    build_order(config, str(out), root=str(root))
    assert indices.stat().st_ino == first  # kept: the same permutation
    data = bytearray(indices.read_bytes())
    data[0] ^= 1
    indices.write_bytes(bytes(data))
    build_order(config, str(out), root=str(root))  # damaged: its checksum differs, rebuilt
    assert (np.fromfile(indices, dtype=np.uint32) == _olmo_order(count, 1, 0, 1, True)).all()
    write_config(tmp_path / "run.yaml", urls, seed=2)
    build_order(config, str(out), root=str(root))  # another seed: rebuilt
    assert (np.fromfile(indices, dtype=np.uint32) == _olmo_order(count, 2, 0, 1, True)).all()


def test_bad_configs_and_moved_files_are_one_line(tmp_path, capsys):
    count = sum(n for n, _ in FILES)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(np.arange(count), []))
    config = write_config(tmp_path / "run.yaml", urls, seed=1)
    err = cli_error(capsys, ["data", "olmo", config, "-o", str(tmp_path / "o")])
    assert err.endswith("vmem reads local files and s3:// objects; mirror the files and give "
                        "--root (the folder standing for the URLs' host)")
    err = cli_error(capsys, ["data", "olmo", config, "-o", str(tmp_path / "o"), "--root",
                             str(tmp_path)])
    assert err.endswith("not found (3 of the config's 3 token files missing; check --root)")
    (tmp_path / "bad.yaml").write_text("seed: 1\nmodel: {}\n")
    err = cli_error(capsys, ["data", "olmo", str(tmp_path / "bad.yaml"), "-o", "x"])
    assert "expected model.max_sequence_length, global_train_batch_size" in err
    assert not (tmp_path / "o").exists()
    build_order(config, str(tmp_path / "o"), root=str(root))
    err = cli_error(capsys, ["data", "info", str(tmp_path / "o"), "--sequences-per-step", "8"])
    assert err.endswith("records its training batch, 4 sequences per step; leave the flag out")
    moved = root / urls[1][len(HOST):]
    moved.write_bytes(moved.read_bytes()[:-4])
    err = cli_error(capsys, ["data", "info", str(tmp_path / "o")])
    assert err.endswith(f"{(5 * SEQ) * 4 - 4} bytes, but {tmp_path / 'o' / olmo.ORDER_FILE} "
                        f"records {5 * SEQ * 4} (the order was built over other files)")


def test_evaluate_scores_what_a_checkpoint_trained_on_and_counts_the_masked(
        tmp_path, capsys, tiny_model_dir):
    count, checkpoint = sum(n for n, _ in FILES), 3
    order = _olmo_order(count, 6198, 0, 1, True)
    masked_slots = [2, 9]
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(order, masked_slots))
    build_order(write_config(tmp_path / "run.yaml", urls, seed=6198), str(tmp_path / "order"),
                root=str(root))
    out = tmp_path / "run"
    args = ["evaluate", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32",
            "--data", str(tmp_path / "order"), "--checkpoint", str(checkpoint), "--revision",
            "main", "--logprobs", "--chunk-size", "5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "2 instances never trained on" in capsys.readouterr().err
    assert main(args) == 0  # resumed: every score file is sound
    assert "already finished" in capsys.readouterr().err
    rows = pd.concat(map(pd.read_csv, sorted(out.glob("scores-*.csv")))).sort_values("index")
    assert rows["index"].tolist() == list(range(checkpoint * PER_STEP))  # the order's batch
    trained = rows["trained"].to_numpy()
    assert np.flatnonzero(~trained).tolist() == masked_slots
    values = ["score", "matches", "prefix_match", "cont_logprob"]
    assert rows.loc[~trained, values].isna().all().all()
    expected = reference_rows(root, urls, order)[:checkpoint * PER_STEP][trained]
    np.testing.assert_allclose(rows.loc[trained, "cont_logprob"],
                               reference_cont_logprobs(tiny_model_dir, expected, 32, 32),
                               rtol=1e-4, atol=1e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["batch_size"] == PER_STEP
    assert manifest["settings"]["data"]["order"]["instance_filter"]["max_count"] == 32
    merged = tmp_path / "merged.parquet"
    assert main(["merge", str(out), "-o", str(merged)]) == 0
    assert json.loads((tmp_path / "merged.manifest.json").read_text())["untrained"] == 2
    table = pd.read_parquet(merged)
    assert table["trained"].tolist() == trained.tolist()
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "report")]) == 0
    rates = pd.read_csv(tmp_path / "report" / "tables" / "memorization_rates.csv")
    assert rates[["evaluated", "start", "stop"]].values.tolist() == [[10, 0, 12]]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "In all, 2 instances that the order's instance filter masked" in text


def test_runs_over_different_olmo_orders_are_never_one_model(tmp_path):
    count = sum(n for n, _ in FILES)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(np.arange(count), []))
    names = []
    for seed in (1, 1, 2):
        config = write_config(tmp_path / f"run{seed}.yaml", urls, seed=seed)
        build_order(config, str(tmp_path / f"order{seed}"), root=str(root))
        names.append(order_name(manifest_entry(open_dataset(str(tmp_path / f"order{seed}")))))
    assert names[0] == names[1] != names[2]
    assert names[0].startswith("olmo seed 1 epoch 0 ")


def test_spot_says_an_instance_was_never_trained_on(tmp_path, capsys, tiny_model_dir):
    count = sum(n for n, _ in FILES)
    order = _olmo_order(count, 6198, 0, 1, True)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(order, [6]))
    build_order(write_config(tmp_path / "run.yaml", urls, seed=6198), str(tmp_path / "order"),
                root=str(root))
    assert main(["spot", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32",
                 "--data", str(tmp_path / "order"), "--index", "6", "--index", "7"]) == 0
    text = capsys.readouterr().out
    assert ("sequence 6 (training step 1; never trained on: the order's instance filter masks "
            "it)") in text
    assert "sequence 7 (training step 1): " in text
    truth = [line for line in text.splitlines() if line.startswith("  truth  ")][1]
    assert truth.split()[1:] == [str(t) for t in reference_rows(root, urls, order)[7, 32:64]]


def test_the_order_reads_token_files_on_s3(tmp_path, s3_server, s3_client, s3_bucket):
    count = sum(n for n, _ in FILES)
    root = tmp_path / "mirror"
    urls = write_corpus(root, instances_with_repeats(np.arange(count), []))
    for url in urls:
        rel = url[len(HOST):]
        s3_client.put_object(Bucket=s3_bucket, Key=f"olmo/{rel}", Body=(root / rel).read_bytes())
    config = write_config(tmp_path / "run.yaml", urls, seed=4)
    build_order(config, str(tmp_path / "order"), root=f"s3://{s3_bucket}/olmo",
                s3_endpoint=s3_server)
    want = reference_rows(root, urls, _olmo_order(count, 4, 0, 1, True))
    dataset = open_dataset(str(tmp_path / "order"), s3_endpoint=s3_server)
    assert np.array_equal(dataset.read(3, 17), want[3:17])
    for path in (tmp_path / "order").iterdir():  # the order folder itself on S3
        s3_client.put_object(Bucket=s3_bucket, Key=f"orders/tiny/{path.name}",
                             Body=path.read_bytes())
    remote = open_dataset(f"s3://{s3_bucket}/orders/tiny", s3_endpoint=s3_server)
    assert remote.layout == "olmo" and np.array_equal(remote.read(0, count), want)
