"""What happens to memorized sequences between checkpoints (EleutherAI/pythia#29): for consecutive
checkpoints of one model, on the sequences both have seen, how many stay memorized, are forgotten,
are newly memorized or never are; and how many forgotten sequences are memorized again later.

A checkpoint at step s has seen the sequences [0, s · sequences_per_step): a sequence it has not
seen yet can be neither kept nor forgotten, so every comparison stops there.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from vmem.study.comparisons import checkpoints_by_model
from vmem.study.context import Study
from vmem.study.display import show
from vmem.study.document import Document
from vmem.study.merged_runs import Run
from vmem.study.passes import trained_count, trained_mask
from vmem.study.plots import save_cropped

COLUMNS = ["model", "from_step", "to_step", "kept", "forgotten", "new", "never"]
RECURRENCE_COLUMNS = ["model", "checkpoints", "sequences", "forgotten", "memorized_again"]


def tables(study: Study) -> dict[str, pd.DataFrame]:
    found = {"forgetting": forgetting_table(study.standing),
             "forgetting_recurrence": recurrence_table(study.standing)}
    return {name: table for name, table in found.items() if len(table)}


def figures(study: Study, folder: Path) -> dict[str, str]:
    if "forgetting" not in study.tables:
        return {}
    forgetting_figure(study.tables["forgetting"], folder / "forgetting.png")
    return {"forgetting": "forgetting.png"}


def section(doc: Document, study: Study) -> None:
    if "forgetting" not in study.tables:
        return
    doc.section("Forgetting between checkpoints")
    doc.paragraph("Consecutive checkpoints of each model, on the sequences both have evaluated "
                  "and the earlier one had already trained on: memorized at both (kept), at the "
                  "earlier only (forgotten), at the later only (new), at neither (never).")
    doc.table(show(study.tables["forgetting"]))
    doc.figure(study.figures["forgetting"],
               "Forgotten and newly memorized sequences per transition.")
    if "forgetting_recurrence" in study.tables:
        doc.paragraph("Over the sequences all checkpoints of a model evaluated, each from the "
                      "first checkpoint that had trained on it: memorized at one checkpoint and "
                      "not at a later one (forgotten), and of those, memorized again at a still "
                      "later one.")
        doc.table(show(study.tables["forgetting_recurrence"]))


def seen_by_both(before: Run, after: Run) -> tuple[int, int]:
    """The sequences both runs evaluated and the earlier checkpoint had already trained on
    (those of them an instance filter masked are left out where counted)."""
    return (max(before.start, after.start),
            min(before.stop, after.stop, before.step * before.sequences_per_step))


def forgetting_table(runs: list[Run]) -> pd.DataFrame:
    """`runs` holds one run per checkpoint (split_twins' runs). A transition whose earlier
    checkpoint had trained on none of the sequences (step 0, say) has no row."""
    rows = []
    for checkpoints in checkpoints_by_model(runs).values():
        for before, after in pairwise(checkpoints):
            start, stop = seen_by_both(before, after)
            if start >= stop:
                continue
            was, now = before.memorized(start, stop), after.memorized(start, stop)
            never = ~was & ~now
            if (trained := trained_mask((before, after), start, stop)) is not None:
                was, now, never = was & trained, now & trained, never & trained
            rows.append(dict(model=before.label, from_step=before.step, to_step=after.step,
                             kept=int((was & now).sum()), forgotten=int((was & ~now).sum()),
                             new=int((~was & now).sum()), never=int(never.sum())))
    return pd.DataFrame(rows, columns=COLUMNS)


def recurrence_table(runs: list[Run]) -> pd.DataFrame:
    """Per model, over the sequences every checkpoint evaluated and the last had trained on (an
    instance filter's masked ones left out):
    memorized at one checkpoint and not at a later one (forgotten), and of those, memorized
    again at a still later one. A checkpoint counts for a sequence once it has trained on it."""
    rows = []
    for checkpoints in checkpoints_by_model(runs).values():
        last = checkpoints[-1]
        start = max(r.start for r in checkpoints)
        stop = min(min(r.stop for r in checkpoints), last.step * last.sequences_per_step)
        if start >= stop:
            continue
        index = np.arange(start, stop)
        trained = trained_mask(checkpoints, start, stop)
        ever, forgotten, again = (np.zeros(stop - start, dtype=bool) for _ in range(3))
        for run in checkpoints:
            seen = index < run.step * run.sequences_per_step
            if trained is not None:
                seen &= trained
            memorized = run.memorized(start, stop) & seen
            again |= forgotten & memorized
            forgotten |= ever & ~memorized & seen
            ever |= memorized
        rows.append(dict(model=last.label, checkpoints=",".join(str(r.step) for r in checkpoints),
                         sequences=trained_count(checkpoints, start, stop),
                         forgotten=int(forgotten.sum()),
                         memorized_again=int(again.sum())))
    return pd.DataFrame(rows, columns=RECURRENCE_COLUMNS)


def forgetting_figure(table: pd.DataFrame, path: Path) -> None:
    """Per transition: forgotten as a share of what was memorized, and new as a share of what
    was not."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    lost, gained = fig.subplots(1, 2)
    for model, rows in table.groupby("model", sort=False):
        memorized_before = rows["kept"] + rows["forgotten"]
        lost.plot(rows["to_step"], 100 * rows["forgotten"] / memorized_before.where(
            memorized_before > 0), marker="o", label=model)
        gained.plot(rows["to_step"], 100 * rows["new"] / (rows["new"] + rows["never"]),
                    marker="o", label=model)
    lost.set_title("Forgotten since the previous checkpoint")
    lost.set_ylabel("% of the sequences memorized there")
    gained.set_title("Newly memorized since the previous checkpoint")
    gained.set_ylabel("% of the sequences not memorized there")
    for ax in (lost, gained):
        ax.set_xlabel("training step of the later checkpoint")
        ax.legend(fontsize=8)
    save_cropped(fig, path)
