"""`vmem demo`: the whole study end to end on a laptop CPU, as a worked example of vmem's API.

1. corpus   — standard-library text → BPE tokens → sequences, written with `mmidx.write_sharded`
              (vmem.demo.corpus)
2. train    — a mini GPT-NeoX suite, saved as DIR/models/SIZE/stepN/ (vmem.demo.suite)
3. evaluate — every (size, checkpoint) on the sequences it has seen, with `evaluate.evaluate`,
              then `merge.merge_run` into DIR/results/
4. report   — `report.report` of DIR/results into DIR/report/, with the corpus's own duplicate
              counts (DIR/data/duplicates.parquet, index,count) as `--duplicates`

Rerunning with the same DIR reuses what is finished: the corpus, trained models, evaluated chunks
(evaluate resumes by itself) and merged runs; the report is rewritten (it takes seconds).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vmem.data import open_dataset
from vmem.demo import corpus as minicorpus
from vmem.demo import suite as minisuite
from vmem.engines import EngineConfig, choose_engine
from vmem.errors import VmemError
from vmem.evaluate import Evaluation, evaluate
from vmem.io.atomic import atomic_path
from vmem.runs.merge import merge_run
from vmem.study.report import report


@dataclass(frozen=True)
class DemoConfig:
    corpus: minicorpus.CorpusConfig
    sizes: tuple[str, ...]  # names in minisuite.SHAPES
    sequences_per_step: int
    checkpoints: tuple[float, ...]  # as shares of training; the last (1.0) is the final one


# ~1,900 sequences of 64+1 tokens, stored as 3 epochs: ~350 training steps of 16 sequences.
CORPUS = minicorpus.CorpusConfig(chars=360_000, codec_share=0.3, head_chars=3000, vocab=2048,
                                 seq_len=65, epochs=3, shards=4)
DEFAULT = DemoConfig(CORPUS, ("0.2m", "1m", "4m"), sequences_per_step=16,
                     checkpoints=(2 / 3, 1.0))
# --quick: the default suite without its largest size, on the same data (so the same weights),
# evaluated the same way.
QUICK = DemoConfig(CORPUS, ("0.2m", "1m"), sequences_per_step=16, checkpoints=(2 / 3, 1.0))


def run_demo(config: DemoConfig, out: Path, engine: str) -> None:
    started = time.time()

    def stage(number: int, title: str) -> None:
        elapsed = time.time() - started
        print(f"\n[vmem demo {int(elapsed) // 60}:{int(elapsed) % 60:02d}] {number}/4 {title}",
              flush=True)

    _claim(out, config, engine)
    stage(1, "corpus: Python's standard library → tokens → sequences")
    data = build_data(config, out)
    dataset = open_dataset(data)
    per_step = config.sequences_per_step
    steps = dataset.num_sequences // per_step
    checkpoints = tuple(round(share * steps) for share in config.checkpoints)
    print(f"  {dataset.num_sequences:,} sequences of {dataset.seq_len} tokens in "
          f"{len(dataset.files)} files ({dataset.layout}); {steps} steps of {per_step}; "
          f"checkpoints {', '.join(f'step{s}' for s in checkpoints)}")

    stage(2, f"train: GPT-NeoX sizes {', '.join(config.sizes)} on the stored order")
    training = minisuite.Training(data=data, tokenizer=str(out / "tokenizer"),
                                  vocab=config.corpus.vocab, sequences_per_step=per_step,
                                  steps=steps, checkpoints=checkpoints, seed=config.corpus.seed)
    minisuite.train_suite(list(config.sizes), training, out / "models")

    stage(3, "evaluate: each checkpoint on the sequences it has seen")
    if choose_engine(engine).value == "hf":
        import torch

        # Tiny models: a second thread saves little, and on a busy machine a descheduled
        # thread stalls every one of the thousands of small operations (measured: 10x slower).
        torch.set_num_threads(1)
    for size in config.sizes:
        for step in checkpoints:
            evaluate_checkpoint(out, data, size, step, per_step, engine)

    stage(4, "report")
    report([str(out / "results")], out / "report", duplicates=duplicates_table(out))
    print_headlines(out / "report")
    elapsed = time.time() - started
    print(f"\nvmem demo: done in {int(elapsed) // 60}:{int(elapsed) % 60:02d}; report: "
          f"{(out / 'report' / 'report.html').resolve()}")


def _claim(out: Path, config: DemoConfig, engine: str) -> None:
    """DIR/demo.json records what DIR holds; a rerun must ask for the same demo."""
    settings = json.loads(json.dumps({"config": asdict(config), "engine": engine}))
    path = out / "demo.json"
    if path.exists():
        if json.loads(path.read_text()) != settings:
            raise VmemError(f"--out {out} holds a demo with other settings ({path}); rerun it "
                            f"with the same --quick/--engine or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(json.dumps(settings, indent=2) + "\n")


def build_data(config: DemoConfig, out: Path) -> str:
    """DIR/data (the sharded dataset + each sequence's duplication count) and DIR/tokenizer."""
    data, counts = out / "data", duplicates_table(out)
    if Path(counts).exists():  # written last
        print("  already built")
        return str(data)
    corpus = minicorpus.build_corpus(config.corpus)
    minicorpus.save_tokenizer(corpus.tokenizer, out / "tokenizer")
    minicorpus.write_corpus(corpus, data, config.corpus.shards)
    table = pa.table({"index": np.arange(len(corpus.opening_counts), dtype=np.int64),
                      "count": corpus.opening_counts.astype(np.int64)})
    with atomic_path(counts) as tmp:
        pq.write_table(table, tmp)
    return str(data)


def duplicates_table(out: Path) -> str:
    """How often each stored sequence's opening occurs in the corpus text, as `vmem report
    --duplicates` reads it."""
    return str(out / "data" / "duplicates.parquet")


def evaluate_checkpoint(out: Path, data: str, size: str, step: int, sequences_per_step: int,
                        engine: str) -> None:
    name = f"{size}-step{step}"
    merged = out / "results" / f"{name}.parquet"
    if merged.with_name(f"{name}.manifest.json").exists():  # merge writes it last
        print(f"  {name}: already evaluated and merged")
        return
    model = minisuite.checkpoint_dir(out / "models", size, step)
    ev = Evaluation(
        # vmem evaluate's defaults; compiling (vLLM) would cost more than these tiny models run.
        engine=EngineConfig(str(model), engine=engine, enforce_eager=True),
        data=data, out=str(out / "runs" / name), checkpoint=step,
        sequences_per_step=sequences_per_step, chunk_size=1024,
        logprobs=True)  # the continuation's log-probability: the report's (n, p)-extraction
    evaluate(ev)
    gc.collect()  # the engine is gone before the next one starts: one engine at a time
    merge_run(ev.out, str(merged))


def print_headlines(report: Path) -> None:
    rates = pd.read_csv(report / "tables" / "memorization_rates.csv")
    final = rates[rates["step"] == rates["step"].max()].sort_values("params")
    print("\nMemorized share at the final checkpoint:")
    for row in final.itertuples():
        print(f"  {row.model:>5} ({row.params:,} parameters): {row.share:.2%} "
              f"({row.memorized:,} of {row.evaluated:,} sequences)")
    largest = final.iloc[-1]["run"]
    predictors = pd.read_csv(report / "tables" / "predictability.csv")
    predictors = predictors[predictors["target"] == largest].sort_values(
        ["recall", "precision"], ascending=False)
    if len(predictors):
        best = predictors.iloc[0]
        print(f"Best predictor of {largest}: {best['cheap']} (family {best['family']}), "
              f"recall {best['recall']:.3f}, precision {best['precision']:.3f}")
    dup = pd.read_csv(report / "tables" / "duplication.csv")
    dup = dup[dup["run"] == largest]
    once, more = dup[dup["occurrences_min"] == 1], dup[dup["occurrences_min"] >= 4]
    if len(once) and len(more):
        print(f"{largest}: memorized {once['memorized'].sum() / once['sequences'].sum():.1%} of "
              f"sequences whose opening occurs once, "
              f"{more['memorized'].sum() / more['sequences'].sum():.1%} of those occurring 4+ "
              f"times")
    sys.stdout.flush()
