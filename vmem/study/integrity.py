"""Checkpoint integrity: runs that claim different checkpoints but loaded identical weights.

Pythia's hub has served one checkpoint's weights under another's revision (EleutherAI/pythia#195,
#205, #206). A comparison between two such runs (family B above all: an earlier checkpoint that
predicts the final one) compares a model with itself. The runs stay in every table; the report
names them, from the weights' SHA-256 that `vmem evaluate` records in each manifest.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run

COLUMNS = ["run", "model", "step", "weights_sha256", "identical_to"]


def tables(study: Study) -> dict[str, pd.DataFrame]:
    return {"weights": weights_table(study.runs)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    return {}


def section(doc: Document, study: Study) -> None:
    doc.section("Checkpoint integrity")
    doc.paragraph(summary(study.runs, identical_pairs(study.runs)) + " The SHA-256 shows its "
                  "first 12 hex digits; all 64 are in `tables/weights.csv`.")
    weights = study.tables["weights"]
    doc.table(show(weights.assign(weights_sha256=weights["weights_sha256"].str[:12])))


def identical_pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs (in the runs' order) with the same weights but another model or step."""
    return [(a, b) for a, b in itertools.combinations(runs, 2)
            if a.weights_sha256 is not None and a.weights_sha256 == b.weights_sha256
            and (a.model, a.step) != (b.model, b.step)]


def weights_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: its weights' SHA-256 (empty where not recorded) and the runs that claim
    another checkpoint with the same weights, `;`-joined."""
    twins: dict[str, list[str]] = {run.name: [] for run in runs}
    for a, b in identical_pairs(runs):
        twins[a.name].append(b.name)
        twins[b.name].append(a.name)
    frame = pd.DataFrame(dict(
        run=[r.name for r in runs], model=[r.label for r in runs], step=[r.step for r in runs],
        weights_sha256=[r.weights_sha256 or "" for r in runs],
        identical_to=[";".join(twins[r.name]) for r in runs]), columns=COLUMNS)
    frame["step"] = frame["step"].astype("Int64")
    return frame


def describe_pair(a: Run, b: Run) -> str:
    return (f"{a.name} ({_claim(a)}) and {b.name} ({_claim(b)}) both loaded weights with sha256 "
            f"{a.weights_sha256[:12]}")


def _claim(run: Run) -> str:
    return run.label if run.step is None else f"{run.label}, step {run.step}"


def summary(runs: list[Run], pairs: list[tuple[Run, Run]]) -> str:
    fingerprinted = sum(run.weights_sha256 is not None for run in runs)
    found = (f"{len(pairs)} pair(s) of runs claim different checkpoints but hold identical "
             f"weights (listed at the top of this report)." if pairs else
             "The weights of runs that claim different checkpoints are all distinct.")
    return (f"{fingerprinted} of {len(runs)} runs record the SHA-256 of the weights they loaded "
            f"(none for runs evaluated before vmem recorded it, released lists, and runs whose "
            f"weight files could not be found). {found}")
