"""The weights' fingerprint: recorded by a real `vmem evaluate`, checked on resume, read from a
hub cache laid out on disk, and reported by `vmem report` from planted merged runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.cli import cli_error
from tests.hub_cache import write_hub_cache
from tests.test_report import run_report, write_run
from vmem.cli import main
from vmem.runs.weights import fingerprint_weights
from vmem.study import integrity
from vmem.study.merged_runs import load_run

WEIGHTS = "model.safetensors"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def combined(files: dict[str, str]) -> str:
    """`sha256sum`'s lines for the files, sorted, hashed: the combined fingerprint."""
    lines = sorted(f"{sha}  {name}\n" for name, sha in files.items())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def evaluate_args(model: str, data: str, out: Path) -> list[str]:
    return ["evaluate", "--model", model, "--data", data, "--start", "0", "--stop", "16",
            "--out", str(out), "--engine", "hf", "--dtype", "float32", "--chunk-size", "8",
            "--no-progress"]


def undo_last_chunk(out: Path) -> None:
    """Leave work to do, so that a resume loads the model."""
    shutil.rmtree(out / "tasks")
    sorted(out.glob("scores-*.csv"))[-1].unlink()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_evaluate_records_the_weights_and_refuses_changed_ones(tmp_path, capsys, tiny_model_dir,
                                                               tiny_dataset):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "run"
    args = evaluate_args(str(model), tiny_dataset, out)
    assert main(args) == 0
    recorded = json.loads((out / "manifest.json").read_text())["weights"]
    original = (model / WEIGHTS).read_bytes()
    assert recorded["how"] == "hashed"
    assert [(f["name"], f["size"], f["sha256"]) for f in recorded["files"]] == [
        (WEIGHTS, len(original), sha256_of(model / WEIGHTS))]
    assert recorded["sha256"] == combined({WEIGHTS: sha256_of(model / WEIGHTS)})

    # Other bytes in the weights file: the resume is refused, one line, nothing written.
    changed = bytearray(original)
    changed[-1] ^= 1  # the last byte of the last tensor
    (model / WEIGHTS).write_bytes(bytes(changed))
    undo_last_chunk(out)
    before = snapshot(out)
    err = cli_error(capsys, args)
    now = combined({WEIGHTS: sha256_of(model / WEIGHTS)})
    assert err == (f"vmem: error: the weights at {model} changed since this run started (sha256 "
                   f"{recorded['sha256'][:12]} then, {now[:12]} now); restore them or use "
                   f"another --out")
    assert snapshot(out) == before

    # The same bytes again (a new modification time, so read again): the run goes on.
    (model / WEIGHTS).write_bytes(original)
    assert main(args) == 0
    assert json.loads((out / "manifest.json").read_text())["weights"] == recorded

    # Unchanged size and modification time: the manifest's hashes are reused, not read again.
    # A planted hash shows it: read again, the file would not match it and the resume would fail.
    manifest = json.loads((out / "manifest.json").read_text())
    stat = (model / WEIGHTS).stat()
    planted = {"name": WEIGHTS, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
               "sha256": "0" * 64}
    manifest["weights"] = {"sha256": combined({WEIGHTS: "0" * 64}), "files": [planted],
                           "how": "hashed"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    undo_last_chunk(out)
    assert main(args) == 0
    os.utime(model / WEIGHTS, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    undo_last_chunk(out)
    assert "changed since this run started" in cli_error(capsys, args)


def test_a_hub_model_records_the_hashes_its_cache_holds(tmp_path, tiny_model_dir, tiny_dataset):
    weights = (Path(tiny_model_dir) / WEIGHTS).read_bytes()
    config = (Path(tiny_model_dir) / "config.json").read_bytes()
    cache = tmp_path / "hub"
    write_hub_cache(cache, "org/tiny", "step7", {WEIGHTS: weights, "config.json": config})
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "vmem.cli",
                           *evaluate_args("org/tiny", tiny_dataset, out), "--revision", "step7"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sha = hashlib.sha256(weights).hexdigest()
    assert json.loads((out / "manifest.json").read_text())["weights"] == {
        "sha256": combined({WEIGHTS: sha}), "how": "hub",
        "files": [{"name": WEIGHTS, "size": len(weights), "sha256": sha}]}


def test_hub_files_that_are_not_lfs_blobs_are_read_and_missing_ones_are_named(tmp_path):
    cache = tmp_path / "hub"
    snapshot_folder = write_hub_cache(cache, "org/tiny", "main",
                                      {WEIGHTS: b"lfs weights", "config.json": b"{}"})
    (snapshot_folder / "pytorch_model.bin").write_bytes(b"ignored: safetensors come first")
    found = fingerprint_weights("org/tiny", "main", None, str(cache))
    assert (found["how"], found["files"][0]["sha256"]) == ("hub", sha256_of(snapshot_folder /
                                                                           WEIGHTS))
    # A weights file stored in git itself (blob named by its git id): read.
    (snapshot_folder / WEIGHTS).unlink()
    (snapshot_folder / WEIGHTS).write_bytes(b"small weights in git")
    found = fingerprint_weights("org/tiny", "main", None, str(cache))
    assert found["how"] == "hashed"
    assert found["sha256"] == combined({WEIGHTS: hashlib.sha256(b"small weights in git")
                                        .hexdigest()})
    missing = fingerprint_weights("org/other", "step3", None, str(cache))
    assert missing == {"sha256": None, "reason": "no *.safetensors, *.bin, *.pt files in the "
                                                 "hub cache (org/other at step3)"}


def plant_weights(folder: Path, name: str, sha: str) -> None:
    path = folder / f"{name}.manifest.json"
    manifest = json.loads(path.read_text())
    manifest["weights"] = {"sha256": sha, "files": [], "how": "hub"}
    path.write_text(json.dumps(manifest))


def study(folder: Path) -> None:
    folder.mkdir()
    write_run(folder, "pythia-70m-step143000", model="EleutherAI/pythia-70m", step=143_000, start=0,
              stop=300, memorized=[1, 2], seed=1)
    write_run(folder, "pythia-410m-step143000", model="EleutherAI/pythia-410m", step=143_000,
              start=0, stop=300, memorized=[1, 3], seed=2)
    write_run(folder, "pythia-410m-step23000", model="EleutherAI/pythia-410m", step=23_000, start=0,
              stop=200, memorized=[3], seed=3)


def test_report_names_runs_of_different_checkpoints_with_identical_weights(tmp_path):
    runs = tmp_path / "runs"
    study(runs)
    same, other = "a" * 64, "b" * 64
    plant_weights(runs, "pythia-410m-step143000", same)
    plant_weights(runs, "pythia-410m-step23000", same)
    plant_weights(runs, "pythia-70m-step143000", other)
    run_report(runs, tmp_path / "report")
    table = (tmp_path / "report" / "tables" / "weights.csv").read_text()
    assert table == ("run,model,step,weights_sha256,identical_to\n"
                     f"pythia-70m-step143000,pythia-70m,143000,{other},\n"
                     f"pythia-410m-step23000,pythia-410m,23000,{same},pythia-410m-step143000\n"
                     f"pythia-410m-step143000,pythia-410m,143000,{same},pythia-410m-step23000\n")
    markdown = (tmp_path / "report" / "report.md").read_text()
    top = markdown.split("## What was evaluated")[0]
    assert "Warning: these runs claim different checkpoints but loaded identical weights" in top
    assert ("- pythia-410m-step23000 (pythia-410m, step 23000) and pythia-410m-step143000 "
            "(pythia-410m, step 143000) both loaded weights with sha256 aaaaaaaaaaaa") in top
    # Numbered as shown: no log-probability, prompt-length or method-agreement section before it.
    assert "## 6. Checkpoint integrity" in markdown
    assert "they stay in every table (section 6):" in top
    assert "3 of 3 runs record" in markdown and "1 pair(s) of runs" in markdown
    # Nothing dropped: the runs stay in the comparisons.
    pred = pd.read_csv(tmp_path / "report" / "tables" / "predictability.csv")
    assert "pythia-410m-step23000" in set(pred["cheap"])


def test_report_without_fingerprints_warns_of_nothing(tmp_path):
    runs = tmp_path / "runs"
    study(runs)
    plant_weights(runs, "pythia-70m-step143000", "a" * 64)
    run_report(runs, tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "tables" / "weights.csv", keep_default_na=False)
    assert table["weights_sha256"].tolist() == ["a" * 64, "", ""]
    assert table["identical_to"].tolist() == ["", "", ""]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Warning" not in markdown
    assert "1 of 3 runs record" in markdown and "all distinct" in markdown


def test_two_runs_of_one_checkpoint_with_the_same_weights_are_no_pair(tmp_path):
    # E.g. a generation and a verification run of one checkpoint, or two ranges of it.
    for name, start in (("first", 0), ("second", 100)):
        write_run(tmp_path, name, model="EleutherAI/pythia-1b", step=43_000, start=start,
                  stop=start + 100, memorized=[])
        plant_weights(tmp_path, name, "a" * 64)
    runs = [load_run(str(tmp_path / f"{name}.parquet")) for name in ("first", "second")]
    assert [r.weights_sha256 for r in runs] == ["a" * 64] * 2
    assert integrity.identical_pairs(runs) == []
    assert integrity.weights_table(runs)["identical_to"].tolist() == ["", ""]
