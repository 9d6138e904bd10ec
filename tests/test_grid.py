"""launch/grid.sh before anything is submitted: a dry run where no Slurm controller answers, the
paper's -v0 grid, the downloads that fill the hub cache (printed, and run with huggingface_hub's
own `hf` against a cache laid out on disk), and the array tasks kept offline."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub_cache import write_hub_cache
from tests.s3_server import free_port
from tests.test_slurm import ON_TEST_NODE, commands
from vmem import pythia
from vmem.engines import download_command
from vmem.runs.folder import task_marker_name
from vmem.runs.slicing import task_slice

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests: its vmem, python and hf
CHECKPOINTS = list(pythia.PAPER_CHECKPOINTS)


def no_controller(folder: Path) -> Path:
    """A Slurm config whose controller does not answer (nothing listens on its port)."""
    conf = folder / "slurm.conf"
    if not conf.exists():
        conf.write_text(f"ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort={free_port()}\n"
                        "NodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost\n")
    return conf


def grid(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         expect: int = 0) -> subprocess.CompletedProcess:
    """grid.sh ARGS where no Slurm controller answers, unless `env` names one."""
    base = dict(os.environ, SLURM_CONF=str(no_controller(tmp_path)), RUNS=str(tmp_path / "runs"),
                LOGS=str(tmp_path / "logs"), VMEM=str(BIN / "vmem"), PYTHON=sys.executable,
                HF=str(BIN / "hf"))
    done = subprocess.run([REPO / "launch" / "grid.sh", *args], env=base | (env or {}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, done.stderr
    return done


def downloads(lines: list[str]) -> dict[str, list[str]]:
    """`download  RUN: hf download ..` lines → {RUN: the command's words}."""
    return {line.split()[1].rstrip(":"): shlex.split(line.split(": ", 1)[1])
            for line in lines if line.startswith("download ")}


def test_a_dry_run_needs_no_slurm_controller(tmp_path):
    done = grid(tmp_path, "--dry-run", "--only", "pythia-410m*")
    lines = done.stdout.splitlines()
    # duped/deduped x 7 checkpoints, each a dry-run line naming its run.
    assert len(lines) == 14 and all(line.startswith("dry-run ") for line in lines)
    assert done.stderr.startswith("grid.sh: no Slurm controller answered (squeue: ")
    assert done.stderr.count("\n") == 1
    by_run = commands(lines)
    assert {f"pythia-410m{d}-step{c}" for d in ("", "-deduped") for c in CHECKPOINTS} == set(
        by_run)
    # The array tasks load the model from the hub cache only.
    assert all("HF_HUB_OFFLINE=1" in cmd for cmd in by_run.values())
    # Submitting for real is refused in one line.
    refused = grid(tmp_path, expect=2)
    assert refused.stdout == ""
    assert refused.stderr.startswith("grid.sh: error: squeue failed (")
    assert refused.stderr.count("\n") == 1


def test_the_paper_grid_is_the_v0_models_at_the_paper_checkpoints(tmp_path):
    # Every model at the final checkpoint, and every checkpoint of one model (the full grid is
    # these 16 models x 7 checkpoints; each run asks `vmem status` once).
    by_run = {**commands(grid(tmp_path, "--dry-run", "--paper", "--only", "*-step143000")
                         .stdout.splitlines()),
              **commands(grid(tmp_path, "--dry-run", "--paper", "--only", "pythia-1b-deduped-v0-*")
                         .stdout.splitlines())}
    models = {f"EleutherAI/pythia-{s}{d}-v0" for s in pythia.PAPER_SIZES for d in ("", "-deduped")}
    found = set()
    for run, cmd in by_run.items():
        env = dict(word.split("=", 1) for word in cmd if "=" in word and not word.startswith("-"))
        found.add((env["MODEL"], int(env["CHECKPOINT"])))
        assert run == f"{env['MODEL'].split('/')[1]}-step{env['CHECKPOINT']}"
        deduped = "-deduped-" in env["MODEL"]
        assert env["DATA"] == "/path/to/pythia/pile" + "-deduped" * deduped + "/document"
    assert found == ({(model, 143_000) for model in models}
                     | {("EleutherAI/pythia-1b-deduped-v0", step) for step in CHECKPOINTS})
    assert len(models) == 16
    assert "--gres=gpu:4" in by_run["pythia-12b-deduped-v0-step143000"]


def mark_finished(runs: Path, run: str, step: int, tasks: int) -> None:
    for t in range(tasks):
        a, b = task_slice(0, step * pythia.SEQUENCES_PER_STEP, t, tasks)
        marker = runs / run / task_marker_name(a, b)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")


def test_a_dry_run_prints_one_download_per_run_to_submit(tmp_path):
    cache = tmp_path / "hub"
    lines = grid(tmp_path, "--dry-run", "--only", "pythia-160m-step*").stdout.splitlines()
    tasks_final = int(commands(lines)["pythia-160m-step143000"][-1])
    mark_finished(tmp_path / "runs", "pythia-160m-step143000", 143_000, tasks_final)
    lines = grid(tmp_path, "--dry-run", "--download", "--only", "pythia-160m-step*",
                 env={"VMEM_ARGS": f"--chunk-size 64 --download-dir={cache}"}).stdout.splitlines()
    assert "finished  pythia-160m-step143000" in lines
    fetched = downloads(lines)
    to_submit = {f"pythia-160m-step{c}" for c in CHECKPOINTS[:-1]}
    assert set(fetched) == set(commands(lines)) == to_submit
    for run, words in fetched.items():
        step = run.rsplit("-step", 1)[1]
        # The command vmem names when a task finds the revision missing, run with the venv's hf.
        assert words[0] == str(BIN / "hf")
        assert words[1:] == shlex.split(download_command("EleutherAI/pythia-160m", f"step{step}",
                                                         str(cache)))[1:]
    # Without --download-dir, huggingface_hub's own cache.
    plain = downloads(grid(tmp_path, "--dry-run", "--download", "--only",
                           "pythia-70m-deduped-step23000").stdout.splitlines())
    assert plain == {"pythia-70m-deduped-step23000": [
        str(BIN / "hf"), "download", "EleutherAI/pythia-70m-deduped", "--revision", "step23000"]}


def test_unknown_arguments_are_refused(tmp_path):
    done = grid(tmp_path, "--downloads", expect=2)
    assert done.stderr == ("grid.sh: error: unknown argument --downloads (expected --dry-run, "
                           "--only GLOB, --paper, --download, --doctor)\n")


@pytest.mark.slow
def test_downloads_run_before_the_submission_and_a_failed_one_stops_it(slurm_cluster, tmp_path):
    # huggingface_hub's hf, offline, against a cache that holds pythia-70m-v0 at step23000 only:
    # it succeeds for that revision and fails for any other, as a download without network would.
    cache = tmp_path / "hub"
    write_hub_cache(cache, "EleutherAI/pythia-70m-v0", "step23000",
                    {"config.json": b"{}", "model.safetensors": b"weights"})
    env = slurm_cluster.env | {"HF_HUB_OFFLINE": "1", "VMEM_ARGS": f"--download-dir {cache}",
                               "SBATCH_ARGS": " ".join(["--hold", *ON_TEST_NODE])}  # never runs
    done = grid(tmp_path, "--download", "--paper", "--only", "pythia-70m-v0-step23000", env=env)
    (line,) = done.stdout.splitlines()
    assert line.startswith("submitted pythia-70m-v0-step23000: job ")
    job = line.split()[3]
    try:
        assert "vmem-pythia-70m-v0-step23000" in slurm_cluster.run("squeue", "-h", "-o", "%j")
    finally:
        slurm_cluster.run("scancel", job)
    # step43000 is not to be had: nothing is submitted, the failed command is named.
    failed = grid(tmp_path, "--download", "--paper", "--only", "pythia-70m-v0-step43000", env=env,
                  expect=2)
    assert failed.stdout == ""
    assert (f"grid.sh: error: {BIN / 'hf'} download EleutherAI/pythia-70m-v0 --revision step43000 "
            f"--cache-dir {cache} failed; nothing more submitted") in failed.stderr
    assert "vmem-pythia-70m-v0-step43000" not in slurm_cluster.run("squeue", "-h", "-o", "%j")
