"""Merging a run's score files, and runs written to S3, on real files and a real S3 server."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.cli import cli_error
from tests.s3_server import FAKE_CREDENTIALS, set_auth
from vmem.cli import main
from vmem.engines import EngineConfig
from vmem.errors import VmemError
from vmem.evaluate import Evaluation, evaluate
from vmem.io import s3
from vmem.runs.folder import parse_score_file_name, score_file_name
from vmem.runs.merge import merge_run

STOP = 200


def evaluation(model_dir: str, data: str, out: str, stop: int = STOP, **kw) -> Evaluation:
    return Evaluation(engine=EngineConfig(model_dir, engine="hf", dtype="float32"), data=data,
                      out=out, start=0, stop=stop, chunk_size=50, progress=False, **kw)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, hf_engine, tiny_model_dir, tiny_dataset) -> Path:
    out = tmp_path_factory.mktemp("merge") / "run"
    evaluate(evaluation(tiny_model_dir, tiny_dataset, str(out)), engine=hf_engine)
    return out


@pytest.fixture
def run(tmp_path, base_run) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def score_rows(run: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(run.glob("scores-*.csv"))]
    return pd.concat(frames).sort_values("index").reset_index(drop=True)


def score_file_at(run: Path, start: int) -> Path:
    return next(p for p in run.glob("scores-*.csv") if parse_score_file_name(p.name)[1] == start)


def test_merge_writes_sorted_parquet_and_csv_with_the_manifest(tmp_path, run):
    expected = score_rows(run)
    for name in ("merged.parquet", "merged.csv"):
        merged = merge_run(str(run), str(tmp_path / name))
        table = (pd.read_parquet if name.endswith("parquet") else pd.read_csv)(tmp_path / name)
        pd.testing.assert_frame_equal(table, expected, check_dtype=False)
        assert merged["rows"] == STOP
    beside = json.loads((tmp_path / "merged.manifest.json").read_text())
    assert beside["settings"] == json.loads((run / "manifest.json").read_text())["settings"]
    assert beside["timing"]["tasks"] == 1 and beside["timing"]["sequences_scored"] == STOP
    assert beside["timing"]["started"] <= beside["timing"]["finished"]


def test_gaps_are_listed_with_the_command_that_fills_them(capsys, tmp_path, run):
    expected = score_rows(run)
    score_file_at(run, 50).unlink()
    score_file_at(run, 150).unlink()
    err = cli_error(capsys, ["merge", str(run), "-o", str(tmp_path / "m.parquet")])
    assert "100 sequences missing in 2 range(s): [50, 100), [150, 200)" in err
    assert not (tmp_path / "m.parquet").exists()
    command = err.split("fill them with (it evaluates only what is missing): ")[1]
    argv = shlex.split(command)
    assert argv[:2] == ["vmem", "evaluate"]
    assert main(argv[1:] + ["--no-progress"]) == 0
    merge_run(str(run), str(tmp_path / "m.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet"), expected,
                                  check_dtype=False)


def test_equal_duplicates_are_dropped_with_a_warning(capsys, tmp_path, run):
    expected = score_rows(run)
    fp = parse_score_file_name(score_file_at(run, 0).name)[0]
    overlap = expected.iloc[25:75]  # a chunk of another chunking: straddles two score files
    overlap.to_csv(run / score_file_name(fp, 25, 75), index=False)
    merge_run(str(run), str(tmp_path / "m.csv"))
    assert "50 duplicate rows with equal values dropped" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m.csv"), expected)


def test_conflicting_duplicates_are_an_error(capsys, tmp_path, run):
    rows = score_rows(run)
    fp = parse_score_file_name(score_file_at(run, 0).name)[0]
    overlap = rows.iloc[25:75].copy()
    overlap.loc[overlap["index"] == 60, "matches"] += 1  # a sound file that disagrees
    overlap["score"] = overlap["matches"] / 32
    overlap["edit_similarity"] = overlap[["edit_similarity", "score"]].max(axis=1)
    overlap.to_csv(run / score_file_name(fp, 25, 75), index=False)
    err = cli_error(capsys, ["merge", str(run), "-o", str(tmp_path / "m.csv")])
    assert "conflicting duplicate: index 60 has matches" in err
    assert not (tmp_path / "m.csv").exists()


def damage(path: Path, how: str) -> None:
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if how == "truncated":  # a write cut short mid-line
        path.write_text(text[:len(text) // 2])
    elif how == "row removed":  # an edit
        path.write_text("".join(lines[:10] + lines[11:]))
    else:  # bit rot: one bit of a row's score flips ("0.03125" -> "0.03135", say)
        row = lines[20].split(",")
        score = row[1]
        at = next(i for i in range(len(score) - 1, -1, -1) if score[i].isdigit())
        row[1] = score[:at] + chr(ord(score[at]) ^ 1) + score[at + 1:]
        path.write_text("".join(lines[:20] + [",".join(row)] + lines[21:]))


@pytest.mark.parametrize("how", ["truncated", "row removed", "bit rot"])
def test_a_damaged_score_file_is_named_with_its_fix_and_resume_scores_it_again(
        capsys, tmp_path, run, how):
    expected = score_rows(run)
    victim = score_file_at(run, 100)
    damage(victim, how)
    err = cli_error(capsys, ["merge", str(run), "-o", str(tmp_path / "m.parquet")])
    assert f"score file {victim.name}" in err
    assert not (tmp_path / "m.parquet").exists()
    command = shlex.split(err.split("regenerate it with: ")[1])
    assert command[:2] == ["vmem", "evaluate"]
    assert main(command[1:] + ["--no-progress"]) == 0  # resuming finds and redoes it
    warning = capsys.readouterr().err
    assert f"warning: score file {victim.name}" in warning and "[100, 150) again" in warning
    assert "scored 50 sequences" in warning
    merge_run(str(run), str(tmp_path / "m.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet"), expected,
                                  check_dtype=False)


def test_score_files_of_other_settings_are_refused(capsys, tmp_path, run, hf_engine, tiny_model_dir,
                                              tiny_dataset):
    other = tmp_path / "other"
    evaluate(evaluation(tiny_model_dir, tiny_dataset, str(other), offset=3), engine=hf_engine)
    shutil.copy(next(other.glob("scores-*.csv")), run)
    err = cli_error(capsys, ["merge", str(run), "-o", str(tmp_path / "m.parquet")])
    assert "was written with other settings" in err and "mixed runs cannot be merged" in err
    assert not (tmp_path / "m.parquet").exists()


def test_bad_merge_inputs(capsys, tmp_path, run):
    assert "expected a file name ending in .parquet or .csv" in cli_error(
        capsys, ["merge", str(run), "-o", str(tmp_path / "m.txt")])
    (tmp_path / "empty").mkdir()
    assert "no manifest.json" in cli_error(capsys, ["merge", str(tmp_path / "empty"), "-o",
                                                 str(tmp_path / "m.csv")])


def test_s3_output_uploads_as_it_goes_resumes_from_s3_and_merges(
        tmp_path, s3_server, s3_client, s3_bucket, flaky_s3, hf_engine, tiny_model_dir,
        tiny_dataset, base_run):
    url = f"s3://{s3_bucket}/runs/tiny"
    # Every score file and marker is uploaded through a proxy whose first connections fail.
    proxy = flaky_s3(["503", "drop", "503"])
    ev = evaluation(tiny_model_dir, tiny_dataset, url, s3_endpoint=proxy.endpoint,
                    staging_dir=str(tmp_path / "staging"))
    evaluate(ev, engine=hf_engine)
    keys = set(s3.list_objects(s3_client, s3_bucket, "runs/tiny/"))
    assert "runs/tiny/manifest.json" in keys
    assert len([k for k in keys if "/scores-" in k]) == STOP // 50
    assert proxy.connections > 3  # the failures were met and retried

    # A new staging folder (another node) resumes from what S3 holds: nothing left to do.
    again = evaluation(tiny_model_dir, tiny_dataset, url, s3_endpoint=s3_server,
                       staging_dir=str(tmp_path / "staging2"))
    assert evaluate(again, engine=hf_engine)["already_finished"]

    merged = merge_run(url, str(tmp_path / "m.parquet"), s3_endpoint=s3_server)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet"), score_rows(base_run),
                                  check_dtype=False)
    # The timing comes from the task markers on S3, read while their copy exists.
    assert merged["timing"]["tasks"] == 1 and merged["timing"]["sequences_scored"] == STOP


def test_a_failed_upload_leaves_nothing_staged_and_the_next_start_scores_it_again(
        capsys, tmp_path, s3_server, s3_client, s3_bucket, restricted_s3_user, hf_engine,
        tiny_model_dir, tiny_dataset, base_run, monkeypatch):
    url = f"s3://{s3_bucket}/runs/down"
    staging = tmp_path / "staging"
    no_score_files = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject"],
         "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject",
         "Resource": f"arn:aws:s3:::{s3_bucket}/runs/down/scores-*"}]}
    uploader = restricted_s3_user(no_score_files)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", uploader[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", uploader[1])
    with pytest.raises(VmemError, match="denied"):
        evaluate(evaluation(tiny_model_dir, tiny_dataset, url, s3_endpoint=s3_server,
                            staging_dir=str(staging)), engine=hf_engine)
    assert os.listdir(staging) == []  # S3 is the only record: nothing waits locally

    set_auth(s3_server, "inf")  # the same node, now allowed to upload
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    assert evaluate(evaluation(tiny_model_dir, tiny_dataset, url, s3_endpoint=s3_server,
                               staging_dir=str(staging)), engine=hf_engine)["scored_now"] == STOP
    assert os.listdir(staging) == []
    merge_run(url, str(tmp_path / "m.parquet"), s3_endpoint=s3_server)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet"), score_rows(base_run),
                                  check_dtype=False)


def test_a_marker_whose_upload_failed_is_written_by_the_next_start(
        capsys, tmp_path, s3_server, s3_bucket, restricted_s3_user, hf_engine, tiny_model_dir,
        tiny_dataset, monkeypatch):
    url = f"s3://{s3_bucket}/runs/marker"
    no_markers = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject"],
         "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject",
         "Resource": f"arn:aws:s3:::{s3_bucket}/runs/marker/tasks/*"}]}
    uploader = restricted_s3_user(no_markers)
    ev = evaluation(tiny_model_dir, tiny_dataset, url, s3_endpoint=s3_server,
                    staging_dir=str(tmp_path / "staging"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", uploader[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", uploader[1])
    with pytest.raises(VmemError, match="denied"):
        evaluate(ev, engine=hf_engine)  # every score file is up; the marker is not

    set_auth(s3_server, "inf")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    status = ["status", url, "--s3-endpoint", s3_server]
    assert main(status) == 0 and capsys.readouterr().out == "0\n"  # unfinished on S3
    # The score files on S3 cover the slice: the next start only writes the marker.
    assert evaluate(ev, engine=hf_engine)["scored_now"] == 0
    assert main(status) == 0 and capsys.readouterr().out == ""
    assert evaluate(ev, engine=hf_engine)["already_finished"]


def test_data_parallel_engines_split_the_slice_and_merge_to_the_single_run(
        tmp_path, tiny_model_dir, tiny_dataset, base_run):
    out = tmp_path / "dp"
    # Two engines on this node, each a child process on its own half (on a GPU node: own GPU).
    proc = subprocess.run(
        [sys.executable, "-m", "vmem.cli", "evaluate", "--model", tiny_model_dir, "--data",
         tiny_dataset, "--start", "0", "--stop", str(STOP), "--out", str(out), "--engine", "hf",
         "--dtype", "float32", "--chunk-size", "50", "--data-parallel", "2", "--no-progress"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    markers = sorted(p.name for p in (out / "tasks").iterdir())
    # Each child marks its half; the parent marks the whole slice once both have.
    assert markers == ["task-000000000000-000000000100.json", "task-000000000000-000000000200.json",
                       "task-000000000100-000000000200.json"]
    parent = json.loads((out / "tasks" / "task-000000000000-000000000200.json").read_text())
    assert parent["parts"] == [[0, 100], [100, 200]]
    # The parent's fingerprint of the weights, the one a single engine records; merged beside.
    weights = json.loads((base_run / "manifest.json").read_text())["weights"]
    assert json.loads((out / "manifest.json").read_text())["weights"] == weights
    assert merge_run(str(out), str(tmp_path / "m.parquet"))["weights"] == weights
    assert json.loads((tmp_path / "m.manifest.json").read_text())["weights"] == weights
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet"), score_rows(base_run),
                                  check_dtype=False)


def test_data_parallel_from_python_needs_no_command_line(
        tmp_path, tiny_model_dir, tiny_dataset, base_run):
    # The children are started from the plan, so a caller of `evaluate` gets them too; a second
    # call finds the parent's marker and starts nothing.
    ev = evaluation(tiny_model_dir, tiny_dataset, str(tmp_path / "dp"), data_parallel=2)
    assert evaluate(ev)["parts"] == [[0, 100], [100, 200]]
    assert evaluate(ev) == {"start": 0, "stop": STOP, "already_finished": True}
    merge_run(ev.out, str(tmp_path / "m.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m.parquet"), score_rows(base_run),
                                  check_dtype=False)
