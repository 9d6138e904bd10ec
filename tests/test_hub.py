"""Hub models as a cluster's compute nodes use them: Pythia's names, a hub id with `--checkpoint`
loaded from a populated hub cache with the network off (tests/hub_cache.py lays it out as
huggingface_hub writes it), and one line naming the download where the cache lacks it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.cli import cli_error
from tests.hub_cache import model_files, write_hub_cache
from tests.models import EOS_SEQUENCE, MEMORIZED
from tests.test_report import run_report, write_run
from tests.test_weights import combined, undo_last_chunk
from vmem import pythia
from vmem.evaluate import revision_for
from vmem.study.merged_runs import model_and_label
from vmem.study.released import hub_model

# --- Pythia's names -----------------------------------------------------------------------------

PYTHIA = {
    # name → (size, deduped, v0, suite)
    "EleutherAI/pythia-1b": ("1b", False, False, "pythia"),
    "EleutherAI/pythia-1b-deduped": ("1b", True, False, "pythia-deduped"),
    "EleutherAI/pythia-1b-v0": ("1b", False, True, "pythia-v0"),
    "EleutherAI/pythia-1b-deduped-v0": ("1b", True, True, "pythia-deduped-v0"),
    "pythia-1.4b": ("1.4b", False, False, "pythia"),
    "EleutherAI/pythia-12b-deduped-v0": ("12b", True, True, "pythia-deduped-v0"),
    "/models/pythia-1b/step143000": ("1b", False, False, "pythia"),
    "/models/pythia-1b-deduped/": ("1b", True, False, "pythia-deduped"),
    "/models/pythia-70m-v0/step23000/": ("70m", False, True, "pythia-v0"),
    "EleutherAI/pythia-14m": ("14m", False, False, "pythia"),
    "EleutherAI/pythia-31m": ("31m", False, False, "pythia"),
}
POLYPYTHIAS = {
    # name → (size, variant, seed, suite): each variant and seed is its own training run
    "EleutherAI/pythia-14m-seed3": ("14m", "seed", 3, "pythia-seed3"),
    "EleutherAI/pythia-31m-seed9": ("31m", "seed", 9, "pythia-seed9"),
    "EleutherAI/pythia-160m-data-seed2": ("160m", "data-seed", 2, "pythia-data-seed2"),
    "EleutherAI/pythia-160m-weight-seed1": ("160m", "weight-seed", 1, "pythia-weight-seed1"),
    "/models/pythia-410m-seed10/step1000/": ("410m", "seed", 10, "pythia-seed10"),
}
NOT_PYTHIA = [
    "EleutherAI/pythia-1b-sft", "someone/pythia-1b-finetuned", "pythia-1b-deduped-lora",
    "EleutherAI/pythia-1b-v0-sft", "EleutherAI/pythia-1b-deduped_v1", "EleutherAI/pythia-3b",
    "EleutherAI/mypythia-1b", "/models/pythia-1b/finetuned", "/models/pythia-1b/step143000/lora",
    "EleutherAI/gpt-neox-20b",
    "EleutherAI/pythia-160m-seed", "EleutherAI/pythia-160m-deduped-seed1",
    "EleutherAI/pythia-160m-seed1-v0", "EleutherAI/pythia-160m-seed1-sft",
    "EleutherAI/pythia-160m-dataseed1", "EleutherAI/pythia-3b-seed1",
]


@pytest.mark.parametrize("model", PYTHIA)
def test_pythia_names_resolve_size_suite_parameters_and_revision(model):
    size, deduped, v0, suite = PYTHIA[model]
    found = pythia.parse(model)
    assert (found.size.name, found.deduped, found.v0) == (size, deduped, v0)
    assert pythia.size_of(model) == pythia.SIZES[size]
    assert pythia.suite_of(model) == suite
    assert revision_for(model, None, 23_000) == "step23000"
    assert revision_for(model, "main", 23_000) == "main"


@pytest.mark.parametrize("model", POLYPYTHIAS)
def test_polypythias_names_give_size_parameters_and_their_own_suite(model):
    size, variant, seed, suite = POLYPYTHIAS[model]
    found = pythia.parse(model)
    assert (found.size.name, found.variant, found.seed) == (size, variant, seed)
    assert not found.deduped and not found.v0
    assert pythia.size_of(model).params == pythia.SIZES[size].params
    assert pythia.suite_of(model) == suite
    assert revision_for(model, None, 1000) == "step1000"


def test_the_two_smallest_sizes_have_heads_of_32():
    for size, hidden, heads in (("14m", 128, 4), ("31m", 256, 8)):
        found = pythia.SIZES[size]
        assert (found.layers, found.hidden, found.heads, found.hidden // heads) == (
            6, hidden, heads, 32)


@pytest.mark.parametrize("size", list(pythia.SIZES))
def test_each_sizes_parameter_count_is_its_shapes(size):
    """The table's parameters (the model cards') equal a GPT-NeoX of the table's shape."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    with torch.device("meta"):  # shapes only: no memory for the weights
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**pythia.neox_config_kwargs(size)))
    assert sum(p.numel() for p in model.parameters()) == pythia.SIZES[size].params


@pytest.mark.parametrize("model", NOT_PYTHIA)
def test_other_models_borrow_nothing_from_pythia(model):
    assert pythia.parse(model) is None
    assert pythia.size_of(model) is None and pythia.suite_of(model) is None
    assert revision_for(model, None, 23_000) is None


def test_v0_models_are_their_own_hub_ids_and_suites():
    assert pythia.hub_id("1b", deduped=False, v0=True) == "EleutherAI/pythia-1b-v0"
    assert pythia.hub_id("12b", deduped=True, v0=True) == "EleutherAI/pythia-12b-deduped-v0"
    assert pythia.hub_id("70m", deduped=True) == "EleutherAI/pythia-70m-deduped"
    suites = {pythia.suite_of(pythia.hub_id("1b", d, v)) for d in (False, True) for v in (0, 1)}
    assert len(suites) == 4
    # A released list's bare name is taken as its hub id, v0 too; another model stays as given.
    assert hub_model("pythia-1b-deduped-v0") == "EleutherAI/pythia-1b-deduped-v0"
    assert hub_model("pythia-1b-sft") == "pythia-1b-sft"
    # A report names runs after the model's last part: v0 and retrained runs never share a name.
    assert model_and_label("EleutherAI/pythia-1b-v0")[1] != model_and_label(
        "EleutherAI/pythia-1b")[1]


def test_a_report_compares_v0_runs_only_with_v0_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for model, memorized in (("pythia-70m", [1]), ("pythia-70m-v0", [1, 2]), ("pythia-1b", [1, 3]),
                             ("pythia-1b-v0", [2])):
        write_run(runs, f"{model}-step143000", model=f"EleutherAI/{model}", step=143_000,
                  start=0, stop=300, memorized=memorized)
    run_report(runs, tmp_path / "report")
    rates = pd.read_csv(tmp_path / "report" / "tables" / "memorization_rates.csv")
    assert dict(zip(rates["model"], rates["suite"], strict=True)) == {
        "pythia-70m": "pythia", "pythia-1b": "pythia", "pythia-70m-v0": "pythia-v0",
        "pythia-1b-v0": "pythia-v0"}
    pairs = pd.read_csv(tmp_path / "report" / "tables" / "predictability.csv")
    assert sorted(zip(pairs["cheap"], pairs["target"], strict=True)) == [
        ("pythia-70m-step143000", "pythia-1b-step143000"),
        ("pythia-70m-v0-step143000", "pythia-1b-v0-step143000")]


# --- A hub id with --checkpoint, offline, from the hub cache ------------------------------------

REPO_ID = "EleutherAI/pythia-70m"
STEP, PER_STEP = 8, 2  # revision step8 has seen [0, 16)
WEIGHTS = "model.safetensors"


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir) -> Path:
    """The tiny model as pythia-70m's revision step8 in a hub cache."""
    cache = tmp_path / "cache"
    write_hub_cache(cache, REPO_ID, f"step{STEP}", model_files(tiny_model_dir))
    return cache


def snapshot(cache: Path) -> Path:
    """The one snapshot folder of the cache's pythia-70m."""
    (folder,) = (cache / "models--EleutherAI--pythia-70m" / "snapshots").iterdir()
    return folder


def evaluate_args(data: str, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", REPO_ID, "--checkpoint", str(STEP), "--sequences-per-step",
            str(PER_STEP), "--data", data, "--out", str(out), "--engine", "hf", "--dtype",
            "float32", "--chunk-size", "8", "--no-progress", *extra]


def offline(args: list[str], tmp_path: Path, cache: Path) -> subprocess.CompletedProcess:
    """`vmem ARGS` in a fresh process as on a compute node: HF_HUB_OFFLINE=1, the cache given."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               HF_HOME=str(tmp_path / "hf-home"))
    return subprocess.run([sys.executable, "-m", "vmem.cli", *args], capture_output=True,
                          text=True, timeout=600, env=env)


def scores(out: Path) -> pd.DataFrame:
    return pd.concat(pd.read_csv(p) for p in sorted(out.glob("scores-*.csv"))).sort_values("index")


def check_run(out: Path, cache: Path, model_dir: str) -> dict:
    """The run's manifest, checked: revision stepN, the weights' fingerprint from the cache, and
    the trained weights loaded (the sequences they were trained on are memorized)."""
    manifest = json.loads((out / "manifest.json").read_text())
    settings = manifest["settings"]
    assert (settings["model"], settings["revision"]) == (REPO_ID, f"step{STEP}")
    assert (settings["start"], settings["stop"], manifest["step"]) == (0, STEP * PER_STEP, STEP)
    # The fingerprint is the cache's: the weights' blob is named by their SHA-256.
    blob = Path(os.path.realpath(snapshot(cache) / WEIGHTS))
    data = (Path(model_dir) / WEIGHTS).read_bytes()
    assert blob.name == hashlib.sha256(data).hexdigest()
    assert manifest["weights"] == {
        "sha256": combined({WEIGHTS: blob.name}), "how": "hub",
        "files": [{"name": WEIGHTS, "size": len(data), "sha256": blob.name}]}
    rows = scores(out)
    assert rows["index"].tolist() == list(range(STEP * PER_STEP))
    assert set(rows.loc[rows["score"] == 1.0, "index"]) == set(range(MEMORIZED)) - {EOS_SEQUENCE}
    return manifest


def test_a_pythia_checkpoint_runs_offline_from_the_hub_cache_and_resumes(
        tmp_path, hub_cache, tiny_model_dir, tiny_dataset):
    out = tmp_path / "run"
    args = evaluate_args(tiny_dataset, out)
    done = offline(args, tmp_path, hub_cache)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = check_run(out, hub_cache, tiny_model_dir)

    # The same command again does nothing new.
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = offline(args, tmp_path, hub_cache)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "is already finished" in again.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    # With a chunk left to do, the model loads from the cache again and keeps the fingerprint.
    undo_last_chunk(out)
    resumed = offline(args, tmp_path, hub_cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "scored 8 sequences" in resumed.stderr
    assert json.loads((out / "manifest.json").read_text())["weights"] == manifest["weights"]
    assert scores(out)["index"].tolist() == list(range(STEP * PER_STEP))


@pytest.mark.slow
def test_vllm_loads_a_pythia_checkpoint_offline_from_the_hub_cache(tmp_path, hub_cache,
                                                                   tiny_model_dir, tiny_dataset):
    args = evaluate_args(tiny_dataset, tmp_path / "run")
    args[args.index("--engine") + 1] = "vllm"
    done = offline(args, tmp_path, hub_cache)
    assert done.returncode == 0, done.stderr[-2000:]
    check_run(tmp_path / "run", hub_cache, tiny_model_dir)


def test_a_revision_the_cache_lacks_is_one_line_naming_its_download(
        tmp_path, capsys, hub_cache, tiny_dataset, offline_hub):
    out = tmp_path / "run"
    # pythia-70m is cached at step8 only (in --download-dir); step4 is not.
    args = evaluate_args(tiny_dataset, out, "--download-dir", str(hub_cache))
    args[args.index("--checkpoint") + 1] = "4"
    err = cli_error(capsys, args)
    assert err == (f"vmem: error: model '{REPO_ID}' at revision 'step4' is not in the hub cache "
                   f"{hub_cache} and HF_HUB_OFFLINE is set; fetch it on a node with network "
                   f"access first: hf download {REPO_ID} --revision step4 --cache-dir {hub_cache}")
    assert not out.exists()


def test_a_model_the_cache_lacks_is_one_line_naming_its_download(
        tmp_path, capsys, tiny_model_dir, tiny_dataset, offline_hub):
    write_hub_cache(offline_hub, REPO_ID, f"step{STEP}", model_files(tiny_model_dir))
    out = tmp_path / "run"
    args = evaluate_args(tiny_dataset, out)
    args[args.index("--model") + 1] = "EleutherAI/pythia-160m-deduped-v0"
    err = cli_error(capsys, args)
    assert err == ("vmem: error: model 'EleutherAI/pythia-160m-deduped-v0' at revision 'step8' is "
                   f"not in the hub cache {offline_hub} and HF_HUB_OFFLINE is set; fetch it on a "
                   "node with network access first: hf download EleutherAI/pythia-160m-deduped-v0 "
                   "--revision step8")
    assert not out.exists()


def test_an_interrupted_download_is_named_too(tmp_path, capsys, hub_cache, tiny_dataset,
                                              offline_hub):
    # The config arrived, the weights did not (their link is missing).
    (snapshot(hub_cache) / WEIGHTS).unlink()
    err = cli_error(capsys, evaluate_args(tiny_dataset, tmp_path / "run", "--download-dir",
                                          str(hub_cache)))
    assert "at revision 'step8' has no *.safetensors, *.bin, *.pt files in the hub cache" in err
    assert err.endswith(f"hf download {REPO_ID} --revision step8 --cache-dir {hub_cache}")
