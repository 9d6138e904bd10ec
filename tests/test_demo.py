"""`vmem demo --quick` end to end: run once, then check its files for the study's real signal."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from vmem import cli
from vmem.data import open_dataset
from vmem.demo import corpus as minicorpus
from vmem.demo.run import QUICK
from vmem.engines import EngineConfig, build_engine
from vmem.evaluate import Evaluation, evaluate
from vmem.runs.merge import merge_run


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    return out


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


def test_duplicated_openings_are_memorized_far_more_often(demo):
    dup = table(demo, "duplication")
    largest = final_runs(demo).iloc[-1]["run"]
    rows = dup[dup["run"] == largest]
    once, many = rows[rows["occurrences_min"] == 1], rows[rows["occurrences_min"] >= 4]
    share_once = once["memorized"].sum() / once["sequences"].sum()
    share_many = many["memorized"].sum() / many["sequences"].sum()
    assert many["sequences"].sum() >= 50
    assert share_many >= 0.2 and share_many >= 5 * share_once, (share_once, share_many)
    assert (demo / "report" / "figures" / "duplication.png").stat().st_size > 0
    for document in ("report.md", "report.html"):
        assert "Memorization against duplication" in (demo / "report" / document).read_text()


def test_opening_counts_agree_with_the_stored_sequences(demo):
    """Every corpus row is stored once per epoch, so the stored rows sharing an opening, divided
    by the epochs, are copies within the corpus: a lower bound of the counted occurrences."""
    duplicates = pd.read_parquet(demo / "data" / "duplicates.parquet")
    counts = duplicates["count"].to_numpy()
    assert (duplicates["index"] == np.arange(len(counts))).all()
    rows = open_dataset(str(demo / "data")).read(0, len(counts))
    _, inverse, same = np.unique(rows[:, :minicorpus.OPENING], axis=0, return_inverse=True,
                                 return_counts=True)
    as_rows = same[inverse.ravel()] // QUICK.corpus.epochs
    assert (counts >= as_rows).all() and (as_rows >= 1).all()
    assert (counts > 1).any() and (counts == 1).mean() > 0.5  # duplication is the exception


def test_predictability_uses_the_sequences_both_runs_have_seen(demo):
    pred = table(demo, "predictability")
    assert set(pred["family"]) == {"A", "B"}
    for row in pred.itertuples():
        cheap = pd.read_parquet(demo / "results" / f"{row.cheap}.parquet")
        target = pd.read_parquet(demo / "results" / f"{row.target}.parquet")
        stop = min(row.cheap_step, row.target_step) * QUICK.sequences_per_step
        assert (row.start, row.stop) == (0, stop)
        c = cheap["score"].to_numpy()[:stop] == 1
        t = target["score"].to_numpy()[:stop] == 1
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
    assert "already built" in printed
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

