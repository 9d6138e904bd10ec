"""`vmem report`: merged runs → the paper's tables, figures, report.md and report.html."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from vmem.errors import VmemError
from vmem.io.location import Output
from vmem.study import (
    agreement,
    bucket_means,
    by_duplication,
    compute,
    correlation,
    cross_correlation,
    distribution,
    examples,
    extraction,
    forgetting,
    index_trend,
    integrity,
    logprob,
    passes,
    predictability,
    prompt_length,
    rates,
    score_by_step,
    taxonomy,
    uniformity,
    why_memorized,
)
from vmem.study.comparisons import FAMILIES, split_twins
from vmem.study.context import Study
from vmem.study.display import count, number, percent, show
from vmem.study.document import Document
from vmem.study.duplication import Duplicates, read_duplicates
from vmem.study.merged_runs import Run, load_runs
from vmem.study.predictability import MEM_GRAPH_BOUND
from vmem.study.taxonomy import RECITATION_THRESHOLD, Sequences

# The analyses in the order the report shows them (see vmem.study.context for their shape).
ANALYSES = (rates, distribution, predictability, compute, score_by_step, logprob, prompt_length,
            agreement, integrity, forgetting, extraction, by_duplication, why_memorized,
            examples,
            # The seed's figures (EleutherAI/pythia's predictable-memorization/eda.ipynb)
            index_trend, bucket_means, correlation, cross_correlation, uniformity)


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
    for part in ANALYSES:
        study.tables.update(part.tables(study))
    with target.folder() as tmp:
        (tmp / "tables").mkdir()
        (tmp / "figures").mkdir()
        for name, table in study.tables.items():
            table.to_csv(tmp / "tables" / f"{name}.csv", index=False, float_format="%.10g",
                         lineterminator="\n")
        for part in ANALYSES:
            study.figures.update((name, f"figures/{file}") for name, file in
                                 part.figures(study, tmp / "figures").items())
        document = _document(study)
        (tmp / "report.md").write_text(document.markdown(), encoding="utf-8")
        (tmp / "report.html").write_text(document.html(tmp), encoding="utf-8")


def _document(study: Study) -> Document:
    runs, results = study.runs, study.results
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
    runs_table = pd.DataFrame(dict(
        run=[r.name for r in runs], model=[r.label for r in runs], suite=[r.suite for r in runs],
        step=[r.step for r in runs], params=[r.params for r in runs],
        indices=[f"[{count(r.start)}, {count(r.stop)})" for r in runs],
        sequences=[r.evaluated for r in runs], method=[r.method for r in runs],
        prompt_len=[",".join(map(str, sorted(r.prefix_by_prompt_len))) or str(r.prompt_len)
                    for r in runs], cont_len=[r.cont_len for r in runs],
        logprobs=["yes" if r.cont_logprob is not None else "no" for r in runs]))
    filtered = passes.filters_instances(runs)
    if filtered:
        runs_table.insert(runs_table.columns.get_loc("sequences") + 1, "untrained",
                         [r.untrained for r in runs])
    doc.table(show(runs_table))
    if filtered:
        doc.paragraph(f"In all, {count(sum(r.untrained for r in runs))} instances that the "
                      f"order's instance filter masked (never trained on; per run: `untrained`) "
                      f"are left out of every analysis: they keep their index, but no count, "
                      f"share, mean or comparison includes them.")

    doc.heading("Headline numbers")
    doc.bullets(_headlines(study.tables))

    for part in ANALYSES:
        part.section(doc, study)

    doc.heading("Files")
    doc.bullets([f"`tables/{name}.csv`" for name in study.tables]
                + [f"`{path}`" for path in study.figures.values()])
    return doc


def _headlines(tables: dict[str, pd.DataFrame]) -> list[str]:
    per_run, pred = tables["memorization_rates"], tables["predictability"]
    lines = []
    for which, row in (("Highest", per_run.loc[per_run["share"].idxmax()]),
                       ("Lowest", per_run.loc[per_run["share"].idxmin()])):
        lines.append(f"{which} memorized share: {row['run']} ({row['model']}), "
                     f"{percent(row['share'])} ({count(row['memorized'])} of "
                     f"{count(row['evaluated'])}).")
    for family, rows in pred.groupby("family", sort=True):
        lines.append(f"Family {family} ({FAMILIES[family]}): {len(rows)} comparisons, mean "
                     f"precision {number(rows['precision'].mean())}, mean recall "
                     f"{number(rows['recall'].mean())}.")
    for row in tables["compute_fit"].itertuples():
        quality = (f"R² {number(row.r2)}" if row.points >= compute.MIN_R2_POINTS
                   else f"R² needs {compute.MIN_R2_POINTS} or more points")
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
