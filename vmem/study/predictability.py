"""Predictability from cheaper runs: 'memorized by the cheap run' as a classifier of 'memorized
by the target run', for the paper's two families of comparisons (see comparisons.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from vmem import pythia
from vmem.errors import VmemError
from vmem.study.comparisons import FAMILIES, Comparison, plan_comparisons, without_final
from vmem.study.context import Study
from vmem.study.display import count, show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import frame, joint_memorized, trained_count
from vmem.study.plots import colors, legend, save

# EleutherAI/pythia's mem_graph.py compares runs only below this index: 23,000 steps of 1,024
# sequences, what every checkpoint of the paper's grid has seen.
MEM_GRAPH_BOUND = 23_000 * 1024
COLUMNS = ["family", "cheap", "target", "tp", "fp", "fn", "tn", "precision", "recall", "fpr",
           "f1", "cheap_compute", "suite", "cheap_model", "cheap_step", "cheap_params",
           "target_model", "target_step", "start", "stop"]


def tables(study: Study) -> dict[str, pd.DataFrame]:
    comparisons = plan_comparisons(study.standing, study.results)
    return {"predictability": predictability_table(comparisons, study.index_bound)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if not len(study.tables["predictability"]):
        return {}
    predictability_figure(study.tables["predictability"], folder / "predictability.png")
    return {"predictability": "predictability.png"}


def section(doc: Document, study: Study) -> None:
    pred = study.tables["predictability"]
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
        doc.figure(study.figures["predictability"], "Precision and recall of each comparison.")
    else:
        doc.paragraph("No comparison: that needs two models of a suite at one checkpoint "
                      "(family A) or two checkpoints of one model (family B).")
    if missing := without_final(study.standing):
        doc.paragraph(f"No family B comparison for {', '.join(missing)}: several checkpoints "
                      f"but not the final one (step{pythia.FINAL_STEP}), the target they "
                      f"predict.")


@dataclass(frozen=True)
class Confusion:
    """'memorized by the cheap run' as a predictor of 'memorized by the target run'."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def fpr(self) -> float:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def overlap(a: Run, b: Run, bound: int | None = None) -> tuple[int, int]:
    """The sequence indices both runs have seen (below `bound` where given); a comparison is
    restricted to them."""
    start, stop = max(a.start, b.start), min(a.stop, b.stop)
    if start >= stop:
        raise VmemError(f"runs {a.name} [{a.start}, {a.stop}) and {b.name} [{b.start}, {b.stop}) "
                        "share no sequence index; a comparison needs sequences both have seen")
    if bound is not None and start >= bound:
        raise VmemError(f"--index-bound {bound}: runs {a.name} and {b.name} share only indices "
                        f"[{start}, {stop}), none below it")
    return start, stop if bound is None else min(stop, bound)


def confusion(cheap: Run, target: Run, bound: int | None = None) -> Confusion:
    start, stop = overlap(cheap, target, bound)
    both, by_cheap, by_target = joint_memorized(cheap, target, start, stop)
    return Confusion(tp=both, fp=by_cheap - both, fn=by_target - both,
                     tn=trained_count((cheap, target), start, stop) - by_cheap - by_target + both)


def predictability_table(comparisons: list[Comparison], bound: int | None = None
                         ) -> pd.DataFrame:
    """Each comparison on the sequences both runs have seen, below `bound` where given."""
    rows = []
    for comp in comparisons:
        cm = confusion(comp.cheap, comp.target, bound)
        start, stop = overlap(comp.cheap, comp.target, bound)
        compute = comp.cheap.compute
        rows.append(dict(family=comp.family, cheap=comp.cheap.name, target=comp.target.name,
                         tp=cm.tp, fp=cm.fp, fn=cm.fn, tn=cm.tn, precision=cm.precision,
                         recall=cm.recall, fpr=cm.fpr, f1=cm.f1,
                         cheap_compute=math.nan if compute is None else compute,
                         suite=comp.target.suite, cheap_model=comp.cheap.label,
                         cheap_step=comp.cheap.step, cheap_params=comp.cheap.params,
                         target_model=comp.target.label, target_step=comp.target.step,
                         start=start, stop=stop))
    return frame(rows, ["cheap_step", "cheap_params", "target_step"], COLUMNS)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def predictability_figure(table: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, family, x_column, x_label in (
        (axes[0], "A", "cheap_params", "parameters of the cheap (smaller) model"),
        (axes[1], "B", "cheap_step", "training step of the cheap (earlier) checkpoint"),
    ):
        rows = table[table["family"] == family]
        series = list(rows.groupby("target", sort=True))
        for color, (target, group) in zip(colors(len(series)), series, strict=True):
            group = group.sort_values(x_column)
            x = group[x_column].astype(float)
            ax.plot(x, group["recall"], marker="o", color=color, label=f"recall → {target}")
            ax.plot(x, group["precision"], marker="s", ls="--", color=color,
                    label=f"precision → {target}")
        if family == "A" and len(rows):
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_title(f"Family {family}: {FAMILIES[family]}", fontsize=9)
        if series:
            legend(ax)
        else:
            ax.text(0.5, 0.5, "no comparison of this family", ha="center",
                    transform=ax.transAxes)
    axes[0].set_ylabel("precision / recall of 'memorized by cheap run'")
    axes[0].set_ylim(-0.02, 1.02)
    fig.suptitle("Predicting the target run's memorized sequences from a cheaper run")
    save(fig, path)
