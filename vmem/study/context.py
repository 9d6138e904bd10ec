"""What every analysis of `vmem report` reads, and the shape an analysis has.

An analysis is one module of vmem.study owning its tables, its figures and its text. It has three
functions, which the report calls for every analysis in its order (`report.ANALYSES`):

    tables(study) -> dict[str, pd.DataFrame]   its tables by name; none leaves its section out
    figures(study, folder) -> dict[str, str]   draws what its tables support into `folder`;
                                               figure name → file name there
    section(doc, study) -> None                its heading, paragraphs, tables and figures

All tables are computed before anything is drawn or written (a bad input fails before a file is
written); those of earlier analyses are in `study.tables` when a later one runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from vmem.study.duplication import Duplicates
from vmem.study.merged_runs import Run
from vmem.study.taxonomy import RECITATION_THRESHOLD, Sequences


@dataclass
class Study:
    runs: list[Run]  # every run, by suite, size, step and name
    results: str  # where the runs were found, for messages
    standing: list[Run]  # one run per model and checkpoint (see comparisons.split_twins)
    twins: list[tuple[Run, Run]]  # (standing run, another method's run of its checkpoint)
    duplicates: Duplicates | None = None
    sequences: Sequences | None = None  # the tokenizer and tokens, for text
    recitation_threshold: int = RECITATION_THRESHOLD
    index_bound: int | None = None  # comparisons only below this index (mem_graph.py's)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)  # name → path inside the report
    notes: dict[str, object] = field(default_factory=dict)  # no table: for text, later analyses
