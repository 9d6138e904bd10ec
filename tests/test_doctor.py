"""`vmem doctor`: it passes on a sound setup (vLLM against transformers in float32 on the tiny
model, output on S3), and each broken input (data, output, model, engines that disagree) fails
the check that names it, the checks that need it skipped, exit 1.

vLLM starts twice in this file: the passing run, and a model folder whose weights vLLM and
transformers read from different files. The other faults stop before any engine starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import GPTNeoXForCausalLM

from tests.cli import cli_error
from tests.models import MEMORIZED, NUM_SEQUENCES, tiny_config
from vmem import hardware
from vmem.cli import main
from vmem.doctor import FAIL, OK, SKIP, Doctor, diagnose
from vmem.engines import EngineConfig

CHECKS = ["machine", "versions", "model", "data", "output", "engines agree"]
# Paper mode masks end-of-text, so the trained sequence whose continuation holds it is not
# memorized.
MEMORIZED_IN_PAPER_MODE = MEMORIZED - 1


def doctor(argv: list[str]) -> tuple[int, dict[str, tuple[str, str, str]]]:
    """Run `vmem doctor ARGV` in-process: its exit code and table, name → (mark, found, remedy)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            code = main(["doctor", *argv])
        except SystemExit as exit_:
            code = exit_.code
    rows: dict[str, list[str]] = {}
    name = None
    for line in printed.getvalue().splitlines():
        if line.startswith((OK, FAIL, SKIP)):
            name = next(n for n in CHECKS if line[2:].startswith(n + " "))
            rows[name] = [line[0], line[2 + len(name):].strip(), ""]
        elif line.strip().startswith("remedy: "):
            rows[name][2] = line.strip().removeprefix("remedy: ")
    assert list(rows) == CHECKS, printed.getvalue()
    return code, {n: tuple(r) for n, r in rows.items()}


def marks(table: dict) -> dict[str, str]:
    return {name: row[0] for name, row in table.items()}


def test_a_sound_setup_passes_every_check(tiny_model_dir, tiny_dataset, tiny_tokens, s3_server,
                                          s3_client, s3_bucket):
    code, table = doctor(["--model", tiny_model_dir, "--data", tiny_dataset, "--checkpoint", "5",
                          "--sequences-per-step", "64", "--out", f"s3://{s3_bucket}/runs/a",
                          "--s3-endpoint", s3_server, "--dtype", "float32"])
    assert code == 0
    assert set(marks(table).values()) == {OK}, table
    assert "end-of-text id(s) 0" in table["model"][1]
    data = table["data"][1]
    assert f"{NUM_SEQUENCES} sequences × 96 uint16 tokens; range [0, 320)" in data
    first, last = (" ".join(map(str, tiny_tokens[row, :6])) for row in (0, 319))
    assert f"rows 0 [{first} …] and 319 [{last} …] read" in data
    assert "probe file written, read back and deleted" in table["output"][1]
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)  # nothing left
    found = table["engines agree"][1]
    assert found.startswith("64 sequences [0, 64) in float32: generate 64 identical, 0 near-tie, "
                            "0 real; verify 64 identical, 0 near-tie, 0 real")
    assert (f"memorized vLLM {MEMORIZED_IN_PAPER_MODE}, "
            f"transformers {MEMORIZED_IN_PAPER_MODE}") in found


def test_with_engine_hf_the_comparison_is_skipped_and_a_new_out_is_left_absent(
        tmp_path, tiny_model_dir, tiny_dataset):
    out = tmp_path / "runs" / "a"
    code, table = doctor(["--model", tiny_model_dir, "--data", tiny_dataset, "--out", str(out),
                          "--engine", "hf", "--dtype", "float32"])
    assert code == 0
    assert marks(table) == {**dict.fromkeys(CHECKS[:-1], OK), "engines agree": SKIP}
    assert "--engine hf" in table["engines agree"][1]
    assert list(tmp_path.iterdir()) == []  # the folders made for the probe are gone


@pytest.mark.parametrize("fault", ["truncated", "missing shard"])
def test_unreadable_data_fails_the_data_check(tmp_path, tiny_model_dir, tiny_dataset,
                                              tiny_tokens, fault):
    if fault == "truncated":
        data = tmp_path / "tiny"
        for suffix in (".bin", ".idx"):
            shutil.copy(tiny_dataset + suffix, str(data) + suffix)
        whole = Path(str(data) + ".bin").read_bytes()
        Path(str(data) + ".bin").write_bytes(whole[:len(whole) // 2])
        expected = "(truncated download?)"
    else:
        from vmem.io import mmidx

        data = tmp_path / "shards"
        shards = mmidx.write_sharded(data, tiny_tokens, shard_bytes=20_000)
        Path(shards[1]).unlink()
        expected = f"{shards[1]}: missing from the shard set"
    code, table = doctor(["--model", tiny_model_dir, "--data", str(data),
                          "--out", str(tmp_path / "out"), "--dtype", "float32"])
    assert code == 1
    assert marks(table) == {"machine": OK, "versions": OK, "model": OK, "data": FAIL,
                            "output": OK, "engines agree": SKIP}
    assert expected in table["data"][1] and "--data" in table["data"][2]
    assert "needs the model and data checks" in table["engines agree"][1]


def test_a_checkpoint_beyond_the_data_fails_the_data_check(tmp_path, tiny_model_dir,
                                                           tiny_dataset):
    code, table = doctor(["--model", tiny_model_dir, "--data", tiny_dataset, "--checkpoint", "11",
                          "--sequences-per-step", "64", "--out", str(tmp_path), "--engine", "hf"])
    assert code == 1 and marks(table)["data"] == FAIL
    assert f"--checkpoint 11: selects [0, 704), outside {tiny_dataset}" in table["data"][1]


def test_an_unwritable_output_fails_the_output_check(tmp_path, tiny_model_dir, tiny_dataset,
                                                     s3_server):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, expected in ((str(blocker / "out"), f"--out {blocker / 'out'}: cannot write there"),
                          ("s3://no-such-bucket-for-vmem/run", "no such bucket")):
        code, table = doctor(["--model", tiny_model_dir, "--data", tiny_dataset, "--out", out,
                              "--s3-endpoint", s3_server, "--engine", "hf"])
        assert code == 1
        assert marks(table) == {**dict.fromkeys(CHECKS[:4], OK), "output": FAIL,
                                "engines agree": SKIP}
        assert expected in table["output"][1] and "--out" in table["output"][2]
    assert blocker.read_text() == "not a folder"


def test_a_model_that_will_not_load_fails_the_model_check(tmp_path, tiny_model_dir,
                                                          tiny_dataset):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text('{"model_type": "gpt_neox", ')
    code, table = doctor(["--model", str(broken), "--data", tiny_dataset,
                          "--out", str(tmp_path / "out"), "--dtype", "float32"])
    assert code == 1
    assert marks(table) == {"machine": OK, "versions": OK, "model": FAIL, "data": OK,
                            "output": OK, "engines agree": SKIP}
    assert f"model '{broken}' cannot be loaded" in table["model"][1]


def test_tokens_beyond_the_models_vocabulary_fail_the_data_check(tmp_path, tiny_model_dir,
                                                                 tiny_dataset, tiny_tokens):
    other = tmp_path / "small-vocabulary"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": 256}))
    code, table = doctor(["--model", str(other), "--data", tiny_dataset,
                          "--out", str(tmp_path / "out"), "--dtype", "float32"])
    assert code == 1
    assert marks(table) == {"machine": OK, "versions": OK, "model": OK, "data": FAIL,
                            "output": OK, "engines agree": SKIP}
    top = max(tiny_tokens[:64].max(), tiny_tokens[-1].max())
    assert f"token id {top} is outside the model's vocabulary of 256" in table["data"][1]


def test_bfloat16_where_the_cpu_emulates_it_fails_the_machine_check(
        monkeypatch, tmp_path, tiny_model_dir, tiny_dataset):
    if hardware.on_gpu():
        pytest.skip("the CPU's bfloat16 matters only without a GPU")
    # oneDNN capped at AVX2 computes bfloat16 as an AVX2 CPU does: emulated.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    hardware.cpu_kind.cache_clear()
    try:
        code, table = doctor(["--model", tiny_model_dir, "--data", tiny_dataset,
                              "--out", str(tmp_path), "--engine", "hf", "--dtype", "bfloat16"])
    finally:
        monkeypatch.undo()
        hardware.cpu_kind.cache_clear()
    assert code == 1 and marks(table)["machine"] == FAIL
    assert "bfloat16 is emulated" in table["machine"][1]


def test_usage_errors_are_one_line(capsys, tmp_path, tiny_model_dir, tiny_dataset):
    base = ["doctor", "--model", tiny_model_dir, "--data", tiny_dataset, "--out", str(tmp_path)]
    assert "-n 0: expected a positive number" in cli_error(capsys, [*base, "-n", "0"])
    assert "--tolerance -1.0: expected" in cli_error(capsys, [*base, "--tolerance", "-1"])


@pytest.fixture
def mixed_model(tmp_path, tiny_model_dir) -> str:
    """The trained model's folder, plus an untrained model's weights in another file and a
    `model.safetensors.index.json` that lists only that file. transformers loads
    `model.safetensors` where it exists; vLLM loads the safetensors files the index lists."""
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_model_dir, folder)
    torch.manual_seed(1)
    GPTNeoXForCausalLM(tiny_config()).save_pretrained(tmp_path / "untrained")
    shutil.move(tmp_path / "untrained" / "model.safetensors", folder / "untrained.safetensors")
    with safe_open(folder / "untrained.safetensors", "pt") as f:
        weight_map = dict.fromkeys(f.keys(), "untrained.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return str(folder)


def test_engines_that_disagree_fail_the_agreement_check(tmp_path, mixed_model, tiny_dataset):
    rows = list(diagnose(Doctor(EngineConfig(mixed_model, engine="vllm", dtype="float32"),
                                data=tiny_dataset, out=str(tmp_path / "out"))))
    assert [(r.name, r.mark) for r in rows] == [*((n, OK) for n in CHECKS[:-1]),
                                                 ("engines agree", FAIL)]
    agreement = rows[-1]
    # Random weights memorize nothing; the trained ones what they were trained on.
    assert f"memorized vLLM 0, transformers {MEMORIZED_IN_PAPER_MODE}" in agreement.found
    comparison = agreement.comparison
    gaps = [d.gap for d in comparison.disagreements]
    generated = [d for d in comparison.disagreements if d.method == "generate"]
    assert len({d.row for d in generated}) == len(generated) == 64  # the first per sequence
    assert "generate 0 identical" in agreement.found and ", 0 near-tie, 64 real" in agreement.found
    largest = max(comparison.disagreements, key=lambda d: d.gap)
    assert agreement.remedy.startswith(
        f"largest: sequence {largest.row} ({largest.method}, position {largest.position}): "
        f"vLLM {largest.tokens[0]}, transformers {largest.tokens[1]}")
    # Above every gap, the same disagreements are near-ties: reported, no longer a failure.
    lenient = comparison.row(max(gaps) * 2)
    assert lenient.mark == OK and "generate 0 identical, 64 near-tie, 0 real" in lenient.found
