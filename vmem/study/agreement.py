"""Agreement between methods: one model and checkpoint evaluated by several methods (a run and
the reference that stands for the checkpoint, see comparisons.split_twins), their memorized
flags compared on the sequences both have seen."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import frame, joint_memorized, trained_count


def tables(study: Study) -> dict[str, pd.DataFrame]:
    if not study.twins:
        return {}
    return {"method_agreement": method_agreement_table(study.twins)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    return {}


def section(doc: Document, study: Study) -> None:
    if "method_agreement" not in study.tables:
        return
    doc.section("Agreement between methods")
    doc.paragraph("The same model and checkpoint evaluated by several methods, on the "
                  "sequences both runs have seen; the reference is the run that stands for "
                  "the checkpoint in the comparisons (generation, else verification, else "
                  "the released list). Verification and generation flags agree but for "
                  "near-tied logits, which one pass and step-by-step decoding can round "
                  "apart (none in float32 in vmem's tests; more likely in float16/bfloat16). "
                  "A released list comes from the paper's own evaluation (float16 "
                  "generation).")
    doc.table(show(study.tables["method_agreement"]))


def method_agreement_table(pairs: list[tuple[Run, Run]]) -> pd.DataFrame:
    """Two runs of one model and checkpoint by different methods (a run and the reference that
    stands for the checkpoint), on the sequences both have seen (and trained on): how far their
    memorized flags agree (verification and generation agree exactly in float32)."""
    rows = []
    for run, reference in pairs:
        start, stop = max(run.start, reference.start), min(run.stop, reference.stop)
        if start >= stop:  # nothing both have seen: nothing to compare
            continue
        sequences = trained_count((run, reference), start, stop)
        if not sequences:
            continue
        both, by_run, by_reference = joint_memorized(run, reference, start, stop)
        only_run, only_reference = by_run - both, by_reference - both
        rows.append(dict(run=run.name, method=run.method, reference=reference.name,
                         reference_method=reference.method, model=reference.label,
                         step=reference.step, sequences=sequences, memorized_both=both,
                         only_run=only_run, only_reference=only_reference,
                         agreement=1 - (only_run + only_reference) / sequences))
    return frame(rows, ["step"], ["run", "method", "reference", "reference_method", "model",
                                  "step", "sequences", "memorized_both", "only_run",
                                  "only_reference", "agreement"])
