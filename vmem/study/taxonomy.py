"""Why a sequence was memorized: the recitation / reconstruction / recollection taxonomy
(Prashanth et al. 2024, EleutherAI/semantic-memorization). A memorized sequence is
1. recitation if its continuation's duplicate count is at least the threshold (default 6, the
   paper's "more than 5 duplicates");
2. else reconstruction if its detokenized text is templated (`templates.is_templated`);
3. else recollection.
Templating needs the sequences' tokens (each run's dataset, as its manifest records it, or one the
caller names) and a tokenizer; without a tokenizer the taxonomy is recitation against the rest
("not recitation"). Memorized sequences the duplicates table does not list are "unlisted"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from vmem.data import Dataset, open_dataset
from vmem.errors import VmemError, first_line
from vmem.scoring import prompt_lens
from vmem.study.duplication import Duplicates, read_duplicates
from vmem.study.export import first_tokens
from vmem.study.merged_runs import Run
from vmem.study.templates import is_templated

RECITATION, RECONSTRUCTION, RECOLLECTION = "recitation", "reconstruction", "recollection"
CATEGORIES = (RECITATION, RECONSTRUCTION, RECOLLECTION)
NOT_RECITATION = "not recitation"  # without a tokenizer: reconstruction and recollection together
UNLISTED = "unlisted"  # memorized, but the duplicates table has no count for it
RECITATION_THRESHOLD = 6
EXAMPLES = 3  # per run and category
DECODE_ROWS = 65_536  # sequences read and decoded at a time
COLUMNS = ["run", "category", "sequences", "share"]
EXAMPLE_COLUMNS = ["run", "category", "index", "count", "prompt", "continuation"]


def load_tokenizer(name: str):
    """A transformers tokenizer from a hub id or a folder: the local cache first (works offline),
    then the hub; one line where neither has it."""
    from transformers import AutoTokenizer

    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
        raise VmemError(f"--tokenizer {name}: no such folder")  # a path: never ask the hub
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # not cached: ask the hub below, whose error names the cause
        pass
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # any library failure is one line for the user
        raise VmemError(f"--tokenizer {name}: cannot be loaded as a tokenizer (a hub id such as "
                        f"EleutherAI/pythia-70m, or a folder with tokenizer files): "
                        f"{first_line(err)}") from None


def check_threshold(threshold: int) -> None:
    if threshold < 1:
        raise VmemError(f"--recitation-threshold {threshold}: expected a count of at least 1")


class Sequences:
    """The tokens and decoded text of runs' sequences: read from `dataset` when one is given,
    else from each run's recorded dataset (`settings.data`); templating decided once per
    dataset, window and sequence."""

    def __init__(self, tokenizer, dataset: Dataset | None = None, *,
                 s3_endpoint: str | None = None):
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.s3_endpoint = s3_endpoint
        self._opened: dict[str, Dataset] = {}
        self._templated: dict[tuple, dict[int, bool]] = {}

    def windows(self, run: Run, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The prompts and continuations (int64) of the run's sequences at sorted `indices`, as
        the run evaluated them (its offset, prompt and continuation lengths)."""
        dataset = self._dataset(run)
        begin = run.settings.get("offset", 0) + prompt_lens(run.settings)[-1]
        end = begin + run.cont_len
        if end > dataset.seq_len:
            raise VmemError(f"{dataset.location}: sequences of {dataset.seq_len} tokens are "
                            f"shorter than run {run.name}'s window (to token {end})")
        if indices.size and indices[-1] >= dataset.num_sequences:
            raise VmemError(f"{dataset.location}: has {dataset.num_sequences} sequences, but "
                            f"run {run.name} has memorized index {indices[-1]}; is it the run's "
                            f"dataset?")
        rows = first_tokens(dataset, indices, end)
        return rows[:, begin - run.prompt_len:begin], rows[:, begin:]

    def texts(self, run: Run, indices: np.ndarray) -> tuple[list[str], list[str]]:
        """Prompts and continuations as the model saw them, for the report's examples: decoded
        without clean-up (which deletes real spaces before punctuation), whatever the installed
        transformers' default. The templating test reads `templating_texts` instead."""
        prompts, continuations = self.windows(run, indices)
        return (self.tokenizer.batch_decode(prompts.tolist(), clean_up_tokenization_spaces=False),
                self.tokenizer.batch_decode(continuations.tolist(),
                                            clean_up_tokenization_spaces=False))

    def templating_texts(self, rows: np.ndarray) -> list[str]:
        """The text semantic-memorization's templating test read: `tokenizer.decode(tokens)` at
        the transformers 4 default, clean_up_tokenization_spaces=True (" ." → "." and the like).
        transformers 5 defaults to False and ignores True for BPE tokenizers such as Pythia's, so
        the clean-up is applied here, by the tokenizer's own `clean_up_tokenization`."""
        decoded = self.tokenizer.batch_decode(rows.tolist(), clean_up_tokenization_spaces=False)
        return [self.tokenizer.clean_up_tokenization(text) for text in decoded]

    def templated(self, run: Run, indices: np.ndarray) -> np.ndarray:
        """Whether the text of prompt and continuation together is templated, per index (the
        text semantic-memorization tests: the 64 tokens of a memorized sequence)."""
        key = (self._dataset(run).location, run.settings.get("offset", 0),
               prompt_lens(run.settings)[-1], run.prompt_len, run.cont_len)
        known = self._templated.setdefault(key, {})
        todo = np.array([i for i in indices.tolist() if i not in known], dtype=np.int64)
        for start in range(0, todo.size, DECODE_ROWS):  # bounded memory
            part = todo[start:start + DECODE_ROWS]
            prompts, continuations = self.windows(run, part)
            texts = self.templating_texts(np.hstack([prompts, continuations]))
            known.update(zip(part.tolist(), map(is_templated, texts), strict=True))
        return np.array([known[i] for i in indices.tolist()], dtype=bool)

    def _dataset(self, run: Run) -> Dataset:
        if self.dataset is not None:
            return self.dataset
        recorded = run.settings.get("data")
        if not recorded:
            raise VmemError(f"run {run.name}: its manifest records no dataset; give --data (the "
                            f"training data it was evaluated on)")
        location = recorded["location"]
        if location not in self._opened:
            raw = recorded.get("layout") == "raw"
            try:
                self._opened[location] = open_dataset(
                    location, seq_len=recorded.get("seq_len") if raw else None,
                    dtype=recorded.get("dtype") if raw else None, s3_endpoint=self.s3_endpoint)
            except VmemError as err:
                raise VmemError(f"run {run.name}: its recorded dataset cannot be read ({err}); "
                                f"give --data") from None
        return self._opened[location]


@dataclass(frozen=True)
class Classified:
    """A run's memorized sequences: index, duplicate count (0 where unlisted) and category."""

    run: Run
    index: np.ndarray
    count: np.ndarray
    category: np.ndarray  # str


def categories(count: np.ndarray, listed: np.ndarray, templated: np.ndarray | None,
               threshold: int = RECITATION_THRESHOLD) -> np.ndarray:
    """The category of each memorized sequence, in the taxonomy's order: recitation first, then
    reconstruction; `templated` None gives "not recitation" for both of the others."""
    rest = (np.full(count.shape, NOT_RECITATION, dtype=object) if templated is None
            else np.where(templated, RECONSTRUCTION, RECOLLECTION).astype(object))
    return np.where(~listed, UNLISTED, np.where(count >= threshold, RECITATION, rest))


def classify_run(run: Run, duplicates: Duplicates, sequences: Sequences | None,
                 threshold: int = RECITATION_THRESHOLD) -> Classified:
    """The run's memorized sequences, categorized; templating decided only where it decides
    (listed, below the threshold)."""
    index = np.flatnonzero(run.memorized()).astype(np.int64) + run.start
    listed, count = duplicates.lookup(index)
    templated = None
    if sequences is not None:
        undecided = listed & (count < threshold)
        templated = np.zeros(index.size, dtype=bool)
        templated[undecided] = sequences.templated(run, index[undecided])
    return Classified(run, index, count, categories(count, listed, templated, threshold))


def classify(runs: list[Run], duplicates: Duplicates, sequences: Sequences | None,
             threshold: int = RECITATION_THRESHOLD) -> list[Classified]:
    """Every run with memorized sequences the table lists."""
    out = []
    for run in runs:
        index = np.flatnonzero(run.memorized()).astype(np.int64) + run.start
        if duplicates.lookup(index)[0].any():
            out.append(classify_run(run, duplicates, sequences, threshold))
    return out


def export_columns(run: Run, dataset: Dataset, duplicates: str, tokenizer: str | None,
                   threshold: int = RECITATION_THRESHOLD, *,
                   s3_endpoint: str | None = None) -> dict[str, pa.Array]:
    """`vmem export-memorized`'s columns `count` (null where unlisted) and `category` for the
    run's memorized sequences, templating on `dataset` with `tokenizer` (without one the
    category is recitation or not recitation)."""
    check_threshold(threshold)
    sequences = None if tokenizer is None else Sequences(load_tokenizer(tokenizer), dataset)
    c = classify_run(run, read_duplicates(duplicates, s3_endpoint=s3_endpoint), sequences,
                     threshold)
    listed = c.category != UNLISTED
    return {"count": pa.array(c.count, mask=~listed, type=pa.int64()),
            "category": pa.array(c.category.tolist(), type=pa.string())}


def shown_categories(classified: list[Classified]) -> list[str]:
    """The taxonomy's categories (with a tokenizer) or recitation and the rest, then unlisted
    where any run has such sequences."""
    found = set().union(*(set(c.category) for c in classified)) if classified else set()
    main = [RECITATION, NOT_RECITATION] if NOT_RECITATION in found else list(CATEGORIES)
    return main + ([UNLISTED] if UNLISTED in found else [])


def taxonomy_table(classified: list[Classified]) -> pd.DataFrame:
    """One row per run and category: its memorized sequences of that category and their share
    of the run's memorized sequences."""
    rows = []
    for c in classified:
        for category in shown_categories(classified):
            n = int((c.category == category).sum())
            if category != UNLISTED or n:
                rows.append(dict(run=c.run.name, category=category, sequences=n,
                                 share=n / c.index.size))
    return pd.DataFrame(rows, columns=COLUMNS)


def examples_table(classified: list[Classified], sequences: Sequences,
                   per_category: int = EXAMPLES) -> pd.DataFrame:
    """Per run and category, `per_category` memorized sequences spread evenly over the
    category's indices, decoded: prompt and continuation."""
    rows = []
    for c in classified:
        for category in shown_categories(classified):
            members = np.flatnonzero(c.category == category)
            if not members.size:
                continue
            picked = members[np.unique(np.linspace(0, members.size - 1,
                                                   min(per_category, members.size)).round()
                                       .astype(np.int64))]
            prompts, continuations = sequences.texts(c.run, c.index[picked])
            for at, prompt, continuation in zip(picked, prompts, continuations, strict=True):
                rows.append(dict(run=c.run.name, category=category, index=int(c.index[at]),
                                 count=int(c.count[at]) if category != UNLISTED else None,
                                 prompt=prompt, continuation=continuation))
    return pd.DataFrame(rows, columns=EXAMPLE_COLUMNS).astype({"count": "Int64"})
