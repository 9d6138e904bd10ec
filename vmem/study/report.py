"""`vmem report`: merged runs → the paper's tables, figures, report.md and report.html."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vmem import pythia
from vmem.errors import VmemError
from vmem.io.location import Output
from vmem.study import (
    analysis,
    correlation,
    cross_correlation,
    extraction,
    figures,
    forgetting,
    integrity,
    taxonomy,
)
from vmem.study.comparisons import FAMILIES, plan_comparisons, split_twins, without_final
from vmem.study.context import Study
from vmem.study.display import count, number, percent, show
from vmem.study.document import Document
from vmem.study.duplication import (
    Duplicates,
    duplication_figure,
    duplication_table,
    rarity_figure,
    rarity_table,
    read_duplicates,
)
from vmem.study.merged_runs import Run, load_runs
from vmem.study.taxonomy import RECITATION_THRESHOLD, Sequences

# EleutherAI/pythia's mem_graph.py compares runs only below this index: 23,000 steps of 1,024
# sequences, what every checkpoint of the paper's grid has seen.
MEM_GRAPH_BOUND = 23_000 * 1024
# The analyses in the order the report shows them (see vmem.study.context for their shape).
ANALYSES = (forgetting, correlation, cross_correlation)


def report(folders: Sequence[str], out: str | os.PathLike, *, duplicates: str | None = None,
           tokenizer: str | None = None, data: str | None = None,
           recitation_threshold: int = RECITATION_THRESHOLD, index_bound: int | None = None,
           s3_endpoint: str | None = None) -> list[Run]:
    """The report of the merged runs anywhere under `folders` (local or s3://) into the folder
    `out` (local or s3://); with a `duplicates` table the memorized share by duplication and the
    taxonomy, whose reconstruction category and examples need a `tokenizer` (and the sequences'
    tokens: `data`, else each run's recorded dataset)."""
    report_output(out, s3_endpoint=s3_endpoint)  # before anything is read
    taxonomy.check_threshold(recitation_threshold)
    if index_bound is not None and index_bound < 1:
        raise VmemError(f"--index-bound {index_bound}: expected a positive sequence index "
                        f"(mem_graph.py's is {MEM_GRAPH_BOUND})")
    if tokenizer is not None and duplicates is None:
        raise VmemError("--tokenizer: the taxonomy and its examples need counts; give "
                        "--duplicates too")
    if data is not None and tokenizer is None:
        raise VmemError("--data: the sequences' tokens are read for templating and examples, "
                        "which need --tokenizer")
    sequences = None
    if tokenizer is not None:
        from vmem.data import open_dataset

        sequences = Sequences(taxonomy.load_tokenizer(tokenizer),
                              None if data is None else open_dataset(data,
                                                                     s3_endpoint=s3_endpoint),
                              s3_endpoint=s3_endpoint)
    counts = None if duplicates is None else read_duplicates(duplicates, s3_endpoint=s3_endpoint)
    runs = load_runs(folders, s3_endpoint=s3_endpoint)
    write_report(runs, ", ".join(folders), out, counts, sequences, recitation_threshold,
                 index_bound=index_bound, s3_endpoint=s3_endpoint)
    return runs


def report_output(out: str | os.PathLike, *, s3_endpoint: str | None = None) -> Output:
    """The report's folder, checked: writable, and new, empty or an earlier report."""
    target = Output(out, s3_endpoint=s3_endpoint)
    if target.remote and not target.name:
        raise VmemError(f"-o {out}: expected s3://bucket/prefix (a report replaces its whole "
                        f"folder, never a bucket)")
    target.check(folder=True)
    files = target.contents()
    if files and "report.md" not in files:
        raise VmemError(f"{out}: exists and is not a vmem report folder; choose another -o")
    return target


def write_report(runs: list[Run], results: str, out: str | os.PathLike,
                 duplicates: Duplicates | None = None, sequences: Sequences | None = None,
                 recitation_threshold: int = RECITATION_THRESHOLD, *,
                 index_bound: int | None = None, s3_endpoint: str | None = None) -> None:
    """Compute everything first (a bad input fails before anything is written), then write the
    report into a temporary folder and put it in place of `out` (local or s3://) whole."""
    target = report_output(out, s3_endpoint=s3_endpoint)
    runs = sorted(runs, key=lambda r: (r.suite, r.params or 0, r.step or 0, r.name))
    standing, twins = split_twins(runs, results)  # one run per model and checkpoint
    study = Study(runs, results, standing, twins, duplicates, sequences, recitation_threshold,
                  index_bound)
    tables, fits, notes = _tables(study)
    study.tables.update(tables)
    for part in ANALYSES:
        study.tables.update(part.tables(study))
    with target.folder() as tmp:
        (tmp / "tables").mkdir()
        (tmp / "figures").mkdir()
        for name, table in study.tables.items():
            table.to_csv(tmp / "tables" / f"{name}.csv", index=False, float_format="%.10g",
                         lineterminator="\n")
        study.figures.update(_figures(runs, tables, fits, tmp / "figures"))
        for part in ANALYSES:
            study.figures.update((name, f"figures/{file}") for name, file in
                                 part.figures(study, tmp / "figures").items())
        document = _document(study, notes)
        (tmp / "report.md").write_text(document.markdown(), encoding="utf-8")
        (tmp / "report.html").write_text(document.html(tmp), encoding="utf-8")


def _tables(study: Study) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    """The tables by name, the compute fits, and notes for the text (by section)."""
    runs, results, duplicates = study.runs, study.results, study.duplicates
    sequences, recitation_threshold = study.sequences, study.recitation_threshold
    standing, twins = study.standing, study.twins
    # The fractional score exists for generation runs only; verification runs have the flag.
    generated = [run for run in runs if run.matches is not None]
    counts = {run.name: analysis.score_counts(run) for run in generated}
    profiles = {run.name: analysis.step_profile(run) for run in generated}
    predictability = analysis.predictability_table(plan_comparisons(standing, results),
                                                   study.index_bound)
    fits = analysis.compute_fits(predictability)
    tables = {
        "memorization_rates": analysis.rates_table(runs),
        "score_distribution": analysis.distribution_table(runs, counts),
        "predictability": predictability,
        "compute_fit": analysis.compute_fit_table(fits),
        "equi_compute": analysis.equi_compute_table(predictability, fits),
        "score_by_step": analysis.score_by_step_table(runs, profiles),
        "score_trend": analysis.trend_table(runs, profiles),
        "weights": integrity.weights_table(runs),
    }
    if any(run.cont_logprob is not None for run in runs):
        tables["logprob_summary"], tables["logprob_histogram"] = analysis.logprob_tables(runs)
    if any(run.prefix_by_prompt_len for run in runs):
        tables["prompt_length"] = analysis.prompt_length_table(runs)
    if twins:
        tables["method_agreement"] = analysis.method_agreement_table(twins)
    optional = {
        "extraction_np": extraction.np_table(runs),
        "approximate": extraction.approximate_table(runs),
    }
    tables.update((name, table) for name, table in optional.items() if len(table))
    notes = {"without_final": without_final(standing)}
    if duplicates is not None:
        tables["duplication"], notes["unlisted"] = duplication_table(runs, duplicates)
        notes["duplicates"] = duplicates
        if duplicates.frequencies is not None:
            tables["token_rarity"] = rarity_table(runs, duplicates)
        classified = taxonomy.classify(runs, duplicates, sequences, recitation_threshold)
        tables["taxonomy"] = taxonomy.taxonomy_table(classified)
        notes["taxonomy"] = dict(threshold=recitation_threshold, tokenizer=sequences is not None)
        if sequences is not None:
            tables["examples"] = taxonomy.examples_table(classified, sequences)
    return tables, fits, notes


def _figures(runs: list[Run], tables: dict[str, pd.DataFrame], fits: dict,
             folder: Path) -> dict[str, str]:
    """Draw what the tables support; returns figure name → path relative to the report."""
    drawn = {}

    def draw(name: str, fn, *inputs) -> None:
        fn(*inputs, folder / f"{name}.png")
        drawn[name] = f"figures/{name}.png"

    draw("memorization_rates", figures.memorization_rates, tables["memorization_rates"])
    if len(tables["score_distribution"]):
        draw("score_distribution", figures.score_distribution, tables["score_distribution"])
    if len(tables["predictability"]):
        draw("predictability", figures.predictability, tables["predictability"])
        if (tables["predictability"]["cheap_compute"] > 0).any():
            draw("recall_vs_compute", figures.recall_vs_compute, tables["predictability"], fits)
    if len(tables["score_by_step"]):
        draw("score_by_step", figures.score_by_step, tables["score_by_step"],
             tables["score_trend"])
    if "logprob_histogram" in tables:
        draw("logprob", figures.logprob_histograms, tables["logprob_histogram"])
    if "prompt_length" in tables:
        draw("prompt_length", figures.prompt_length, tables["prompt_length"])
    if "extraction_np" in tables:
        draw("extraction_np", extraction.np_figure, tables["extraction_np"])
    if len(tables.get("duplication", ())):
        draw("duplication", duplication_figure, tables["duplication"])
    if len(tables.get("token_rarity", ())):
        draw("token_rarity", rarity_figure, tables["token_rarity"])
    if len(tables.get("taxonomy", ())):
        draw("taxonomy", taxonomy.taxonomy_figure, tables["taxonomy"], runs)
    return drawn


def _document(study: Study, notes: dict) -> Document:
    runs, results, tables, drawn = study.runs, study.results, study.tables, study.figures
    rates, pred = tables["memorization_rates"], tables["predictability"]
    doc = Document("Memorization report")
    doc.paragraph(
        f"Made by `vmem report` from `{results}`: {len(runs)} runs, "
        f"{count(sum(r.evaluated for r in runs))} sequence evaluations in all. Each sequence's "
        "first tokens are a prompt; the model continues it greedily, and the memorization score "
        "is the share of continuation tokens equal to the true ones. A sequence is memorized "
        "when the score is 1. Verification runs (method verify) decide that flag exactly from "
        "one teacher-forced pass, without the fractional score; released runs (method released) "
        "are EleutherAI's published lists of memorized sequences, imported with "
        "`vmem import-released`, and hold the flag alone. Comparisons between two runs use only "
        "the sequences both have seen.")
    pairs = integrity.identical_pairs(runs)
    if pairs:  # first: it voids comparisons everywhere below
        doc.paragraph("Warning: these runs claim different checkpoints but loaded identical "
                      "weights, so comparisons between them (family B in particular) are "
                      "meaningless; they stay in every table "
                      f"({doc.ref('Checkpoint integrity')}):")
        doc.bullets([integrity.describe_pair(a, b) for a, b in pairs])

    doc.heading("What was evaluated")
    doc.table(show(pd.DataFrame(dict(
        run=[r.name for r in runs], model=[r.label for r in runs], suite=[r.suite for r in runs],
        step=[r.step for r in runs], params=[r.params for r in runs],
        indices=[f"[{count(r.start)}, {count(r.stop)})" for r in runs],
        sequences=[r.evaluated for r in runs], method=[r.method for r in runs],
        prompt_len=[",".join(map(str, sorted(r.prefix_by_prompt_len))) or str(r.prompt_len)
                    for r in runs], cont_len=[r.cont_len for r in runs],
        logprobs=["yes" if r.cont_logprob is not None else "no" for r in runs]))))

    doc.heading("Headline numbers")
    doc.bullets(_headlines(tables))

    doc.section("Memorized share per run")
    doc.table(show(rates[["run", "model", "step", "params", "evaluated", "memorized", "share"]]))
    doc.figure(drawn["memorization_rates"], "Share of evaluated sequences with score 1, per run.")

    flags_only = [r.name for r in runs if r.matches is None]
    doc.section("Score distribution")
    if "score_distribution" in drawn:
        doc.paragraph("Most sequences score low; the share of each possible score value is "
                      "plotted on a log scale, as in the paper. All values: "
                      "`tables/score_distribution.csv`.")
        doc.table(show(_distribution_summary(tables["score_distribution"])))
        doc.figure(drawn["score_distribution"],
                   "Share of sequences at each score value (log scale).")
    _needs_generation(doc, flags_only)

    doc.section("Predictability from cheaper runs")
    where = ("on the sequences both runs evaluated" if study.index_bound is None else
             f"on the sequences both runs evaluated below index {count(study.index_bound)} "
             f"(`--index-bound`)")
    doc.paragraph("'Memorized by the cheap run' used as a classifier of 'memorized by the target "
                  f"run', {where}: precision is the share of the cheap run's memorized sequences "
                  "that the target memorized too, recall (the true positive rate) the share of "
                  "the target's that the cheap run memorized. "
                  f"Family A: {FAMILIES['A']}. Family B: {FAMILIES['B']}. "
                  "The paper's graphs (EleutherAI/pythia's mem_graph.py) compare below index "
                  f"{count(MEM_GRAPH_BOUND)}, what all its checkpoints had seen "
                  f"(`--index-bound {MEM_GRAPH_BOUND}` does the same), and pass prediction and "
                  "truth to the confusion matrix in swapped order: what they label the true "
                  "positive rate is precision, their false positive rate FN / (FN + TN) and "
                  "their false negative rate FP / (FP + TP).")
    if len(pred):
        doc.table(show(pred[["family", "cheap", "target", "tp", "fp", "fn", "tn", "precision",
                              "recall", "fpr", "f1"]]))
        doc.figure(drawn["predictability"], "Precision and recall of each comparison.")
    else:
        doc.paragraph("No comparison: that needs two models of a suite at one checkpoint "
                      "(family A) or two checkpoints of one model (family B).")
    if missing := notes["without_final"]:
        doc.paragraph(f"No family B comparison for {', '.join(missing)}: several checkpoints "
                      f"but not the final one (step{pythia.FINAL_STEP}), the target they "
                      f"predict.")

    doc.section("Recall against the cheap run's training compute")
    doc.paragraph("Compute ≈ 6 · parameters · tokens seen (Pythia: step · 1024 · 2048 tokens). "
                  "A power law recall = coefficient · compute^exponent is fitted per family and "
                  "target; the equi-compute table evaluates both families' fits of the same "
                  "target at the same compute. R² is given for fits to 3 or more points: a "
                  "line through 2 points fits them exactly, so its R² of 1 says nothing.")
    if "recall_vs_compute" in drawn:
        if len(tables["compute_fit"]):
            doc.table(show(tables["compute_fit"]))
        if len(tables["equi_compute"]):
            doc.table(show(tables["equi_compute"]))
        doc.figure(drawn["recall_vs_compute"], "Recall against compute, log-log, with fits.")
    else:
        doc.paragraph("No comparison with a known compute (parameters and step of the cheap run).")

    doc.section("Memorization score against training step")
    if "score_by_step" in drawn:
        doc.paragraph("Mean score of the sequences seen in each group of training steps; the "
                      "slope is a least-squares line over all of a run's sequences.")
        doc.table(show(tables["score_trend"][["run", "sequences", "mean_score",
                                               "slope_per_1000_steps", "step_first",
                                               "step_last"]]))
        doc.figure(drawn["score_by_step"], "Mean memorization score against training step.")
    _needs_generation(doc, flags_only)

    if "logprob" in drawn:
        doc.section("Continuation log-probability")
        doc.paragraph("Teacher-forced log-probability of the true continuation (runs evaluated "
                      "with --logprobs), memorized vs other sequences.")
        doc.table(show(tables["logprob_summary"]))
        doc.figure(drawn["logprob"], "Distribution of the continuation's log-probability.")

    if "prompt_length" in drawn:
        doc.section("Extraction against prompt length")
        doc.paragraph("Verification runs over several prompt lengths (at one offset): the share "
                      "of sequences whose continuation greedy decoding reproduces exactly, per "
                      "prompt length, all from one teacher-forced pass per sequence.")
        doc.table(show(tables["prompt_length"][["run", "prompt_len", "evaluated", "memorized",
                                                 "share"]]))
        doc.figure(drawn["prompt_length"], "Memorized share against prompt length.")

    if "method_agreement" in tables:
        doc.section("Agreement between methods")
        doc.paragraph("The same model and checkpoint evaluated by several methods, on the "
                      "sequences both runs have seen; the reference is the run that stands for "
                      "the checkpoint in the comparisons (generation, else verification, else "
                      "the released list). Verification and generation flags agree but for "
                      "near-tied logits, which one pass and step-by-step decoding can round "
                      "apart (none in float32 in vmem's tests; more likely in float16/bfloat16). "
                      "A released list comes from the paper's own evaluation (float16 "
                      "generation).")
        doc.table(show(tables["method_agreement"]))

    doc.section("Checkpoint integrity")
    doc.paragraph(integrity.summary(runs, pairs) + " The SHA-256 shows its first 12 hex digits; "
                  "all 64 are in `tables/weights.csv`.")
    weights = tables["weights"]
    doc.table(show(weights.assign(weights_sha256=weights["weights_sha256"].str[:12])))

    for part in ANALYSES:
        part.section(doc, study)
    if "extraction_np" in tables:
        _np_section(doc, tables, drawn)
    if "approximate" in tables:
        _approximate_section(doc, tables)
    if "duplication" in tables:
        _duplication_section(doc, tables, drawn, notes)
        _taxonomy_section(doc, tables, drawn, notes)
    if len(tables.get("examples", ())):
        _examples_section(doc, tables)

    doc.heading("Files")
    doc.bullets([f"`tables/{name}.csv`" for name in tables]
                + [f"`{path}`" for path in drawn.values()])
    return doc


def _np_section(doc: Document, tables: dict[str, pd.DataFrame], drawn: dict[str, str]) -> None:
    doc.section("Probabilistic extraction")
    doc.paragraph("Runs with the continuation's log-probability: p_z = exp(cont_logprob) is the "
                  "chance that one sampled continuation is the true one; a sequence is "
                  "(n, p)-extractable when n samples find it with probability 1 − (1 − p_z)^n ≥ p "
                  "(Hayes et al. 2024). Beside it, the greedy memorized share.")
    wide = tables["extraction_np"].pivot_table(index=["run", "p", "greedy_share"], columns="n",
                                               values="share", sort=False)
    wide.columns = [f"n={n}" for n in wide.columns]
    shown = wide.reset_index()
    doc.table(show(shown).assign(**{c: [percent(v) for v in shown[c]] for c in wide.columns}))
    doc.figure(drawn["extraction_np"], "(n, p)-extractable share against the number of samples.")


def _approximate_section(doc: Document, tables: dict[str, pd.DataFrame]) -> None:
    doc.section("Approximate memorization")
    doc.paragraph("Generation runs: the edit similarity of the greedy continuation to the truth, "
                  "1 − token-level Levenshtein distance / continuation length (Ippolito et al. "
                  "2022), and the share of sequences above 0.9 and 0.75, beside exact "
                  "memorization (similarity 1).")
    doc.table(show(tables["approximate"]))


def _duplication_section(doc: Document, tables: dict[str, pd.DataFrame], drawn: dict[str, str],
                         notes: dict) -> None:
    duplicates = notes["duplicates"]
    doc.section("Memorization against duplication")
    unlisted = {run: n for run, n in notes["unlisted"].items() if n}
    doc.paragraph(f"How often each sequence's continuation occurs in the training data, from "
                  f"`{duplicates.source}` ({duplicates.layout}), in buckets by powers of two. "
                  f"All values: `tables/duplication.csv`."
                  + (" Sequences the table does not list are left out: "
                     + ", ".join(f"{run} {count(n)}" for run, n in unlisted.items()) + "."
                     if unlisted else ""))
    table = tables["duplication"]
    if len(table):
        doc.table(show(table[["run", "occurrences", "sequences", "memorized", "share"]]))
        doc.figure(drawn["duplication"], "Memorized share by the sequence's occurrences.")
    else:
        doc.paragraph("The table lists none of the evaluated sequences.")
    if "token_rarity" in tables:
        doc.paragraph("Against token rarity: the corpus frequency of the continuation's rarest "
                      "token (`freq_min`), in buckets by powers of ten. All values: "
                      "`tables/token_rarity.csv`.")
        rarity = tables["token_rarity"]
        if len(rarity):
            doc.table(show(rarity[["run", "rarest_token_frequency", "sequences", "memorized",
                                    "share"]]))
            doc.figure(drawn["token_rarity"], "Memorized share by the rarest token's frequency.")
    else:
        doc.paragraph("No token rarity: the table has no token-frequency columns "
                      "(freq_min, freq_median, freq_max: `vmem duplicates` writes them).")


def _taxonomy_section(doc: Document, tables: dict[str, pd.DataFrame], drawn: dict[str, str],
                      notes: dict) -> None:
    threshold, tokenizer = notes["taxonomy"]["threshold"], notes["taxonomy"]["tokenizer"]
    doc.section("Why it was memorized: recitation, reconstruction, recollection")
    doc.paragraph(
        f"Each memorized sequence, in this order (Prashanth et al. 2024): recitation if its "
        f"continuation occurs at least {threshold} times in the training data "
        f"(`--recitation-threshold`), else reconstruction if its text is templated "
        f"(incrementing or repeating, the rules of EleutherAI/semantic-memorization), else "
        f"recollection. A count includes every epoch: data seen E times gives each sequence a "
        f"count of at least E, so with several epochs recitation takes in sequences stored only "
        f"once (Pythia saw its data about once, 1.5 times for the deduped models). Memorized "
        f"sequences the table does not list are unlisted. All values: `tables/taxonomy.csv`.")
    if not tokenizer:
        doc.paragraph("No reconstruction category: templating is decided on the text, which "
                      "needs `--tokenizer`; shown are recitation and the rest (not recitation).")
    table = tables["taxonomy"]
    if not len(table):
        doc.paragraph("No run has memorized sequences the table lists.")
        return
    wide = table.pivot_table(index="run", columns="category", values="sequences", sort=False)
    shares = table.pivot_table(index="run", columns="category", values="share", sort=False)
    shown = pd.DataFrame({"run": wide.index})
    for category in wide.columns:
        shown[category] = [f"{count(n)} ({percent(v)})" for n, v in
                           zip(wide[category], shares[category], strict=True)]
    doc.table(shown)
    doc.figure(drawn["taxonomy"], "Memorized sequences per category against model size and "
                                  "against checkpoint.")


def _examples_section(doc: Document, tables: dict[str, pd.DataFrame]) -> None:
    doc.section("Examples of memorized sequences")
    doc.paragraph("A few memorized sequences of each run and category, decoded: the prompt, "
                  "then `|`, then the continuation the model reproduced. ↵ marks a newline, → a "
                  "tab. All: `tables/examples.csv`.")
    for run, rows in tables["examples"].groupby("run", sort=False):
        doc.paragraph(f"`{run}`")
        doc.examples([(f"{row['category']} · index {row['index']:,}"
                       + ("" if pd.isna(row["count"]) else f" · count {row['count']:,}"),
                       row["prompt"], row["continuation"]) for row in rows.to_dict("records")])


def _needs_generation(doc: Document, flags_only: list[str]) -> None:
    if flags_only:
        doc.paragraph(f"Needs the fractional score, which only a generation run records "
                      f"(`vmem evaluate --method generate`): not shown for the flags-only "
                      f"run(s) {', '.join(flags_only)}.")


def _headlines(tables: dict[str, pd.DataFrame]) -> list[str]:
    rates, pred = tables["memorization_rates"], tables["predictability"]
    lines = []
    for which, row in (("Highest", rates.loc[rates["share"].idxmax()]),
                       ("Lowest", rates.loc[rates["share"].idxmin()])):
        lines.append(f"{which} memorized share: {row['run']} ({row['model']}), "
                     f"{percent(row['share'])} ({count(row['memorized'])} of "
                     f"{count(row['evaluated'])}).")
    for family, rows in pred.groupby("family", sort=True):
        lines.append(f"Family {family} ({FAMILIES[family]}): {len(rows)} comparisons, mean "
                     f"precision {number(rows['precision'].mean())}, mean recall "
                     f"{number(rows['recall'].mean())}.")
    for row in tables["compute_fit"].itertuples():
        quality = (f"R² {number(row.r2)}" if row.points >= analysis.MIN_R2_POINTS
                   else f"R² needs {analysis.MIN_R2_POINTS} or more points")
        lines.append(f"Family {row.family} → {row.target}: recall ∝ compute^{row.exponent:.3f} "
                     f"({quality}, {row.points} points).")
    for target, rows in tables["equi_compute"].groupby("target", sort=True):
        inside = rows[rows["within"]]
        where = "compute points both fits cover"
        if not len(inside):
            inside, where = rows, "compute points (extrapolated: the fits share no compute range)"
        b_wins, a_wins = (inside["better"] == "B").sum(), (inside["better"] == "A").sum()
        lines.append(f"Predicting {target} at equal compute, the better predictor is family B "
                     f"(earlier checkpoints) at {b_wins} and family A (smaller models) at {a_wins} "
                     f"of {len(inside)} {where}.")
    return lines


def _distribution_summary(distribution: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for run, d in distribution.groupby("run", sort=False):
        rows.append(dict(run=run, mean_score=float((d["score"] * d["share"]).sum()),
                         score_0=d.loc[d["matches"] == 0, "share"].sum(),
                         score_at_least_half=d.loc[d["score"] >= 0.5, "share"].sum(),
                         score_1=d["share"].iloc[-1]))
    return pd.DataFrame(rows)
