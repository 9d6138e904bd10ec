"""`vmem status`: the unfinished task slices of real runs, in a local folder and on S3."""

from __future__ import annotations

import pytest

from tests.cli import cli_error
from vmem.cli import main
from vmem.engines import EngineConfig
from vmem.evaluate import Evaluation, evaluate
from vmem.runs.slicing import task_slice

STOP = 90


def run_tasks(out: str, tasks: list[int], num_tasks: int, model: str, data: str, engine,
              **kw) -> None:
    for task in tasks:
        evaluate(Evaluation(engine=EngineConfig(model, engine="hf", dtype="float32"), data=data,
                            out=out, start=0, stop=STOP, chunk_size=16, task_id=task,
                            num_tasks=num_tasks, progress=False, **kw), engine=engine)


def status(capsys, *argv: str) -> list[int]:
    assert main(["status", *argv]) == 0
    captured = capsys.readouterr()
    assert "task slices of" in captured.err
    return [int(line) for line in captured.out.split()]


def test_local_run_lists_the_slices_without_a_marker(capsys, tmp_path, tiny_model_dir,
                                                     tiny_dataset, hf_engine):
    out = str(tmp_path / "run")
    # Before any task ran there is no manifest: the range must be given.
    assert "no run has started there" in cli_error(capsys, ["status", out, "--num-tasks", "3"])
    assert status(capsys, out, "--num-tasks", "3", "--start", "0", "--stop", str(STOP)) == [0, 1, 2]
    assert status(capsys, out, "--num-tasks", "3", "--checkpoint", "3",
                  "--sequences-per-step", "30") == [0, 1, 2]

    # A run whose sequences per step is recorded: --checkpoint N counts in its steps.
    run_tasks(out, [0, 2], 3, tiny_model_dir, tiny_dataset, hf_engine, sequences_per_step=30)
    assert status(capsys, out, "--num-tasks", "3") == [1]
    # Slices of another split are other slices: none of them has a marker.
    assert status(capsys, out, "--num-tasks", "2") == [0, 1]
    assert "records the range [0, 90), not the [0, 60)" in cli_error(
        capsys, ["status", out, "--num-tasks", "3", "--start", "0", "--stop", "60"])
    assert "--num-tasks 0: expected at least 1" in cli_error(
        capsys, ["status", out, "--num-tasks", "0"])

    run_tasks(out, [1], 3, tiny_model_dir, tiny_dataset, hf_engine, sequences_per_step=30)
    assert status(capsys, out, "--num-tasks", "3") == []
    assert status(capsys, out, "--num-tasks", "3", "--checkpoint", "3") == []  # 30 per step
    assert {task_slice(0, STOP, t, 3) for t in range(3)} <= {
        tuple(map(int, p.stem.split("-")[1:])) for p in (tmp_path / "run" / "tasks").iterdir()}


def test_s3_run_lists_the_slices_without_a_marker(capsys, tmp_path, s3_server, s3_bucket,
                                                  tiny_model_dir, tiny_dataset, hf_engine):
    url = f"s3://{s3_bucket}/runs/r"
    run_tasks(url, [1], 2, tiny_model_dir, tiny_dataset, hf_engine, s3_endpoint=s3_server,
              staging_dir=str(tmp_path / "staging"))
    assert status(capsys, url, "--num-tasks", "2", "--s3-endpoint", s3_server) == [0]


@pytest.mark.parametrize("argv, message", [
    (["--num-tasks", "2", "--checkpoint", "-1"], "--checkpoint -1"),
    (["--num-tasks", "2", "--checkpoint", "2", "--sequences-per-step", "0"],
     "--sequences-per-step 0"),
    (["--checkpoint", "0"], "--checkpoint 0: selects no sequences"),
    (["--checkpoint", "2", "--start", "5", "--stop", "4000"], "must lie inside the range"),
])
def test_bad_status_arguments_are_one_line(capsys, tmp_path, argv, message):
    assert message in cli_error(capsys, ["status", str(tmp_path / "none"), *argv])


@pytest.mark.parametrize("text", ['{"x": 1}', "[1]", "{not json", '{"settings": {"start": 0}}'])
def test_a_damaged_manifest_is_one_line_for_status_merge_and_evaluate(
        capsys, tmp_path, tiny_model_dir, tiny_dataset, text):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    where = f"{out}/manifest.json: not a"
    assert where in cli_error(capsys, ["status", str(out)])
    assert where in cli_error(capsys, ["merge", str(out), "-o", str(tmp_path / "m.parquet")])
    assert where in cli_error(capsys, [
        "evaluate", "--model", tiny_model_dir, "--data", tiny_dataset, "--out", str(out),
        "--start", "0", "--stop", "8", "--engine", "hf", "--no-progress"])


def test_an_unusable_s3_endpoint_is_one_line(capsys):
    err = cli_error(capsys, ["status", "s3://bucket/run", "--s3-endpoint", "not a url"])
    assert "--s3-endpoint not a url: not a usable endpoint URL" in err


def test_a_file_is_no_run_folder(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    assert "not a folder" in cli_error(capsys, ["status", str(tmp_path / "f"), "--checkpoint", "1"])
