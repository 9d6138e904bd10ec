"""A full disk and a model that cannot be loaded: one line, exit 2, nothing half-written.

The full disk is real: a 64 KiB tmpfs mounted for the test (root, as in CI).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli import cli_error
from tests.required import unavailable
from vmem.cli import main


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs for the full-disk test (needs root): "
                    f"{done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def test_evaluate_into_a_full_disk_stops_with_one_line(capsys, small_disk, tiny_model_dir,
                                                       tiny_dataset):
    out = small_disk / "run"
    # 32 score files of 20 rows: tmpfs gives every file a 4 KiB page, so the disk fills up.
    err = cli_error(capsys, ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset,
                             "--start", "0", "--stop", "640", "--chunk-size", "20",
                             "--out", str(out), "--engine", "hf", "--dtype", "float32",
                             "--no-progress"])
    assert str(out) in err and "no space left on its disk" in err and "MiB free" in err
    assert "nothing was written" in err
    assert leftovers(small_disk) == []
    for path in out.glob("scores-*.csv"):  # what was written before is whole
        assert path.read_text().endswith("\n")


def test_merge_into_a_full_disk_stops_with_one_line(capsys, tmp_path, small_disk, tiny_model_dir,
                                                    tiny_dataset):
    run = tmp_path / "run"
    assert main(["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset, "--start", "0",
                 "--stop", "400", "--out", str(run), "--engine", "hf", "--dtype", "float32",
                 "--no-progress"]) == 0
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave less than the merged table needs
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - 4096))
    output = small_disk / "merged.csv"
    err = cli_error(capsys, ["merge", str(run), "-o", str(output)])
    assert f"{output}: no space left on its disk" in err
    assert not output.exists() and leftovers(small_disk) == []


def test_a_model_that_cannot_be_loaded_leaves_nothing_in_out(capsys, tmp_path, tiny_model_dir,
                                                              tiny_dataset):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    whole = weights.read_bytes()
    # Downloads cut short: inside the header (found while the manifest is prepared, before any
    # engine), and inside the tensors (found by the engine loading them).
    for cut, out in ((1000, tmp_path / "new-out"), (len(whole) * 4 // 5, tmp_path / "old-out")):
        weights.write_bytes(whole[:cut])
        if out.name.startswith("old"):
            out.mkdir()
        err = cli_error(capsys, ["evaluate", "--model", str(broken), "--data", tiny_dataset,
                                 "--start", "0", "--stop", "8", "--out", str(out),
                                 "--engine", "hf", "--dtype", "float32", "--no-progress"])
        assert f"model '{broken}'" in err and "cannot be loaded" in err
        assert not out.exists() or list(out.iterdir()) == []
