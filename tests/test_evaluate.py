"""The evaluator against the real vLLM engine, transformers, and files on disk."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.cli import cli_error
from tests.models import EOS_SEQUENCE, MEMORIZED, NUM_SEQUENCES, reference_cont_logprobs
from vmem.cli import build_parser, engine_config, main
from vmem.engines import EngineConfig
from vmem.errors import VmemError
from vmem.evaluate import Evaluation, evaluate
from vmem.quiet import QUIET_DEFAULTS
from vmem.runs.merge import merge_run

VMEM = [sys.executable, "-m", "vmem.cli"]


def reference_scores(model_dir: str, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's method, written plainly: HF generate, fp32, min_length masks end-of-text."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = torch.from_numpy(tokens[:, :32].astype(np.int64))
    with torch.inference_mode():
        out = model.generate(prompts, max_length=64, min_length=64, do_sample=False,
                             pad_token_id=0, eos_token_id=0)
    generated = out[:, 32:].numpy()
    return generated, (generated == tokens[:, 32:64]).mean(axis=1)


def read_rows(out: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(out.glob("scores-*.csv"))]
    return pd.concat(frames).sort_values("index").reset_index(drop=True)


def run(tmp: Path, engine, model_dir: str, data: str, **kw) -> pd.DataFrame:
    out = tmp / kw.pop("name", "run")
    ev = Evaluation(engine=EngineConfig(model_dir, engine=kw.pop("engine_name", "vllm"),
                                        dtype="float32"),
                    data=data, out=str(out), progress=False, **kw)
    evaluate(ev, engine=engine)
    return read_rows(out)


def test_vllm_matches_transformers_and_the_papers_method(
        tmp_path, vllm_engine, hf_engine, tiny_model_dir, tiny_dataset, tiny_tokens):
    prompts = tiny_tokens[:, :32].astype(np.int64)
    from_vllm = vllm_engine.generate(prompts, 32, False)
    assert np.array_equal(from_vllm, hf_engine.generate(prompts, 32, False))
    expected_generation, expected_score = reference_scores(tiny_model_dir, tiny_tokens)
    assert np.array_equal(from_vllm, expected_generation)

    rows = run(tmp_path, vllm_engine, tiny_model_dir, tiny_dataset, start=0,
               stop=NUM_SEQUENCES, chunk_size=200)
    assert rows["index"].tolist() == list(range(NUM_SEQUENCES))
    assert np.array_equal(rows["score"].to_numpy(), expected_score)
    assert np.array_equal(rows["matches"].to_numpy(), (expected_score * 32).round())
    equal = expected_generation == tiny_tokens[:, 32:64]
    leading = [int(np.argmin(r)) if not r.all() else 32 for r in equal]
    assert rows["prefix_match"].tolist() == leading
    # Approximate memorization: 1 - Levenshtein distance / 32, by the textbook recurrence.
    similarity = [1 - levenshtein(g.tolist(), t.tolist()) / 32
                  for g, t in zip(expected_generation, tiny_tokens[:, 32:64], strict=True)]
    assert rows["edit_similarity"].tolist() == similarity


def levenshtein(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[:], i
        for j, y in enumerate(b, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (x != y))
    return row[-1]


def test_trained_sequences_are_memorized_and_unseen_ones_are_not(
        tmp_path, vllm_engine, tiny_model_dir, tiny_dataset):
    rows = run(tmp_path, vllm_engine, tiny_model_dir, tiny_dataset, start=0, stop=64)
    memorized = set(rows.loc[rows["score"] == 1.0, "index"])
    assert memorized == set(range(MEMORIZED)) - {EOS_SEQUENCE}
    assert rows.loc[rows["index"] >= MEMORIZED, "score"].max() < 0.5


def test_eos_in_the_continuation_blocks_a_perfect_score_only_in_paper_mode(
        tmp_path, vllm_engine, hf_engine, tiny_model_dir, tiny_dataset):
    for engine, name in ((vllm_engine, "vllm"), (hf_engine, "hf")):
        paper = run(tmp_path, engine, tiny_model_dir, tiny_dataset, start=0, stop=MEMORIZED,
                    name=f"paper-{name}", engine_name=name)
        allowed = run(tmp_path, engine, tiny_model_dir, tiny_dataset, start=0, stop=MEMORIZED,
                      allow_eos=True, name=f"allow-{name}", engine_name=name)
        assert paper.loc[EOS_SEQUENCE, "score"] < 1.0
        assert paper.loc[EOS_SEQUENCE, "prefix_match"] == 4  # the first EOS is at position 4
        assert allowed.loc[EOS_SEQUENCE, "score"] == 1.0
        assert (allowed["score"] == 1.0).all()
        manifest = json.loads((tmp_path / f"allow-{name}" / "manifest.json").read_text())
        assert manifest["settings"]["eos_mode"] == "allow"


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_logprobs_of_the_true_continuation(request, tmp_path, engine_name, tiny_model_dir,
                                           tiny_dataset, tiny_tokens):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    rows = run(tmp_path, engine, tiny_model_dir, tiny_dataset, start=0, stop=64, logprobs=True)
    reference = reference_cont_logprobs(tiny_model_dir, tiny_tokens[:64], 32, 32)
    np.testing.assert_allclose(rows["cont_logprob"], reference, rtol=1e-4, atol=1e-3)
    # A memorized continuation is near-certain; a random one is not.
    assert rows.loc[rows["score"] == 1.0, "cont_logprob"].min() > -1.0
    assert rows.loc[rows["index"] >= MEMORIZED, "cont_logprob"].max() < -50


def test_offset_and_lengths_select_the_right_window(tmp_path, vllm_engine, tiny_model_dir,
                                                    tiny_dataset, tiny_tokens):
    rows = run(tmp_path, vllm_engine, tiny_model_dir, tiny_dataset, start=100, stop=164,
               offset=8, prompt_len=24, cont_len=16)
    window = tiny_tokens[100:164].astype(np.int64)
    generated = vllm_engine.generate(window[:, 8:32], 16, False)
    assert np.array_equal(rows["matches"], (generated == window[:, 32:48]).sum(axis=1))
    assert np.array_equal(rows["score"], rows["matches"] / 16)


def test_cli_evaluate_with_vllm_writes_score_files_manifest_and_resumes(tmp_path, tiny_model_dir,
                                                                    tiny_dataset):
    out = tmp_path / "cli"
    args = ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset, "--start", "0",
            "--stop", "300", "--out", str(out), "--engine", "vllm", "--dtype", "float32",
            "--chunk-size", "128", "--no-progress"]
    # The child must quiet the libraries itself: in-process CLI calls of earlier tests set the
    # same variables in this process's environment.
    env = {k: v for k, v in os.environ.items() if k not in QUIET_DEFAULTS}
    proc = subprocess.run(VMEM + args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "memorized 7 (2.3333%)" in proc.stderr
    # vmem's own lines only: vLLM's logs, warnings and loading bars are off without --verbose
    # (but for its Triton probe, which each engine process logs while importing vLLM, before
    # vLLM's logging is configured).
    noise = [line for line in proc.stderr.splitlines()
             if not line.startswith("vmem") and not line.startswith("Triton is installed")]
    assert noise == []
    rows = read_rows(out)
    assert rows["index"].tolist() == list(range(300))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["engine"] == "vllm"
    assert manifest["settings"]["dtype"] == "float32"
    assert manifest["engine_info"]["vllm"]
    assert len(list(out.glob("scores-*.csv"))) == 3  # 128 + 128 + 44
    # Started again, the finished slice exits at once without starting an engine.
    again = subprocess.run(VMEM + args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already finished" in again.stderr


def _wait_for_score_files(out: Path, count: int, proc: subprocess.Popen,
                          timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while len(list(out.glob("scores-*.csv"))) < count:
        assert proc.poll() is None, "evaluate finished before it could be killed"
        assert time.time() < deadline, "no score file appeared"
        time.sleep(0.05)


def test_sigkill_at_any_moment_then_rerun_gives_exactly_once_equal_rows(
        tmp_path, tiny_model_dir, tiny_dataset):
    # The hf engine starts in seconds, so several kills stay cheap; durability is the sink's job.
    def command(out):
        return VMEM + ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset,
                       "--start", "0", "--stop", str(NUM_SEQUENCES), "--out", str(out),
                       "--engine", "hf", "--dtype", "float32", "--chunk-size", "40",
                       "--no-progress"]

    whole = tmp_path / "whole"
    subprocess.run(command(whole), check=True, capture_output=True, timeout=600)
    expected = read_rows(whole)

    killed = tmp_path / "killed"
    for files_before_kill in (1, 5, 11):
        proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _wait_for_score_files(killed, files_before_kill, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(list(killed.glob("scores-*.csv"))) < NUM_SEQUENCES // 40
    subprocess.run(command(killed), check=True, capture_output=True, timeout=600)

    assert not list(killed.glob(".*.tmp"))  # killed writes never leave a partial file
    rows = read_rows(killed)
    assert rows["index"].tolist() == list(range(NUM_SEQUENCES))
    pd.testing.assert_frame_equal(rows, expected)
    merged = merge_run(str(killed), str(tmp_path / "merged.csv"))
    assert merged["rows"] == NUM_SEQUENCES


@pytest.fixture
def cli_base(tiny_model_dir, tiny_dataset):
    return ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset, "--engine", "hf",
            "--dtype", "float32", "--no-progress"]


def test_bad_inputs_are_one_line_with_nothing_written(capsys, tmp_path, cli_base, tiny_dataset):
    out = tmp_path / "out"
    base = list(cli_base)
    cases = {
        "model '/nonexistent/model': no such folder":
            ["evaluate", "--model", "/nonexistent/model", "--data", tiny_dataset,
             "--start", "0", "--stop", "8", "--out", str(out)],
        # Tensor parallelism is vLLM's: with --engine hf any --tp > 1 is refused (test_tp
        # checks the sizes vLLM refuses).
        "--tp 3: the transformers engine (--engine hf)": base + ["--start", "0", "--stop", "8",
                                                                 "--out", str(out), "--tp", "3"],
        "--cont-len 80 = 112": base + ["--start", "0", "--stop", "8", "--out", str(out),
                                       "--cont-len", "80"],
        str(NUM_SEQUENCES): base + ["--start", "0", "--stop", "100000", "--out", str(out)],
    }
    for expected, argv in cases.items():
        assert expected in cli_error(capsys, argv)
        assert not out.exists()


def test_a_hub_revision_that_cannot_be_had_is_named(capsys, tmp_path, tiny_dataset, offline_hub):
    err = cli_error(capsys, ["evaluate", "--model", "EleutherAI/pythia-70m-deduped", "--data",
                          tiny_dataset, "--revision", "step0", "--start", "0", "--stop", "8",
                          "--out",
                          str(tmp_path / "o"), "--engine", "hf"])
    assert "model 'EleutherAI/pythia-70m-deduped' at revision 'step0' is not in the hub" in err
    assert not (tmp_path / "o").exists()


def test_python_callers_get_the_same_default_revision_as_the_cli(tmp_path, tiny_dataset,
                                                                 offline_hub):
    # A Pythia model at --checkpoint N loads revision stepN, from Python as from the CLI.
    ev = Evaluation(engine=EngineConfig("EleutherAI/pythia-70m-deduped", engine="hf"),
                    data=tiny_dataset, out=str(tmp_path / "o"), checkpoint=2,
                    sequences_per_step=8, progress=False)
    with pytest.raises(VmemError, match="at revision 'step2' is not in the hub cache"):
        evaluate(ev)
    assert not (tmp_path / "o").exists()


def test_spot_and_evaluate_honour_every_engine_flag():
    # Each EngineConfig field has a flag, and both commands pass each one on (spot once dropped
    # --max-num-batched-tokens).
    given = {"model": "m", "revision": "step3", "engine": "vllm", "dtype": "bfloat16", "tp": 2,
             "max_num_seqs": 7, "max_num_batched_tokens": 4096, "memory_share": 0.5,
             "enforce_eager": True, "download_dir": "/cache", "seed": 9}
    assert set(given) | {"max_len"} == {f.name for f in dataclasses.fields(EngineConfig)}
    flags = []
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    parser = build_parser()
    spot = parser.parse_args(["spot", *flags, "--data", "d", "--index", "0"])
    ev = parser.parse_args(["evaluate", *flags, "--data", "d", "--out", "o"])
    assert engine_config(spot) == engine_config(ev) == EngineConfig(**given)


def test_out_folder_of_another_run_or_unwritable_is_refused(capsys, tmp_path, cli_base):
    out = tmp_path / "out"
    assert main(cli_base + ["--start", "0", "--stop", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    err = cli_error(capsys, cli_base + ["--start", "0", "--stop", "16", "--out", str(out),
                                     "--offset", "1"])
    assert "different settings (offset: 0 != 1)" in err
    assert sorted(p.name for p in out.iterdir()) == before

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = cli_error(capsys, cli_base + ["--start", "0", "--stop", "16", "--out",
                                     str(blocker / "out")])
    assert f"--out {blocker / 'out'}: cannot write there" in err


def test_spot_shows_prompt_truth_generation_and_marks_mismatches(capsys, tiny_model_dir,
                                                                 tiny_dataset, tiny_tokens):
    assert main(["spot", "--model", tiny_model_dir, "--data", tiny_dataset, "--engine", "hf",
                 "--dtype", "float32", "--index", "0", "--index", str(EOS_SEQUENCE),
                 "--index", "500"]) == 0
    text = capsys.readouterr().out
    blocks = text.split("\n\n")
    assert len(blocks) == 3
    assert "sequence 0 (training step 0): score 1.00000 (32/32 positions), prefix match 32" in text
    assert f"sequence {EOS_SEQUENCE} (training step 0): score" in text
    assert "prefix match 4" in blocks[1]
    truth_line = next(line for line in blocks[2].splitlines() if "truth" in line)
    assert truth_line.split()[1:] == [str(t) for t in tiny_tokens[500, 32:64]]
    assert "[" in next(line for line in blocks[2].splitlines() if "generated" in line)
