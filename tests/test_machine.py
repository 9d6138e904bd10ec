"""Defaults that follow the machine: dtype and engine from the CPU, vLLM's KV cache from the work.

The other CPU kind is run for real: ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 make
torch on an AVX512/AMX machine dispatch and compute like an AVX2-only CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import GPTNeoXConfig

from tests.cli import cli_error
from tests.models import tiny_config
from vmem import hardware, pythia
from vmem.cli import main
from vmem.engines import (
    CPU_BLOCK_TOKENS,
    CPU_MAX_NUM_SEQS,
    KV_MARGIN,
    NODE_RESERVE,
    GiB,
    choose_dtype,
    choose_engine,
    gpu_rows_per_pass,
    kv_bytes_per_token,
    plan_cpu_kv_cache,
    weight_bytes,
)
from vmem.errors import VmemError

# An AVX2-only CPU machine, with no GPU visible even where the tests run on a GPU node.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(hardware, "on_gpu", lambda: False)
VMEM = [sys.executable, "-m", "vmem.cli"]


def in_child(code: str, env: dict[str, str]) -> str:
    """Run Python code in a fresh interpreter (torch reads these variables once, at start)."""
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_avx2_emulation_makes_torch_act_as_an_avx2_cpu():
    probe = ("import torch; print(torch.backends.cpu.get_cpu_capability(), "
             "torch.ops.mkldnn._is_mkldnn_bf16_supported())")
    assert in_child(probe, AVX2_ONLY) == "AVX2 False"


@pytest.mark.parametrize(("flags", "isa_cap", "kind"), [
    ({"avx512f", "amx_bf16", "avx512_bf16"}, None, "AMX"),
    ({"avx512f", "avx512_bf16"}, None, "AVX512-BF16"),
    ({"avx512f"}, None, "AVX512"),
    ({"avx512f", "amx_bf16", "avx512_bf16"}, "AVX512_CORE_BF16", "AVX512-BF16"),
    ({"avx512f", "amx_bf16", "avx512_bf16"}, "AVX2", "AVX2"),
])
def test_cpu_kind_from_the_flags_and_onednns_cap(monkeypatch, cpu_only, flags, isa_cap, kind):
    import torch

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    if isa_cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    hardware.cpu_kind.cache_clear()
    try:
        assert hardware.cpu_kind() == kind
        expected = "bfloat16" if kind in ("AMX", "AVX512-BF16") else "float32"
        choice = choose_dtype("auto")
        assert choice.value == expected and kind in choice.reason
    finally:
        hardware.cpu_kind.cache_clear()


def test_on_the_avx2_kind_auto_is_float32_and_transformers():
    code = ("from vmem.engines import choose_dtype, choose_engine; "
            "d, e = choose_dtype('auto'), choose_engine('auto'); print(d.value, e.value, d.reason)")
    assert in_child(code, AVX2_ONLY) == "float32 hf AVX2 CPU has no native bfloat16"


def test_forced_settings_are_kept(cpu_only):
    assert choose_dtype("float16").value == "float16"
    assert choose_engine("vllm").value == "vllm"
    assert choose_engine("auto").value == "hf"


def test_auto_keeps_what_the_runs_manifest_records(capsys, tmp_path, tiny_model_dir,
                                                   tiny_dataset):
    """Tasks of one run on different machines (or resumed after an upgrade) agree: `auto` takes
    the manifest's engine and dtype instead of refusing the folder as another run's."""
    base = ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset, "--start", "0",
            "--stop", "32", "--out", str(tmp_path / "run"), "--no-progress", "--num-tasks", "2"]
    assert main(base + ["--task-id", "0", "--dtype", "bfloat16", "--engine", "hf"]) == 0
    assert main(base + ["--task-id", "1"]) == 0
    assert "dtype bfloat16 (as the run's manifest records)" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (manifest["settings"]["dtype"], manifest["settings"]["engine"]) == ("bfloat16", "hf")
    assert len(list((tmp_path / "run" / "tasks").glob("task-*.json"))) == 2


def test_evaluate_on_the_avx2_kind_records_its_choices(tmp_path, tiny_model_dir, tiny_dataset):
    """The defaults a user gets, run for real under the emulation: what was chosen and why is
    printed once and recorded in the manifest."""
    out = tmp_path / "run"
    done = subprocess.run(VMEM + ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset,
                                  "--start", "0", "--stop", "64", "--out", str(out),
                                  "--no-progress"],
                          env={**os.environ, **AVX2_ONLY}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("vmem: engine hf (") == 1
    assert "dtype float32 (AVX2 CPU has no native bfloat16)" in done.stderr
    assert "memorized 7 " in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["settings"]["engine"], manifest["settings"]["dtype"]) == ("hf", "float32")
    assert manifest["choices"]["dtype"] == "AVX2 CPU has no native bfloat16"
    assert manifest["choices"]["engine"].startswith("no GPU")


# -- vLLM's KV cache on CPU ---------------------------------------------------------------------
MODELS = {"test": tiny_config(), **{
    f"pythia-{size}": GPTNeoXConfig(**pythia.neox_config_kwargs(size))
    for size in ("70m", "1b", "12b")}}
NODES = {"4 GiB": 4 * GiB, "7.6 GiB": int(7.6 * GiB), "24 GiB": 24 * GiB, "1 TiB": 1024 * GiB}


def per_sequence(config, dtype: str, max_len: int = 65) -> int:
    blocks = -(-max_len // CPU_BLOCK_TOKENS)
    return blocks * CPU_BLOCK_TOKENS * kv_bytes_per_token(config, dtype)


def test_kv_bytes_per_token_of_pythia_shapes():
    # 2 (keys, values) x layers x hidden x bytes: 70m has 6 layers of 512, 12b 36 of 5120.
    assert kv_bytes_per_token(MODELS["pythia-70m"], "bfloat16") == 2 * 6 * 512 * 2
    assert kv_bytes_per_token(MODELS["pythia-12b"], "float32") == 2 * 36 * 5120 * 4
    # 12b holds ~11.8 billion parameters: 23.7 GB in bfloat16.
    assert 23 * 10**9 < weight_bytes(MODELS["pythia-12b"], "bfloat16") < 24.5 * 10**9


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kv_cache_is_sized_from_the_work_and_capped_by_the_node(model, node, dtype):
    config, available = MODELS[model], NODES[node]
    seq = per_sequence(config, dtype)
    budget = available * (1 - NODE_RESERVE) - weight_bytes(config, dtype)
    if budget < seq * KV_MARGIN:
        with pytest.raises(VmemError) as err:
            plan_cpu_kv_cache(config, dtype, 65, None, available, node=3)
        assert "do not fit" in str(err.value) and "NUMA node 3" in str(err.value)
        assert "\n" not in str(err.value)
        return
    plan = plan_cpu_kv_cache(config, dtype, 65, None, available)
    assert 1 <= plan.max_num_seqs <= CPU_MAX_NUM_SEQS
    assert plan.bytes >= plan.max_num_seqs * seq  # every sequence in flight has its blocks
    assert plan.bytes <= budget  # and the weights still fit beside it
    if budget >= CPU_MAX_NUM_SEQS * seq * KV_MARGIN:
        assert plan.max_num_seqs == CPU_MAX_NUM_SEQS  # the work, not a share of RAM
        assert plan.bytes < CPU_MAX_NUM_SEQS * seq * KV_MARGIN + 1
    else:
        assert plan.max_num_seqs < CPU_MAX_NUM_SEQS  # fewer in flight on a small node


def test_kv_cache_examples(cpu_only):
    # pythia-70m in bfloat16: 256 sequences x one 128-token block x 12,288 B/token x 1.25.
    assert plan_cpu_kv_cache(MODELS["pythia-70m"], "bfloat16", 65, None, 24 * GiB).bytes == \
        503_316_480
    # On a 0.5 GiB node, what fits beside its 0.14 GB of weights: (0.45 GiB - weights) / 1.97 MB.
    half = plan_cpu_kv_cache(MODELS["pythia-70m"], "bfloat16", 65, None, GiB // 2)
    assert half.max_num_seqs == (int(0.9 * GiB // 2) - 140_771_328) // 1_966_080 == 174
    # The demo-size model on the 4 GiB node of an AVX2 EPYC: a few MB, not a share of RAM.
    small = plan_cpu_kv_cache(MODELS["test"], "float32", 65, None, 4 * GiB)
    assert small.max_num_seqs == 256 and small.bytes < 100 * 2**20
    # pythia-12b in bfloat16 needs a node larger than 24 GiB; on 1 TiB it gets 256 sequences.
    with pytest.raises(VmemError):
        plan_cpu_kv_cache(MODELS["pythia-12b"], "bfloat16", 65, None, 24 * GiB)
    big = plan_cpu_kv_cache(MODELS["pythia-12b"], "bfloat16", 65, None, 1024 * GiB)
    assert big.max_num_seqs == 256 and 20 * GiB < big.bytes < 40 * GiB
    # A user's --max-num-seqs is the upper bound.
    assert plan_cpu_kv_cache(MODELS["pythia-70m"], "bfloat16", 65, 64, 24 * GiB).max_num_seqs == 64


def test_numa_memory_is_read_for_the_workers_node():
    node = hardware.worker_numa_node()
    available = hardware.numa_available_bytes(node)
    assert 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_tensor_parallelism_is_vllms(capsys, tmp_path, tiny_model_dir, tiny_dataset, cpu_only):
    """--tp N > 1 under `auto` picks vLLM; with the transformers engine it is refused, before
    anything is loaded or written, instead of being recorded and ignored."""
    assert choose_engine("auto", tp=2).value == "vllm"
    assert choose_engine("auto", tp=1).value == "hf"
    out = tmp_path / "out"
    err = cli_error(capsys, ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset,
                             "--start", "0", "--stop", "8", "--out", str(out), "--engine", "hf",
                             "--tp", "2"])
    assert "--tp 2: the transformers engine (--engine hf)" in err and "--engine vllm" in err
    assert not out.exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_transformers_rows_per_pass_on_a_gpu_follow_its_free_memory(dtype):
    """pythia-12b's KV cache alone is 2 (keys, values) x 36 layers x 5120 x 2 bytes per token
    in float16: 1,024 rows of 65 tokens would not fit a 40 GB card after its 24 GB of weights."""
    twelve_b = GPTNeoXConfig(**pythia.neox_config_kwargs("12b"))
    seventy_m = GPTNeoXConfig(**pythia.neox_config_kwargs("70m"))
    itemsize = 2 if dtype != "float32" else 4
    free = 16 * GiB
    rows = gpu_rows_per_pass(twelve_b, dtype, 65, free)
    kv_per_row = 2 * 36 * 5120 * itemsize * 65
    assert 1 <= rows < 1024 and rows * kv_per_row <= free
    # More memory, more rows; a small model is bounded by the cap, not by memory.
    assert gpu_rows_per_pass(twelve_b, dtype, 65, 2 * free) >= 2 * rows - 1
    assert gpu_rows_per_pass(seventy_m, dtype, 65, 80 * GiB) == 1024
    with pytest.raises(VmemError, match=r"--engine hf: one sequence of 65 tokens needs .* "
                                        r"--engine vllm --tp N"):
        gpu_rows_per_pass(twelve_b, dtype, 65, 1 << 20)
