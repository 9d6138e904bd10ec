"""`--method verify` against generation: the same flags from one teacher-forced pass, with both
engines, at several prompt lengths, in paper and allow-eos modes; merged and reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cli import cli_error
from tests.models import EOS_SEQUENCE, MEMORIZED, NUM_SEQUENCES, reference_cont_logprobs
from vmem.cli import main
from vmem.engines import EngineConfig
from vmem.evaluate import Evaluation, evaluate
from vmem.runs.merge import merge_run


def scored(tmp: Path, engine, model: str, data: str, name: str, **kw) -> pd.DataFrame:
    """Evaluate [0, NUM_SEQUENCES) into tmp/name, merge it, return the merged table."""
    out = tmp / name
    engine_name = "vllm" if type(engine).__name__ == "VllmEngine" else "hf"
    evaluate(Evaluation(engine=EngineConfig(model, engine=engine_name, dtype="float32"),
                        data=data, out=str(out), start=0, stop=kw.pop("stop", NUM_SEQUENCES),
                        chunk_size=160, progress=False, **kw), engine=engine)
    merge_run(str(out), str(tmp / f"{name}.parquet"))
    return pd.read_parquet(tmp / f"{name}.parquet")


@pytest.mark.parametrize("engine_name", ["hf", "vllm"])
@pytest.mark.parametrize("allow_eos", [False, True])
def test_verification_flags_equal_generation(tmp_path, request, engine_name, allow_eos,
                                             tiny_model_dir, tiny_dataset, tiny_tokens):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    generated = scored(tmp_path, engine, tiny_model_dir, tiny_dataset, "g", allow_eos=allow_eos,
                       logprobs=True)
    verified = scored(tmp_path, engine, tiny_model_dir, tiny_dataset, "v", allow_eos=allow_eos,
                      logprobs=True, method="verify")
    assert verified.columns.tolist() == ["index", "prefix_match", "memorized", "cont_logprob"]
    np.testing.assert_array_equal(verified["prefix_match"], generated["prefix_match"])
    np.testing.assert_array_equal(verified["memorized"], generated["matches"] == 32)
    # Both log-probs against a plain transformers forward pass, not against each other (the
    # two runs read them from the same kind of engine call).
    reference = reference_cont_logprobs(tiny_model_dir, tiny_tokens, 32, 32)
    for table in (verified, generated):
        np.testing.assert_allclose(table["cont_logprob"], reference, rtol=1e-4, atol=1e-3)
    # The trained sequences are memorized, except in paper mode the one whose continuation
    # holds end-of-text: the argmax may not be end-of-text there, so it leaves at position 4.
    memorized = set(verified.loc[verified["memorized"], "index"])
    assert memorized == set(range(MEMORIZED)) - (set() if allow_eos else {EOS_SEQUENCE})
    assert verified.loc[EOS_SEQUENCE, "prefix_match"] == (32 if allow_eos else 4)
    manifest = json.loads((tmp_path / "v.manifest.json").read_text())
    assert manifest["settings"]["method"] == "verify"
    assert "method" not in json.loads((tmp_path / "g.manifest.json").read_text())["settings"]


def test_both_engines_verify_alike(tmp_path, vllm_engine, hf_engine, tiny_model_dir,
                                   tiny_dataset):
    tables = [scored(tmp_path, engine, tiny_model_dir, tiny_dataset, name, method="verify")
              for engine, name in ((vllm_engine, "vllm"), (hf_engine, "hf"))]
    pd.testing.assert_frame_equal(*tables)


def test_each_prompt_length_equals_its_own_generation_run(tmp_path, hf_engine, tiny_model_dir,
                                                          tiny_dataset, tiny_tokens):
    lengths = [16, 32, 48]
    several = scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, "several",
                     method="verify", prompt_len=lengths, logprobs=True)
    assert several.columns.tolist() == ["index", *[f"prefix_match_p{p}" for p in lengths],
                                        *[f"cont_logprob_p{p}" for p in lengths]]
    for length in lengths:
        alone = scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, f"p{length}",
                       prompt_len=length, logprobs=True)
        np.testing.assert_array_equal(several[f"prefix_match_p{length}"], alone["prefix_match"])
        np.testing.assert_allclose(several[f"cont_logprob_p{length}"], alone["cont_logprob"],
                                   rtol=1e-6)
        reference = reference_cont_logprobs(tiny_model_dir, tiny_tokens, length, 32)
        np.testing.assert_allclose(alone["cont_logprob"], reference, rtol=1e-4, atol=1e-3)
    # Trained on the first 64 tokens: prompts of 16 and 32 reproduce them, 48 leaves them.
    assert (several.loc[:MEMORIZED - 1, "prefix_match_p16"] > 0).all()
    assert (several["prefix_match_p48"] < 32).all()


def test_verification_runs_merge_resume_and_report(capsys, tmp_path, hf_engine, tiny_model_dir,
                                                   tiny_dataset):
    results = tmp_path / "results"
    scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, "results/generate")
    scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, "results/verify", method="verify")
    again = Evaluation(engine=EngineConfig(tiny_model_dir, engine="hf", dtype="float32"),
                       data=tiny_dataset, out=str(results / "verify"), start=0,
                       stop=NUM_SEQUENCES, chunk_size=160, progress=False, method="verify")
    assert evaluate(again, engine=hf_engine)["already_finished"]
    # The merged runs sit beside the run folders (their score files are no runs), named from
    # their manifests.
    assert main(["report", str(results), "-o", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    generated = Path(tiny_model_dir).name
    verified = f"{generated}-verify"
    agreement = pd.read_csv(report / "tables" / "method_agreement.csv")
    assert agreement[["run", "method", "reference", "reference_method", "only_run",
                      "only_reference", "agreement"]].values.tolist() == [
        [verified, "verify", generated, "generate", 0, 0, 1.0]]
    rates = pd.read_csv(report / "tables" / "memorization_rates.csv").set_index("run")
    assert rates.loc[verified, "memorized"] == rates.loc[generated, "memorized"] == MEMORIZED - 1
    assert set(pd.read_csv(report / "tables" / "score_distribution.csv")["run"]) == {generated}
    text = (report / "report.md").read_text()
    assert f"not shown for the flags-only run(s) {verified}" in text

    # A verification run alone, at several prompt lengths: the flag analyses and the curve.
    alone = tmp_path / "alone"
    scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, "alone/several", method="verify",
           prompt_len=[16, 32])
    assert main(["report", str(alone), "-o", str(tmp_path / "report2")]) == 0
    curve = pd.read_csv(tmp_path / "report2" / "tables" / "prompt_length.csv")
    assert curve["prompt_len"].tolist() == [16, 32]
    assert curve["memorized"].tolist()[1] == MEMORIZED - 1
    assert (tmp_path / "report2" / "figures" / "prompt_length.png").exists()
    assert not (tmp_path / "report2" / "figures" / "score_distribution.png").exists()
    # The tables of the fractional score are there, with their columns and no rows.
    assert pd.read_csv(tmp_path / "report2" / "tables" / "score_distribution.csv").empty


def test_flags_of_different_windows_are_not_compared(capsys, tmp_path, hf_engine, tiny_model_dir,
                                                     tiny_dataset):
    scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, "results/g32", stop=64)
    scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, "results/v16", stop=64,
           method="verify", prompt_len=16)
    err = cli_error(capsys, ["report", str(tmp_path / "results"), "-o", str(tmp_path / "r")])
    name = Path(tiny_model_dir).name
    assert (f"{name}-verify (prompt 16, continuation 32) and {name} (prompt 32, continuation "
            "32)") in err


def test_a_damaged_verification_score_file_is_named(capsys, tmp_path, hf_engine, tiny_model_dir,
                                                    tiny_dataset):
    scored(tmp_path, hf_engine, tiny_model_dir, tiny_dataset, "v", method="verify")
    victim = sorted((tmp_path / "v").glob("scores-*.csv"))[0]  # [0, 160): the trained ones
    text = victim.read_text().replace(",32,True", ",32,False", 1)
    assert text != victim.read_text()
    victim.write_text(text)
    err = cli_error(capsys, ["merge", str(tmp_path / "v"), "-o", str(tmp_path / "again.parquet")])
    assert f"score file {victim.name} holds values no scoring gives" in err
    assert "--method verify" in err  # the command that regenerates it


def test_spot_shows_where_the_truth_leaves_the_argmax(capsys, tiny_model_dir, tiny_dataset):
    assert main(["spot", "--model", tiny_model_dir, "--data", tiny_dataset, "--dtype",
                 "float32", "--method", "verify", "--index", "0", "--index",
                 str(EOS_SEQUENCE)]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert "memorized (the argmax follows the whole true continuation)" in blocks[0]
    assert "first leaves the argmax at position 4" in blocks[1]
    argmax = next(line for line in blocks[1].splitlines() if line.startswith("  argmax"))
    assert argmax.split()[5].startswith("[")  # the fifth continuation token differs


@pytest.mark.parametrize("argv, message", [
    (["--prompt-len", "32,16", "--method", "verify"], "--prompt-len 32,16: expected increasing"),
    (["--prompt-len", "16,32"], "several prompt lengths in one run need --method verify"),
    (["--prompt-len", "16,70", "--method", "verify"], "exceeds the 96-token sequences"),
])
def test_bad_verification_settings_are_one_line(capsys, tmp_path, tiny_model_dir, tiny_dataset,
                                                argv, message):
    err = cli_error(capsys, ["evaluate", "--model", tiny_model_dir, "--data", tiny_dataset,
                             "--start", "0", "--stop", "8", "--out", str(tmp_path / "o"),
                             "--engine", "hf", *argv])
    assert message in err
    assert not (tmp_path / "o").exists()
