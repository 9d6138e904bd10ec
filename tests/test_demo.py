"""`vmem demo --quick` end to end: run once, as `make demo`'s install has it (no vLLM), then
check its files for the study's real signal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from vmem import cli
from vmem.data import open_dataset
from vmem.demo import corpus as minicorpus
from vmem.demo.run import QUICK, RECITATION_COPIES
from vmem.engines import EngineConfig, build_engine
from vmem.evaluate import Evaluation, evaluate
from vmem.runs.merge import merge_run

# Installed as sitecustomize.py on PYTHONPATH: every Python process of the run (the demo's
# training and evaluation workers too) finds no vLLM, as after `make demo`'s install.
WITHOUT_VLLM = """import importlib.machinery, sys


class PathFinderWithoutVllm(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "vllm":
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [PathFinderWithoutVllm if finder is importlib.machinery.PathFinder else finder
                    for finder in sys.meta_path]
"""
VMEM = "import sys; from vmem.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def without_vllm(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that cannot import vLLM."""
    site = tmp_path_factory.mktemp("without-vllm")
    (site / "sitecustomize.py").write_text(WITHOUT_VLLM)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    probe = subprocess.run([sys.executable, "-c", "import vllm"], env=env, capture_output=True,
                           text=True)
    assert probe.returncode == 1 and "No module named 'vllm'" in probe.stderr, probe.stderr
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory, without_vllm):
    out = tmp_path_factory.mktemp("demo") / "out"
    run = subprocess.run([sys.executable, "-c", VMEM, "demo", "--quick", "--out", str(out)],
                         env=without_vllm, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_vllm_engine_without_vllm_is_one_line_before_any_work(without_vllm, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", VMEM, "demo", "--quick", "--engine", "vllm",
                          "--out", str(out)], env=without_vllm, capture_output=True, text=True)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert "--engine vllm" in err[0] and "make test" in err[0]
    assert not out.exists()


def table(demo, name: str) -> pd.DataFrame:
    return pd.read_csv(demo / "report" / "tables" / f"{name}.csv")


def final_runs(demo) -> pd.DataFrame:
    rates = table(demo, "memorization_rates")
    return rates[rates["step"] == rates["step"].max()].sort_values("params")


def test_dataset_is_in_pythias_sharded_layout(demo):
    names = sorted(p.name for p in (demo / "data").iterdir() if p.suffix in (".bin", ".idx"))
    shards = [n for n in names if n.endswith(".bin")]
    last = len(shards) - 1
    assert shards == [f"document-{k:05d}-of-{last:05d}.bin" for k in range(last + 1)]
    assert "document.idx" in names and last >= 1
    dataset = open_dataset(str(demo / "data"))
    assert (dataset.layout, dataset.seq_len) == ("sharded", QUICK.corpus.seq_len)
    assert dataset.num_sequences % QUICK.corpus.epochs == 0  # whole epochs, back to back


def test_some_sequences_are_memorized_and_most_are_not(demo):
    final = final_runs(demo)
    assert final.iloc[-1]["memorized"] >= 30
    assert (final["share"] < 0.5).all()


def test_later_checkpoints_and_larger_models_memorize_at_least_as_much(demo):
    rates = table(demo, "memorization_rates")
    for _, rows in rates.groupby("model"):
        assert rows.sort_values("step")["memorized"].is_monotonic_increasing
    assert final_runs(demo)["share"].is_monotonic_increasing


def flags(run: pd.DataFrame) -> np.ndarray:
    """A merged run's memorized flags: generation's score 1, verification's flag."""
    return run["memorized"].to_numpy() if "memorized" in run else run["score"].to_numpy() == 1


def test_duplicated_continuations_are_memorized_far_more_often(demo):
    """Each epoch stores every sequence once, so a continuation the corpus holds once counts
    `epochs` and one it holds 4+ times counts 4 x `epochs` or more."""
    epochs = QUICK.corpus.epochs
    largest = final_runs(demo).iloc[-1]["run"]
    memorized = flags(pd.read_parquet(demo / "results" / f"{largest}.parquet"))
    count = pd.read_parquet(demo / "data" / "duplicates.parquet")["count"].to_numpy()
    count = count[:len(memorized)]
    once, many = memorized[count == epochs], memorized[count >= 4 * epochs]
    assert many.size >= 50 and once.size >= 500
    assert many.mean() >= 0.2 and many.mean() >= 10 * once.mean(), (once.mean(), many.mean())
    assert (demo / "report" / "figures" / "duplication.png").stat().st_size > 0
    for document in ("report.md", "report.html"):
        assert "Memorization against duplication" in (demo / "report" / document).read_text()


def test_duplicate_counts_are_every_occurrence_of_the_continuation(demo):
    """`vmem duplicates` as the demo runs it: each sequence's tokens [32, 64) counted at every
    position of the stored token stream, as a brute-force count finds them."""
    duplicates = pd.read_parquet(demo / "data" / "duplicates.parquet")
    rows = open_dataset(str(demo / "data")).read(0, len(duplicates))
    assert (duplicates["index"] == np.arange(len(rows))).all()
    as_bytes = np.dtype((np.void, 32 * rows.itemsize))  # one comparable value per window
    windows = np.lib.stride_tricks.sliding_window_view(rows.ravel(), 32)
    unique, occurrences = np.unique(np.ascontiguousarray(windows).view(as_bytes).ravel(),
                                    return_counts=True)
    continuations = np.ascontiguousarray(rows[:, 32:64]).view(as_bytes).ravel()
    counts = duplicates["count"].to_numpy()
    np.testing.assert_array_equal(counts, occurrences[np.searchsorted(unique, continuations)])
    epochs = QUICK.corpus.epochs
    assert (counts >= epochs).all() and (counts == epochs).mean() > 0.5  # one copy is the rule


def test_taxonomy_sorts_every_memorized_sequence_into_all_three_categories(demo):
    taxonomy = table(demo, "taxonomy")
    threshold = RECITATION_COPIES * QUICK.corpus.epochs
    counts = pd.read_parquet(demo / "data" / "duplicates.parquet")["count"].to_numpy()
    for run in table(demo, "memorization_rates").itertuples():
        rows = taxonomy[taxonomy["run"] == run.run].set_index("category")
        if not run.memorized:
            continue
        assert set(rows.index) <= {"recitation", "reconstruction", "recollection"}
        assert rows["sequences"].sum() == run.memorized
        np.testing.assert_allclose(rows["share"].sum(), 1.0)
        memorized = flags(pd.read_parquet(demo / "results" / f"{run.run}.parquet"))
        recited = int((memorized & (counts[:len(memorized)] >= threshold)).sum())
        assert rows["sequences"].get("recitation", 0) == recited, run.run
    # Recitation and recollection both occur in the quick suite (the full demo's 4m model adds
    # reconstruction: a few templated code tables).
    shown = taxonomy[taxonomy["sequences"] > 0]
    assert {"recitation", "recollection"} <= set(shown["category"])


def test_report_shows_memorized_sequences_decoded_with_the_demos_tokenizer(demo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo / "tokenizer"))
    examples = pd.read_csv(demo / "report" / "tables" / "examples.csv", keep_default_na=False)
    rows = open_dataset(str(demo / "data")).read(0, int(examples["index"].max()) + 1)
    largest = final_runs(demo).iloc[-1]["run"]
    shown = examples[examples["run"] == largest]
    assert {"recitation", "recollection"} <= set(shown["category"])
    memorized = flags(pd.read_parquet(demo / "results" / f"{largest}.parquet"))
    for row in shown.itertuples():
        assert memorized[row.index]
        assert (row.prompt, row.continuation) == (tokenizer.decode(rows[row.index, :32]),
                                                  tokenizer.decode(rows[row.index, 32:64]))
    assert "Examples of memorized sequences" in (demo / "report" / "report.md").read_text()


def test_predictability_uses_the_sequences_both_runs_have_seen(demo):
    pred = table(demo, "predictability")
    assert set(pred["family"]) == {"A", "B"}
    for row in pred.itertuples():
        cheap = pd.read_parquet(demo / "results" / f"{row.cheap}.parquet")
        target = pd.read_parquet(demo / "results" / f"{row.target}.parquet")
        stop = min(row.cheap_step, row.target_step) * QUICK.sequences_per_step
        assert (row.start, row.stop) == (0, stop)
        c, t = flags(cheap)[:stop], flags(target)[:stop]
        assert (row.tp, row.fp, row.fn, row.tn) == ((c & t).sum(), (c & ~t).sum(),
                                                     (~c & t).sum(), (~c & ~t).sum())


def test_checkpoints_decode_text_from_the_standard_library(demo):
    from transformers import AutoTokenizer

    model = next((demo / "models").glob("*/step*"))
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    row = open_dataset(str(demo / "data")).read(0, 1)[0].tolist()
    piece = max(tokenizer.decode(row).split(minicorpus.EOS_TOKEN), key=len).strip("\ufffd")
    assert len(piece) > 20
    assert any(piece in path.read_text(encoding="utf-8", errors="replace")
               for path in minicorpus.stdlib_modules())


def test_rerun_reuses_finished_stages(demo, capsys):
    assert cli.main(["demo", "--quick", "--out", str(demo)]) == 0
    printed = capsys.readouterr().out
    assert "already built" in printed and "already counted" in printed
    assert len(re.findall(r"already trained", printed)) == len(QUICK.sizes)
    assert len(re.findall(r"already evaluated", printed)) == 2 * len(QUICK.sizes)


def test_rerun_with_other_settings_is_one_clear_error(demo, capsys):
    assert cli.main(["demo", "--out", str(demo), "--engine", "hf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(demo) in err[0] and "--quick" in err[0]


def _scored(demo, tmp_path, model, method: str, engine) -> pd.DataFrame:
    """One checkpoint on the sequences it has seen, in float32, merged."""
    out = tmp_path / f"{model.parent.name}-{model.name}-{method}-{engine.cfg.engine}"
    evaluate(Evaluation(engine=engine.cfg, data=str(demo / "data"), out=str(out),
                        checkpoint=int(model.name.removeprefix("step")),
                        sequences_per_step=QUICK.sequences_per_step, method=method,
                        chunk_size=2048, progress=False), engine=engine)
    merge_run(str(out), f"{out}.parquet")
    return pd.read_parquet(f"{out}.parquet")


def test_verification_equals_generation_on_every_checkpoint(demo, tmp_path):
    # Real memorization (trained models): the verification pass's flags and prefix matches
    # equal generation's on every sequence of every (size, checkpoint), in float32; and vLLM's
    # verification equals transformers' on the largest model's final checkpoint.
    models = sorted((demo / "models").glob("*/step*"))
    assert len(models) == len(QUICK.sizes) * len(QUICK.checkpoints)
    memorized, verified_by_model = 0, {}
    for model in models:
        hf = build_engine(EngineConfig(str(model), engine="hf", dtype="float32"))
        generated = _scored(demo, tmp_path, model, "generate", hf)
        verified = _scored(demo, tmp_path, model, "verify", hf)
        np.testing.assert_array_equal(verified["prefix_match"], generated["prefix_match"])
        np.testing.assert_array_equal(verified["memorized"], generated["matches"] == 32)
        memorized += int(verified["memorized"].sum())
        verified_by_model[model] = verified
    assert memorized >= 50  # the comparison covers real memorized sequences
    final = max(models, key=lambda m: (QUICK.sizes.index(m.parent.name),
                                       int(m.name.removeprefix("step"))))
    vllm = build_engine(EngineConfig(str(final), engine="vllm", dtype="float32",
                                     enforce_eager=True))
    try:
        pd.testing.assert_frame_equal(_scored(demo, tmp_path, final, "verify", vllm),
                                      verified_by_model[final])
    finally:
        vllm.close()


def test_report_on_nested_demo_runs_with_a_released_list(demo, tmp_path):
    """The demo's merged runs, one folder per size and checkpoint, plus the largest final run's
    memorized list exported and imported as the published lists are: one report shows every
    analysis the inputs allow."""
    nested = tmp_path / "nested"
    for manifest in (demo / "results").glob("*.manifest.json"):
        name = manifest.name.removesuffix(".manifest.json")
        size, step = name.split("-step")
        folder = nested / size / f"step{step}"
        folder.mkdir(parents=True)
        for path in (manifest, demo / "results" / f"{name}.parquet"):
            (folder / path.name).write_bytes(path.read_bytes())
    final = final_runs(demo).iloc[-1]
    listed = tmp_path / "list.parquet"
    assert cli.main(["export-memorized", str(demo / "results" / f"{final['run']}.parquet"),
                     "--data", str(demo / "data"), "-o", str(listed)]) == 0
    model = demo / "models" / final["model"] / f"step{final['step']}"
    assert cli.main(["import-released", str(listed), "--model", str(model), "--step",
                     str(final["step"]), "--sequences-per-step", str(QUICK.sequences_per_step),
                     "--data", str(demo / "data"), "-o", str(nested / "released")]) == 0
    report = tmp_path / "report"
    assert cli.main(["report", str(nested), "-o", str(report), "--duplicates",
                     str(demo / "data" / "duplicates.parquet")]) == 0

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(report / "tables" / f"{name}.csv")

    assert sorted(read("memorization_rates")["run"]) == sorted(
        [*table(demo, "memorization_rates")["run"], f"{final['run']}-released"])
    agreement = read("method_agreement")
    assert agreement[["run", "reference", "only_run", "only_reference", "agreement"]
                     ].values.tolist() == [[f"{final['run']}-released", final["run"], 0, 0, 1.0]]
    forgetting = read("forgetting")
    assert len(forgetting) == len(QUICK.sizes)
    seen = round(QUICK.checkpoints[0] * (open_dataset(str(demo / "data")).num_sequences
                                         // QUICK.sequences_per_step)) * QUICK.sequences_per_step
    assert (forgetting[["kept", "forgotten", "new", "never"]].sum(axis=1) == seen).all()
    weights = read("weights")
    assert weights["weights_sha256"].notna().sum() == len(QUICK.sizes) * len(QUICK.checkpoints)
    assert weights["identical_to"].isna().all()
    assert set(read("extraction_np")["n"]) == {1, 10, 100, 1000}
    approximate = read("approximate").set_index("run")
    assert (approximate["share_above_0.75"] >= approximate["exact_share"]).all()
    assert set(read("duplication")["run"]) == set(read("memorization_rates")["run"])
    markdown = (report / "report.md").read_text()
    for section in ("Checkpoint integrity", "Forgetting between checkpoints",
                    "Probabilistic extraction", "Approximate memorization",
                    "Memorization against duplication", "Agreement between methods"):
        assert section in markdown, section

