"""Tensor parallelism on a real vLLM engine: the tiny model over two CPU workers (one core and
one attention head each) equals one worker and transformers on every sequence, both methods,
paper and allow-eos modes; bad sizes are one line each; the workers' cores and KV caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transformers import GPTNeoXConfig

from tests.cli import cli_error
from tests.models import NUM_SEQUENCES, tiny_config
from vmem import hardware, pythia
from vmem.data import open_dataset
from vmem.engines import (
    TESTED_VLLM,
    EngineConfig,
    HfEngine,
    check_tensor_parallel,
    cpu_threads_bind,
    cpu_worker_nodes,
    eos_token_ids,
    plan_cpu_kv_cache,
    warn_untested_vllm,
    weight_bytes,
)
from vmem.errors import VmemError
from vmem.evaluate import Evaluation, evaluate
from vmem.runs.merge import merge_run
from vmem.spot import spot

ENGINES = ("vllm_tp_engine", "vllm_engine", "hf_engine")
# vLLM's CPU kernels and transformers' sum in other orders: fp32 log-probs agree to ~1e-6.
LOGPROB_ATOL = 1e-4


def windows(tiny_tokens) -> np.ndarray:
    return tiny_tokens[:, :64].astype(np.int64)


@pytest.mark.parametrize("allow_eos", [False, True])
def test_two_workers_equal_one_and_transformers_token_for_token(request, tiny_tokens,
                                                                allow_eos):
    tokens = windows(tiny_tokens)
    results = {}
    for name in ENGINES:
        engine = request.getfixturevalue(name)
        results[name] = (engine.generate(tokens[:, :32], 32, allow_eos),
                         *engine.teacher_forced(tokens, [32], allow_eos, True))
    generated, greedy, logprobs = results["vllm_tp_engine"]
    for name in ENGINES[1:]:
        np.testing.assert_array_equal(generated, results[name][0], err_msg=name)
        np.testing.assert_array_equal(greedy, results[name][1], err_msg=name)
        np.testing.assert_allclose(logprobs, results[name][2], rtol=0, atol=LOGPROB_ATOL,
                                   err_msg=name)
    # The tiny model memorized its training rows: the comparison covers long matching runs.
    assert (generated[:8] == tokens[:8, 32:]).all(axis=1).sum() >= 7
    if not allow_eos:
        assert not (generated == 0).any()  # end-of-text masked at every step


def scored(tmp: Path, engine, tp: int, model: str, data: str, name: str, **kw) -> Path:
    """`evaluate` over every sequence into tmp/name with `engine`; merged beside it."""
    out = tmp / name
    engine_name = "hf" if isinstance(engine, HfEngine) else "vllm"
    evaluate(Evaluation(engine=EngineConfig(model, engine=engine_name, dtype="float32", tp=tp),
                        data=data, out=str(out), start=0, stop=NUM_SEQUENCES, chunk_size=160,
                        logprobs=True, progress=False, **kw), engine=engine)
    merge_run(str(out), str(tmp / f"{name}.parquet"))
    return out


@pytest.mark.parametrize("method", ["generate", "verify"])
@pytest.mark.parametrize("allow_eos", [False, True])
def test_tp2_score_files_equal_tp1_and_transformers(tmp_path, vllm_tp_engine, vllm_engine,
                                                    hf_engine, tiny_model_dir, tiny_dataset,
                                                    method, allow_eos):
    runs = {name: scored(tmp_path, engine, tp, tiny_model_dir, tiny_dataset, name,
                         method=method, allow_eos=allow_eos)
            for name, engine, tp in (("tp2", vllm_tp_engine, 2), ("tp1", vllm_engine, 1),
                                     ("hf", hf_engine, 1))}
    # The same settings (tp is how, not what): the same score files, equal but for the last
    # digits of log-probs (the workers sum their halves of each product in another order).
    files = sorted(p.name for p in runs["tp2"].glob("scores-*.csv"))
    assert files == sorted(p.name for p in runs["tp1"].glob("scores-*.csv")) and files
    tables = {name: pd.read_parquet(tmp_path / f"{name}.parquet") for name in runs}
    logprob = "cont_logprob"
    for name in ("tp1", "hf"):
        pd.testing.assert_frame_equal(tables["tp2"].drop(columns=logprob),
                                      tables[name].drop(columns=logprob))
        np.testing.assert_allclose(tables["tp2"][logprob], tables[name][logprob], rtol=0,
                                   atol=32 * LOGPROB_ATOL)
    flag = tables["tp2"]["memorized" if method == "verify" else "matches"]
    assert (flag == (True if method == "verify" else 32)).sum() >= 7
    info = json.loads((runs["tp2"] / "manifest.json").read_text())["engine_info"]
    assert info["tp"] == 2 and info["vllm"].startswith("0.")
    assert info["model_runner"] in ("v1", "v2") and info["model_runner_reason"]


@pytest.mark.parametrize("method", ["generate", "verify"])
def test_spot_under_tp2_equals_transformers(tiny_model_dir, tiny_dataset, vllm_tp_engine,
                                            hf_engine, method):
    dataset = open_dataset(tiny_dataset)
    indices = [0, 3, 9]
    texts = [spot(dataset, indices, EngineConfig(tiny_model_dir, engine=kind, dtype="float32",
                                                 tp=tp), method=method, engine=engine)
             for kind, tp, engine in (("vllm", 2, vllm_tp_engine), ("hf", 1, hf_engine))]
    assert texts[0] == texts[1]
    assert texts[0].count("sequence ") == len(indices)


def test_bad_tensor_parallel_sizes_are_one_line(capsys, tmp_path, tiny_model_dir, tiny_dataset):
    out = tmp_path / "out"
    base = ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset, "--start", "0",
            "--stop", "8", "--out", str(out), "--engine", "vllm", "--dtype", "float32",
            "--no-progress"]
    for tp in ("3", "0"):
        err = cli_error(capsys, base + ["--tp", tp])
        assert f"--tp {tp}: expected a size that divides the model's 2 attention heads (1, 2)" \
            in err
    # Pythia's big models: 12b has 40 heads, 6.9b 32.
    for size, tp, heads in (("12b", 3, 40), ("6.9b", 5, 32)):
        config = GPTNeoXConfig(**pythia.neox_config_kwargs(size))
        with pytest.raises(VmemError, match=f"model's {heads} attention heads"):
            check_tensor_parallel(tp, config)
    assert not out.exists()


@pytest.mark.skipif(hardware.gpu_count() > 0, reason="the CPU's cores bound --tp without GPUs")
def test_more_workers_than_cores_is_one_line(tmp_path, tiny_model_dir, tiny_dataset):
    # One core for the command (as taskset or a Slurm allocation gives): two workers refused.
    first = hardware.allowed_cpus()[0]
    done = subprocess.run(
        [sys.executable, "-m", "vmem.cli", "evaluate", "--model", tiny_model_dir, "--data",
         tiny_dataset, "--start", "0", "--stop", "8", "--out", str(tmp_path / "out"),
         "--engine", "vllm", "--tp", "2"],
        capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "vmem: error: --tp 2: expected 1..1, this process may use 1 CPU core(s) and no GPU is "
        "visible"]
    assert not (tmp_path / "out").exists()


def test_each_worker_gets_its_own_cores_and_the_users_binding_wins(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    cores = hardware.cpu_cores()
    for tp in range(2, len(cores) + 1):
        ranks = [hardware.parse_cpu_list(r) for r in cpu_threads_bind(tp).split("|")]
        assert len(ranks) == tp and len({len(r) for r in ranks}) == 1  # equal shares
        used = [cpu for rank in ranks for cpu in rank]
        assert len(used) == len(set(used)) == tp * (len(cores) // tp)  # disjoint
        assert set(used) <= set(hardware.allowed_cpus())
        assert len({core[0] for core in cores} & set(used)) == len(used)  # one CPU per core
    assert cpu_threads_bind(1) is None  # one worker: vLLM's own binding
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1|0")
    assert cpu_threads_bind(2) is None
    assert cpu_worker_nodes(2, None) == [hardware.numa_node_of(1), hardware.numa_node_of(0)]
    for wrong in ("0|1|2", "0-x|1"):  # not one list per worker: one line, before vLLM starts
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", wrong)
        with pytest.raises(VmemError, match=f"VLLM_CPU_OMP_THREADS_BIND={wrong}: expected 2 "):
            cpu_worker_nodes(2, None)


@pytest.mark.parametrize("size", ["70m", "12b"])
def test_each_worker_holds_its_share_of_the_kv_cache(size):
    config = GPTNeoXConfig(**pythia.neox_config_kwargs(size))
    big = 4096 * 2**30
    one = plan_cpu_kv_cache(config, "bfloat16", 65, None, big)
    for tp in (2, 4, 8):
        # Where memory is plenty: the same sequences in flight, 1/tp of the heads per worker.
        each = plan_cpu_kv_cache(config, "bfloat16", 65, None, big, tp=tp, workers_on_node=tp)
        assert each.max_num_seqs == one.max_num_seqs
        assert abs(each.bytes * tp - one.bytes) <= tp
    # Where the node is the limit: its workers share it, and about as many sequences fit as
    # for one worker (each needs 1/tp of the weights and of the cache).
    tight = 2 * weight_bytes(config, "float32")
    alone = plan_cpu_kv_cache(config, "float32", 65, None, tight)
    shared = plan_cpu_kv_cache(config, "float32", 65, None, tight, tp=2, workers_on_node=2)
    assert alone.max_num_seqs < 256 and abs(shared.max_num_seqs - alone.max_num_seqs) <= 1
    with pytest.raises(VmemError, match="shared by 2 workers"):
        plan_cpu_kv_cache(config, "float32", 65, None, tight // 2, tp=2, workers_on_node=2)


def test_every_end_of_text_id_is_masked(tiny_model_dir, tiny_tokens, hf_engine):
    tokens = windows(tiny_tokens)[:64]
    free = hf_engine.generate(tokens[:, :32], 32, True)
    favourite = int(np.bincount(free[:, 0]).argmax())  # a token the model often emits first
    config = tiny_config()
    config.eos_token_id = [0, favourite]
    assert eos_token_ids(config) == tuple(sorted({0, favourite}))
    masked = HfEngine(EngineConfig(tiny_model_dir, engine="hf", dtype="float32"),
                      eos_token_ids(config))
    try:
        generated = masked.generate(tokens[:, :32], 32, False)
        greedy, _ = masked.teacher_forced(tokens, [32], False, True)
    finally:
        masked.close()
    assert not np.isin(generated, [0, favourite]).any()
    assert not np.isin(greedy, [0, favourite]).any()
    assert (free[:, 0] == favourite).any()  # so the mask changed something


def test_verification_reads_ties_from_vllms_own_sampler(vllm_engine, tiny_tokens):
    from vllm.logprobs import Logprob

    def entry(*pairs):
        return {token: Logprob(value, rank) for rank, (token, value) in enumerate(pairs, 1)}

    choice = vllm_engine._choice  # the top 3 (GPT-NeoX: one end-of-text id + 2), the truth
    assert vllm_engine.top == 3
    assert choice(entry((7, -0.1), (5, -2.0), (9, -3.0)), allow_eos=False) == 7
    assert choice(entry((9, -0.5), (5, -0.5), (7, -3.0)), allow_eos=False) is None  # tied
    # End-of-text leads: in paper mode the next is the choice, strictly above the third.
    assert choice(entry((0, -0.1), (5, -2.0), (9, -3.0)), allow_eos=False) == 5
    assert choice(entry((0, -0.1), (5, -2.0), (9, -3.0)), allow_eos=True) == 0
    # The best allowed log-prob equals the third: a token outside the list may tie with it.
    assert choice(entry((0, -0.1), (5, -2.0), (9, -2.0), (4, -7.0)), allow_eos=False) is None
    # A tied position is decided by vLLM's sampler: the token generation would choose there.
    tokens = windows(tiny_tokens)[:16]
    positions = [(row, 32 + row) for row in range(16)]
    for allow_eos in (False, True):
        decided = vllm_engine.greedy_after(tokens, positions, allow_eos)
        expected = [vllm_engine.generate(tokens[row:row + 1, :t], 1, allow_eos)[0, 0]
                    for row, t in positions]
        assert decided == expected


def test_an_untested_vllm_is_one_warning_once(capsys):
    major, minor = TESTED_VLLM[-1]
    for version in (f"{major}.{minor + 1}.0", f"{major}.{minor + 1}.0", f"{major}.{minor}.1"):
        warn_untested_vllm(version)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"vLLM {major}.{minor + 1}.0 is outside" in lines[0]
