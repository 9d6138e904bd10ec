"""The launch templates on a real one-node Slurm cluster (tests/slurm_cluster.py).

The evaluation jobs use `--engine hf --dtype float32`: four vLLM CPU engines at once would not fit
this machine's memory, and the Slurm side (slices, resubmission, exactly-once) is the same. The
exception is tensor parallelism, which only vLLM has: one `tp.sbatch` job with GPUS=2.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from vmem.engines import EngineConfig
from vmem.evaluate import Evaluation, evaluate
from vmem.runs.folder import parse_score_file_name, task_marker_name
from vmem.runs.slicing import task_slice

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VMEM = REPO / ".venv" / "bin" / "vmem"
PYTHON = REPO / ".venv" / "bin" / "python"
# The templates ask for a GPU node; the test cluster has 2 CPUs and no GPUs.
ON_TEST_NODE = ["--gres=none", "--cpus-per-task=1", "--mem=1G"]
SHOW_SLICE = ("from vmem.runs.slicing import task_from_env, task_slice; "
              "t, n = task_from_env(None, {num_tasks}); print(t, n, *task_slice(0, 10, t, n))")


def read_slices(folder: Path) -> list[tuple[int, ...]]:
    return sorted(tuple(map(int, p.read_text().split())) for p in folder.glob("*.txt"))


def test_array_tasks_take_their_slices_from_slurm(slurm_cluster, tmp_path):
    # Array ids 5..8: task = id - MIN; the job runs the venv's Python like the templates do.
    job = slurm_cluster.sbatch(
        "--array=5-8", f"--output={tmp_path}/%a.txt", "--cpus-per-task=1",
        "--wrap", f"{PYTHON} -c '{SHOW_SLICE.format(num_tasks=None)}'")
    assert set(slurm_cluster.wait(job).values()) == {"COMPLETED"}
    assert read_slices(tmp_path) == [(t, 4, *task_slice(0, 10, t, 4)) for t in range(4)]


def test_subset_array_with_num_tasks_reruns_just_those_slices(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch(
        "--array=1,3", f"--output={tmp_path}/%a.txt", "--cpus-per-task=1",
        "--wrap", f"{PYTHON} -c '{SHOW_SLICE.format(num_tasks=4)}'")
    assert set(slurm_cluster.wait(job).values()) == {"COMPLETED"}
    assert read_slices(tmp_path) == [(t, 4, *task_slice(0, 10, t, 4)) for t in (1, 3)]


def test_srun_steps_take_their_slices_from_slurm(slurm_cluster, tmp_path):
    show = f"{PYTHON} -c '{SHOW_SLICE.format(num_tasks=None)}'"
    job = slurm_cluster.sbatch(
        "--ntasks=2", "--cpus-per-task=1", f"--output={tmp_path}/batch.log",
        "--wrap", f"{show}; srun --output={tmp_path}/step-%t.txt {show}")
    assert slurm_cluster.wait(job) == {job: "COMPLETED"}
    assert read_slices(tmp_path) == [(t, 2, *task_slice(0, 10, t, 2)) for t in range(2)]
    # The batch script itself (SLURM_NTASKS=2 there too) is a single task: all of the range.
    assert (tmp_path / "batch.log").read_text().split() == ["0", "1", "0", "10"]


def grid(cluster, runs: Path, *args: str) -> list[str]:
    env = cluster.env | {"RUNS": str(runs), "LOGS": str(runs / "logs")}
    done = subprocess.run([REPO / "launch" / "grid.sh", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def commands(lines: list[str]) -> dict[str, list[str]]:
    """`dry-run   RUN: VAR=.. sbatch ..` lines → {RUN: the command's words}."""
    found = {}
    for line in lines:
        if line.startswith("dry-run"):
            run, command = line.split(None, 1)[1].split(": ", 1)
            found[run] = shlex.split(command)
    return found


def test_grid_submits_only_what_is_unfinished(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    lines = grid(slurm_cluster, runs, "--dry-run")
    # 8 sizes x duped/deduped x 7 checkpoints, each a dry-run line naming its run.
    assert len(lines) == 112 and all(line.startswith("dry-run ") for line in lines)
    by_run = commands(lines)
    final_12b = by_run["pythia-12b-deduped-step143000"]
    assert str(REPO / "launch" / "tp.sbatch") in final_12b and "--gres=gpu:4" in final_12b
    assert {"CHECKPOINT=143000", "MODEL=EleutherAI/pythia-12b-deduped"} <= set(final_12b)
    num_tasks = {run: int(cmd[-1]) for run, cmd in by_run.items()}
    assert all(f"--array=0-{n - 1}" in by_run[run] for run, n in num_tasks.items())

    def mark(run: str, step: int, tasks) -> None:
        for t in tasks:
            a, b = task_slice(0, step * 1024, t, num_tasks[run])
            marker = runs / run / task_marker_name(a, b)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")

    # pythia-70m-step43000 is finished (a marker for each slice), pythia-160m-step63000 has
    # slices 0 and 2 done, pythia-410m-step23000 has a job in the queue.
    mark("pythia-70m-step43000", 43000, range(num_tasks["pythia-70m-step43000"]))
    mark("pythia-160m-step63000", 63000, (0, 2))
    held = slurm_cluster.sbatch("--hold", "--job-name=vmem-pythia-410m-step23000",
                                "--output=/dev/null", "--wrap", "true")
    try:
        lines = grid(slurm_cluster, runs, "--dry-run", "--only", "pythia-*0m-step?3000")
    finally:
        slurm_cluster.run("scancel", held)
    # 70m, 160m, 410m (not deduped) at steps 23000, 43000, 63000, 83000.
    assert len(lines) == 12
    assert "finished  pythia-70m-step43000" in lines
    assert "queued    pythia-410m-step23000" in lines
    by_run = commands(lines)
    rest = ",".join(str(t) for t in range(num_tasks["pythia-160m-step63000"]) if t not in (0, 2))
    assert f"--array={rest}" in by_run["pythia-160m-step63000"]
    assert by_run["pythia-70m-step63000"][-2:] == ["--num-tasks", "2"]
    assert len(by_run) == 10


def test_grid_rejects_unknown_arguments(slurm_cluster, tmp_path):
    done = subprocess.run([REPO / "launch" / "grid.sh", "--dryrun"], env=slurm_cluster.env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown argument --dryrun" in done.stderr


# ---- vmem evaluate as a Slurm array ----------------------------------------------------------

CHUNK = 2  # small chunks: many durable shards per slice, so a task can be killed mid-slice
STOP = 192  # 4 slices of 48 sequences


def evaluate_env(model: Path, data: str, out: Path) -> dict[str, str]:
    return {"MODEL": str(model), "DATA": data, "OUT": str(out), "START": "0", "STOP": str(STOP),
            "VMEM_ARGS": f"--engine hf --dtype float32 --chunk-size {CHUNK}",
            "OMP_NUM_THREADS": "1"}  # two tasks share the two CPUs


def submit_array(cluster, env: dict[str, str], logs: Path) -> str:
    return cluster.sbatch("--array=0-3", f"--output={logs}/%A_%a.out", *ON_TEST_NODE,
                          str(REPO / "launch" / "array.sbatch"), env=env)


def job_logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.out")))


def merge(run: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run([VMEM, "merge", str(run), "-o", str(output)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def single_process_table(tiny_model_dir, tiny_dataset, tmp_path_factory) -> pd.DataFrame:
    """The same range scored by one plain `vmem evaluate`, outside Slurm."""
    folder = tmp_path_factory.mktemp("single")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    subprocess.run([VMEM, "evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_dataset),
                    "--out", str(folder / "run"), "--start", "0", "--stop", str(STOP),
                    "--engine", "hf", "--dtype", "float32", "--chunk-size", str(CHUNK),
                    "--no-progress"], env=env, check=True, capture_output=True, timeout=300)
    assert merge(folder / "run", folder / "merged.parquet").returncode == 0
    return pd.read_parquet(folder / "merged.parquet")


def shard_ranges(run: Path) -> list[tuple[int, int]]:
    return sorted(p[1:] for p in map(parse_score_file_name, os.listdir(run)) if p)


def assert_exactly_once(run: Path) -> None:
    ranges = shard_ranges(run)
    assert ranges[0][0] == 0 and ranges[-1][1] == STOP
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_array_sbatch_equals_one_process(slurm_cluster, tiny_model_dir, tiny_dataset,
                                         single_process_table, tmp_path):
    out = tmp_path / "run"
    job = submit_array(slurm_cluster, evaluate_env(tiny_model_dir, str(tiny_dataset), out),
                       tmp_path)
    states = slurm_cluster.wait(job, timeout=600)
    assert set(states.values()) == {"COMPLETED"}, job_logs(tmp_path)
    markers = sorted(p.name for p in (out / "tasks").iterdir())
    assert markers == sorted(Path(task_marker_name(*task_slice(0, STOP, t, 4))).name
                             for t in range(4))
    assert_exactly_once(out)
    assert merge(out, tmp_path / "merged.parquet").returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "merged.parquet"),
                                  single_process_table)


def test_cancelled_task_resubmitted_covers_each_index_once(slurm_cluster, tiny_model_dir,
                                                           tiny_dataset, single_process_table,
                                                           tmp_path):
    out = tmp_path / "run"
    env = evaluate_env(tiny_model_dir, str(tiny_dataset), out)
    job = submit_array(slurm_cluster, env, tmp_path)
    # Kill task 2 as soon as it has written its first shard, i.e. in the middle of its slice.
    lo, hi = task_slice(0, STOP, 2, 4)
    deadline = time.monotonic() + 300
    while not (out.exists() and any(lo <= a < hi for a, _ in shard_ranges(out))):
        assert time.monotonic() < deadline, f"task 2 wrote no shard\n{job_logs(tmp_path)}"
        time.sleep(0.05)
    slurm_cluster.run("scancel", f"{job}_2")
    states = slurm_cluster.wait(job, timeout=600)
    assert states[f"{job}_2"] == "CANCELLED"
    assert {states[f"{job}_{t}"] for t in (0, 1, 3)} == {"COMPLETED"}, job_logs(tmp_path)
    assert not (out / task_marker_name(lo, hi)).exists()
    done_in_slice = sum(b - a for a, b in shard_ranges(out) if lo <= a < hi)
    assert 0 < done_in_slice < hi - lo, "task 2 was not stopped mid-slice"

    failed = merge(out, tmp_path / "partial.parquet")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "partial.parquet").exists()

    # The same array again: tasks 0, 1 and 3 find their slices done, task 2 does only the rest.
    again = submit_array(slurm_cluster, env, tmp_path)
    states = slurm_cluster.wait(again, timeout=600)
    assert set(states.values()) == {"COMPLETED"}, job_logs(tmp_path)
    assert_exactly_once(out)
    assert merge(out, tmp_path / "merged.parquet").returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "merged.parquet"),
                                  single_process_table)


def test_tp_template_on_two_workers_equals_one_worker(slurm_cluster, tiny_model_dir, tiny_dataset,
                                                     vllm_engine, tmp_path):
    # tp.sbatch with GPUS=2: one vLLM engine tensor-parallel over two workers, the CPU standing
    # in for two GPUs (each worker gets one of the two cores); against one worker, same range.
    # Chunks of 48 sequences: vLLM's cost per call would dominate chunks of 2.
    out, chunk = tmp_path / "tp2", STOP // 4
    env = evaluate_env(tiny_model_dir, str(tiny_dataset), out) | {
        "GPUS": "2", "VMEM_ARGS": f"--engine vllm --dtype float32 --chunk-size {chunk}"}
    job = slurm_cluster.sbatch(f"--output={tmp_path}/tp.out", "--gres=none", "--cpus-per-task=2",
                               "--mem=4G", str(REPO / "launch" / "tp.sbatch"), env=env)
    one = tmp_path / "tp1"
    evaluate(Evaluation(engine=EngineConfig(tiny_model_dir, engine="vllm", dtype="float32"),
                        data=str(tiny_dataset), out=str(one), start=0, stop=STOP,
                        chunk_size=chunk, progress=False), engine=vllm_engine)
    assert slurm_cluster.wait(job, timeout=900) == {job: "COMPLETED"}, job_logs(tmp_path)
    assert_exactly_once(out)
    files = sorted(p.name for p in out.glob("scores-*.csv"))
    assert len(files) == 4 and files == sorted(p.name for p in one.glob("scores-*.csv"))
    for name in files:
        assert (out / name).read_bytes() == (one / name).read_bytes(), name
    info = json.loads((out / "manifest.json").read_text())["engine_info"]
    assert (info["engine"], info["tp"]) == ("vllm", 2)


def test_node_and_tp_templates_equal_one_process(slurm_cluster, tiny_model_dir, tiny_dataset,
                                                 single_process_table, tmp_path):
    # node.sbatch: two engines on this node's halves of the range (GPUS=2: --data-parallel 2);
    # tp.sbatch: one engine (GPUS=1: --tp 1, as many GPUs as a CPU node has). Single jobs, no array.
    jobs = {}
    for template, gpus, cpus in (("node.sbatch", "2", "2"), ("tp.sbatch", "1", "1")):
        env = evaluate_env(tiny_model_dir, str(tiny_dataset), tmp_path / template) | {"GPUS": gpus}
        jobs[template] = slurm_cluster.sbatch(
            f"--output={tmp_path}/{template}.out", "--gres=none", f"--cpus-per-task={cpus}",
            "--mem=1G", str(REPO / "launch" / template), env=env)
    for template, job in jobs.items():
        assert slurm_cluster.wait(job, timeout=600) == {job: "COMPLETED"}, job_logs(tmp_path)
        assert_exactly_once(tmp_path / template)
        merged = tmp_path / f"{template}.parquet"
        assert merge(tmp_path / template, merged).returncode == 0
        pd.testing.assert_frame_equal(pd.read_parquet(merged), single_process_table)
    markers = sorted(p.name for p in (tmp_path / "node.sbatch" / "tasks").iterdir())
    # Each engine marks its half; the job marks its whole slice once both have.
    halves = [task_slice(0, STOP, rank, 2) for rank in range(2)]
    assert markers == sorted(Path(task_marker_name(a, b)).name for a, b in [*halves, (0, STOP)])
