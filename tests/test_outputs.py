"""Where outputs go: every `-o` local or on the S3 server (equal to the local output), refused in
one line before any work where it cannot be written; S3 runs staged only while a file uploads;
an index built once by tasks that race for it; merged counts of continuations over 255 tokens."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from tests.cli import cli_error
from tests.test_duplicates import brute_force, planted_rows, write_layout
from tests.test_merge import evaluation
from tests.test_released import import_list, write_list
from tests.test_report import study, write_run  # noqa: F401 (study: the planted runs' fixture)
from vmem.cli import main
from vmem.engines import EngineConfig
from vmem.evaluate import Evaluation, evaluate
from vmem.io import mmidx, s3
from vmem.runs.folder import parse_score_file_name, score_file_name

STOP = 100


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own folder, so a stray local folder named after a URL shows."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not Path(tmp_path, "s3:").exists() and not Path(tmp_path, "gs:").exists()


def keys(client, bucket: str, prefix: str = "") -> dict[str, bytes]:
    return {k[len(prefix):]: s3.get_bytes(client, bucket, k)
            for k in s3.list_objects(client, bucket, prefix)}


def local_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, hf_engine, tiny_model_dir, tiny_dataset) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "run"
    evaluate(evaluation(tiny_model_dir, tiny_dataset, str(out), stop=STOP), engine=hf_engine)
    return out


# --- each command's -o on S3 equals its local output ---------------------------------------------

@pytest.mark.parametrize("name", ["m.parquet", "m.csv"])
def test_merge_to_s3_equals_merge_to_disk(tmp_path, run, s3_server, s3_bucket, name):
    assert main(["merge", str(run), "-o", str(tmp_path / name)]) == 0
    assert main(["merge", str(run), "-o", f"s3://{s3_bucket}/merged/{name}",
                 "--s3-endpoint", s3_server]) == 0
    remote = keys(s3.client(s3_server), s3_bucket, "merged/")
    stem = name.rsplit(".", 1)[0]
    assert sorted(remote) == sorted([name, f"{stem}.manifest.json"])
    assert remote[name] == (tmp_path / name).read_bytes()
    assert remote[f"{stem}.manifest.json"] == (tmp_path / f"{stem}.manifest.json").read_bytes()


def test_report_to_s3_equals_report_to_disk_and_replaces_an_earlier_one(
        tmp_path, study, s3_server, s3_client, s3_bucket):  # noqa: F811
    assert main(["report", str(study), "-o", str(tmp_path / "report")]) == 0
    local = local_files(tmp_path / "report")
    assert {"report.md", "report.html"} <= set(local) and len(local) > 10
    url = f"s3://{s3_bucket}/reports/r"
    # An earlier report there, with a table the new one does not have.
    s3_client.put_object(Bucket=s3_bucket, Key="reports/r/report.md", Body=b"old")
    s3_client.put_object(Bucket=s3_bucket, Key="reports/r/tables/gone.csv", Body=b"x")
    assert main(["report", str(study), "-o", url, "--s3-endpoint", s3_server]) == 0
    assert keys(s3_client, s3_bucket, "reports/r/") == local


def test_export_memorized_to_s3_equals_export_to_disk(tmp_path, s3_server, s3_bucket):
    tokens = np.random.default_rng(5).integers(0, 50_000, size=(300, 80), dtype=np.uint16)
    tokens.tofile(tmp_path / "tokens.bin")
    merged = write_run(tmp_path, "run", model="EleutherAI/pythia-70m", step=143_000, start=0,
                       stop=300, memorized=[3, 4, 100, 299])
    args = ["export-memorized", str(merged), "--data", str(tmp_path / "tokens.bin"),
            "--seq-len", "80", "--s3-endpoint", s3_server, "-o"]
    assert main([*args, str(tmp_path / "mem.parquet")]) == 0
    assert main([*args, f"s3://{s3_bucket}/x/mem.parquet"]) == 0
    assert keys(s3.client(s3_server), s3_bucket) == {
        "x/mem.parquet": (tmp_path / "mem.parquet").read_bytes()}
    assert pq.read_table(tmp_path / "mem.parquet").column("index").to_pylist() == [3, 4, 100, 299]


def test_import_released_to_s3_equals_import_to_disk(tmp_path, s3_server, s3_bucket):
    source = write_list(tmp_path / "list.parquet", [0, 3, 41, 299])
    assert main(import_list(source, tmp_path / "results")) == 0
    assert main([*import_list(source, f"s3://{s3_bucket}/results"),
                 "--s3-endpoint", s3_server]) == 0
    local = local_files(tmp_path / "results")
    remote = keys(s3.client(s3_server), s3_bucket, "results/")
    assert sorted(remote) == sorted(local) and len(local) == 2
    for name, data in local.items():
        if name.endswith(".parquet"):
            assert remote[name] == data
        else:  # the manifests differ in when they were made
            mine, theirs = json.loads(data), json.loads(remote[name])
            assert {**mine, "created": None} == {**theirs, "created": None}


# --- refused in one line, before any work, leaving nothing ---------------------------------------

def commands(tmp_path: Path, out: str) -> dict[str, list[str]]:
    """Each command writing to `out`, with an input that does not exist: the output is checked
    first, so its refusal is the one shown."""
    missing = str(tmp_path / "missing")
    return {
        "merge": ["merge", missing, "-o", f"{out}.parquet"],
        "report": ["report", missing, "-o", out],
        "export-memorized": ["export-memorized", f"{missing}.parquet", "-o", f"{out}.parquet",
                             "--data", missing],
        "import-released": import_list(f"{missing}.parquet", out),
    }


@pytest.mark.parametrize("command", ["merge", "report", "export-memorized", "import-released"])
def test_a_missing_bucket_is_one_line_before_any_work(capsys, tmp_path, s3_server, s3_client,
                                                      command):
    argv = commands(tmp_path, "s3://no-such-bucket/out")[command]
    err = cli_error(capsys, [*argv, "--s3-endpoint", s3_server])
    assert err.startswith("vmem: error: -o s3://no-such-bucket/out") and "cannot write there" in err
    assert "no such bucket" in err
    assert "no-such-bucket" not in {b["Name"] for b in s3_client.list_buckets()["Buckets"]}
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("command", ["merge", "report", "export-memorized", "import-released"])
def test_an_unwritable_local_target_is_one_line_before_any_work(capsys, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    err = cli_error(capsys, commands(tmp_path, str(blocker / "out"))[command])
    assert f"-o {blocker / 'out'}" in err and f"cannot write there ({blocker} is not a " \
                                              f"writable folder)" in err
    assert sorted(os.listdir(tmp_path)) == ["a-file"] and blocker.read_text() == "mine"


@pytest.mark.parametrize("command", ["merge", "report", "export-memorized", "import-released"])
def test_another_schemes_url_is_no_local_path(capsys, tmp_path, command):
    err = cli_error(capsys, commands(tmp_path, "gs://bucket/out")[command])
    assert "-o gs://bucket/out" in err and "not a local path or an s3:// URL" in err
    assert os.listdir(tmp_path) == []


def test_outputs_that_stay_local_refuse_s3_in_one_line(capsys, tmp_path, s3_server, s3_bucket):
    rows = planted_rows(rows=40)
    data = write_layout(rows, tmp_path, "raw")
    err = cli_error(capsys, ["duplicates", "--data", data, "--seq-len", str(rows.shape[1]),
                             "--index", str(tmp_path / "index"), "--s3-endpoint", s3_server,
                             "-o", f"s3://{s3_bucket}/counts.parquet"])
    assert f"-o s3://{s3_bucket}/counts.parquet: expected a local path" in err
    err = cli_error(capsys, ["data", "dump", data, "--seq-len", str(rows.shape[1]), "--start",
                             "0", "--stop", "3", "-o", f"s3://{s3_bucket}/rows.npy"])
    assert f"-o s3://{s3_bucket}/rows.npy: expected a local path" in err
    assert sorted(os.listdir(tmp_path)) == ["rows.bin"]
    assert keys(s3.client(s3_server), s3_bucket) == {}


def test_a_report_folder_of_other_files_on_s3_is_refused(capsys, study, s3_server, s3_client,  # noqa: F811
                                                         s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="mine/notes.txt", Body=b"mine")
    err = cli_error(capsys, ["report", str(study), "-o", f"s3://{s3_bucket}/mine",
                             "--s3-endpoint", s3_server])
    assert "exists and is not a vmem report folder" in err
    s3_client.put_object(Bucket=s3_bucket, Key="report.md", Body=b"mine")
    err = cli_error(capsys, ["report", str(study), "-o", f"s3://{s3_bucket}",
                             "--s3-endpoint", s3_server])
    assert "expected s3://bucket/prefix (a report replaces its whole folder" in err
    assert keys(s3_client, s3_bucket) == {"mine/notes.txt": b"mine", "report.md": b"mine"}


def test_a_report_whose_upload_fails_leaves_nothing_on_s3(capsys, study, s3_server, s3_bucket,  # noqa: F811
                                                          restricted_s3_user, monkeypatch):
    # Sorted, the figures and report.* go up first; every table is refused.
    key_id, secret = restricted_s3_user({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject",
                                       "s3:DeleteObject"], "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject",
         "Resource": f"arn:aws:s3:::{s3_bucket}/rep/tables/*"}]})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setattr(s3, "RETRIES", 0)
    err = cli_error(capsys, ["report", str(study), "-o", f"s3://{s3_bucket}/rep",
                             "--s3-endpoint", s3_server])
    assert "/rep/tables/" in err and "access denied" in err
    assert s3.list_objects(s3.client(s3_server), s3_bucket, "") == {}


# --- S3 runs: nothing staged outlives a run ------------------------------------------------------

def test_stale_staging_neither_shadows_s3_nor_is_uploaded(tmp_path, s3_server, s3_client,
                                                          s3_bucket, hf_engine, tiny_model_dir,
                                                          tiny_dataset, run, monkeypatch):
    url = f"s3://{s3_bucket}/runs/r"
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    assert evaluate(evaluation(tiny_model_dir, tiny_dataset, url, stop=STOP, s3_endpoint=s3_server),
                    engine=hf_engine)["scored_now"] == STOP
    assert os.listdir(system_tmp) == []  # each file was staged only while it uploaded
    # What earlier releases left in their staging folder for this URL: another run's manifest,
    # and a score file and a marker that S3 does not hold.
    staged = system_tmp / "vmem-staging" / hashlib.sha256(url.encode()).hexdigest()[:12]
    (staged / "tasks").mkdir(parents=True)
    manifest = json.loads(s3.get_bytes(s3_client, s3_bucket, "runs/r/manifest.json"))
    manifest["settings"]["offset"] = 5
    (staged / "manifest.json").write_text(json.dumps(manifest))
    fp = manifest["fingerprint"]
    (staged / score_file_name(fp, 0, 7)).write_text("stale")
    (staged / "tasks" / "task-000000000000-000000000100.json").write_text("{}")
    # S3 loses a score file: the next start scores that chunk again, reading what S3 holds.
    lost = next(k for k in s3.list_objects(s3_client, s3_bucket, "runs/r/scores-")
                if parse_score_file_name(k.rsplit("/", 1)[1])[1] == 50)
    s3_client.delete_object(Bucket=s3_bucket, Key=lost)
    leftover = tmp_path / "leftover-staging"
    leftover.mkdir()
    (leftover / "manifest.json").write_text(json.dumps(manifest))
    again = evaluate(evaluation(tiny_model_dir, tiny_dataset, url, stop=STOP, s3_endpoint=s3_server,
                                staging_dir=str(leftover)), engine=hf_engine)
    assert again["scored_now"] == 50
    assert os.listdir(leftover) == ["manifest.json"]  # the user's file; nothing of this run
    names = {k.rsplit("/", 1)[1] for k in s3.list_objects(s3_client, s3_bucket, "runs/r/")}
    assert score_file_name(fp, 0, 7) not in names
    assert main(["merge", url, "-o", str(tmp_path / "m.parquet"), "--s3-endpoint",
                 s3_server]) == 0
    assert main(["merge", str(run), "-o", str(tmp_path / "local.parquet")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet"),
                                  pd.read_parquet(tmp_path / "local.parquet"))


# --- vmem duplicates: tasks that start together build the index once -----------------------------

def test_tasks_racing_for_an_empty_index_build_it_once(tmp_path):
    rows = planted_rows(rows=3000)
    data = write_layout(rows, tmp_path, "merged")

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "vmem.cli", "duplicates", "--data", data, "--index",
             str(tmp_path / "index"), "--start", "0", "--stop", "200", "-o",
             str(tmp_path / name), "--no-progress"], stderr=subprocess.PIPE, text=True)

    tasks = [start("a.parquet"), start("b.parquet")]  # together, on one empty --index
    errors = [task.communicate(timeout=600)[1] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], errors
    assert sum(err.count("vmem: index part 0 of 1 (") for err in errors) == 1, errors
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, brute_force(rows).iloc[:200])


# --- merged counts beyond a byte ------------------------------------------------------------------

CONT_LEN = 300  # matches and prefix matches up to 300: more than a byte holds
ROWS, SEQ_LEN, TOKEN = 12, 340, 5


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory) -> str:
    """A GPT-NeoX model that always predicts TOKEN: its last layer norm outputs ones, and only
    TOKEN's output row is not zero."""
    config = GPTNeoXConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1,
                           num_attention_heads=1, intermediate_size=64,
                           max_position_embeddings=512, bos_token_id=0, eos_token_id=0,
                           tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(config)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[TOKEN] = 1.0
    folder = tmp_path_factory.mktemp("constant") / "model"
    model.save_pretrained(folder)
    return str(folder)


def test_merge_keeps_counts_above_255(capsys, tmp_path, constant_model):
    # Row r's continuation is TOKEN throughout but for one other token at position wrong[r]
    # (none where wrong[r] is CONT_LEN): its prefix match is wrong[r], its matches 299 or 300.
    wrong = np.array([CONT_LEN, 0, 255, 256, 299, CONT_LEN, 270, 1, 260, CONT_LEN, 100, 280])
    rows = np.full((ROWS, SEQ_LEN), TOKEN, dtype=np.uint16)
    for r, at in enumerate(wrong):
        if at < CONT_LEN:
            rows[r, 32 + at] = TOKEN + 1
    mmidx.write_merged(tmp_path / "data", rows)
    run_dir = tmp_path / "run"
    evaluate(Evaluation(engine=EngineConfig(constant_model, engine="hf", dtype="float32"),
                        data=str(tmp_path / "data"), out=str(run_dir), start=0, stop=ROWS,
                        cont_len=CONT_LEN, chunk_size=6, progress=False))
    capsys.readouterr()
    assert main(["merge", str(run_dir), "-o", str(tmp_path / "m.parquet")]) == 0
    assert f"memorized 3 ({3 / ROWS:.4%})" in capsys.readouterr().err
    table = pd.read_parquet(tmp_path / "m.parquet")
    assert table["prefix_match"].tolist() == wrong.tolist()
    assert table["matches"].tolist() == np.where(wrong == CONT_LEN, CONT_LEN,
                                                 CONT_LEN - 1).tolist()

    # A sound score file of rows [0, 3) whose row 0 has 256 matches fewer than the run's: the
    # two copies conflict.
    fp = parse_score_file_name(next(run_dir.glob("scores-*")).name)[0]
    duplicate = table.iloc[:3].copy()
    duplicate.loc[0, ["matches", "prefix_match"]] = CONT_LEN - 256
    duplicate["score"] = duplicate["matches"] / CONT_LEN
    duplicate.to_csv(run_dir / score_file_name(fp, 0, 3), index=False)
    err = cli_error(capsys, ["merge", str(run_dir), "-o", str(tmp_path / "m2.parquet")])
    assert f"conflicting duplicate: index 0 has matches {CONT_LEN - 256} in an earlier score " \
           f"file and {CONT_LEN} in" in err
