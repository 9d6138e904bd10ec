"""`vmem demo`: the whole study end to end on a laptop CPU, as a worked example of vmem's API.

1. corpus     — standard-library text → BPE tokens → sequences, written with `mmidx.write_sharded`
                (vmem.demo.corpus)
2. duplicates — `duplicates.count_duplicates`: how often each sequence's continuation occurs in
                the stored token stream (DIR/data/duplicates.parquet), as `vmem duplicates` counts
3. train and  — a mini GPT-NeoX suite, saved as DIR/models/SIZE/stepN/ (vmem.demo.suite); each
   evaluate     (size, checkpoint) on the sequences it has seen, with `evaluate.evaluate`, then
                `merge.merge_run` into DIR/results/: the final checkpoints by generation with
                log-probabilities (the fractional score, edit similarity, (n, p)-extraction), the
                earlier ones by verification (their role is the memorized flag: predictability
                and forgetting); one process per core, a size evaluated as soon as it is trained
4. report     — `report.report` of DIR/results into DIR/report/, with the counts as `--duplicates`
                and the corpus's tokenizer (the taxonomy and its decoded examples)

Rerunning with the same DIR reuses what is finished: the corpus, its counts, trained models,
evaluated chunks (evaluate resumes by itself) and merged runs; the report is rewritten (it takes
seconds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from vmem.data import open_dataset
from vmem.demo import corpus as minicorpus
from vmem.demo import suite as minisuite
from vmem.duplicates import Counting, count_duplicates
from vmem.engines import EngineConfig, check_installed, choose_engine
from vmem.errors import VmemError
from vmem.evaluate import Evaluation, evaluate
from vmem.io.atomic import atomic_path
from vmem.runs.merge import merge_run
from vmem.scoring import GENERATE, VERIFY
from vmem.study.merged_runs import load_run
from vmem.study.report import report

CONTINUATION = 32  # tokens [32, 64) of a sequence: what memorization and its count look at
# Recitation is the paper's "highly duplicated": 6 or more copies in data seen about once. Each
# epoch stores every sequence once, so c copies in the corpus count c x epochs in the stored
# stream the models read (every count is at least `epochs`): the threshold scales with them.
RECITATION_COPIES = 6


@dataclass(frozen=True)
class DemoConfig:
    corpus: minicorpus.CorpusConfig
    sizes: tuple[str, ...]  # names in minisuite.SHAPES
    sequences_per_step: int
    checkpoints: tuple[float, ...]  # as shares of training; the last (1.0) is the final one


# ~1,900 sequences of 64+1 tokens, stored as 3 epochs: ~350 training steps of 16 sequences (the
# tiny models memorize next to nothing in fewer steps, or with one epoch).
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

    check_installed(choose_engine(engine).value)  # before anything is written or trained
    _claim(out, config, engine)
    stage(1, "corpus: Python's standard library → tokens → sequences")
    data = build_data(config, out)
    dataset = open_dataset(data)
    per_step = config.sequences_per_step
    steps = dataset.num_sequences // per_step
    checkpoints = tuple(round(share * steps) for share in config.checkpoints)
    print(f"  {dataset.num_sequences:,} sequences of {dataset.seq_len} tokens in "
          f"{len(dataset.files)} files ({dataset.layout}); {config.corpus.epochs} epochs, "
          f"{steps} steps of {per_step}; checkpoints {', '.join(f'step{s}' for s in checkpoints)}")

    stage(2, "duplicates: each continuation's occurrences in the stored token stream")
    counts = count_continuations(out, data, dataset.num_sequences)
    epochs = config.corpus.epochs
    print(f"  {epochs} epochs: a continuation the corpus holds c times counts c x {epochs} in "
          f"the stored stream the models read; recitation ({RECITATION_COPIES}+ copies) is a "
          f"count of {RECITATION_COPIES * epochs}+")

    stage(3, f"train GPT-NeoX sizes {', '.join(config.sizes)} on the stored order, and "
             f"evaluate each checkpoint on the sequences it has seen")
    training = minisuite.Training(data=data, tokenizer=str(out / "tokenizer"),
                                  vocab=config.corpus.vocab, sequences_per_step=per_step,
                                  steps=steps, checkpoints=checkpoints, seed=config.corpus.seed)
    train_and_evaluate(out, data, config.sizes, training, engine)

    stage(4, "report")
    report([str(out / "results")], out / "report", duplicates=counts,
           tokenizer=str(out / "tokenizer"), data=data,
           recitation_threshold=RECITATION_COPIES * config.corpus.epochs)
    print_headlines(out / "report", config.corpus.epochs)
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
    """DIR/data (the sharded dataset) and DIR/tokenizer."""
    data = out / "data"
    if (data / "document.idx").exists():  # write_sharded renames it into place last
        print("  already built")
        return str(data)
    corpus = minicorpus.build_corpus(config.corpus)
    minicorpus.save_tokenizer(corpus.tokenizer, out / "tokenizer")
    minicorpus.write_corpus(corpus, data, config.corpus.shards)
    return str(data)


def count_continuations(out: Path, data: str, sequences: int) -> str:
    """`vmem duplicates` on all `sequences` of the dataset (its suffix array in DIR/index):
    the table `vmem report --duplicates` reads, DIR/data/duplicates.parquet."""
    counts = out / "data" / "duplicates.parquet"
    if counts.exists():  # written whole or not at all
        print("  already counted")
        return str(counts)
    count_duplicates(Counting(data=data, index=str(out / "index"), output=str(counts),
                              start=0, stop=sequences, cont_len=CONTINUATION, offset=0,
                              prompt_len=CONTINUATION, progress=False))
    return str(counts)


def train_and_evaluate(out: Path, data: str, sizes: tuple[str, ...],
                       training: minisuite.Training, engine: str) -> None:
    """One process per core, each single-threaded: sizes train the largest first, and with the
    transformers engine each checkpoint is evaluated as soon as its folder is saved, on the
    cores the training leaves free (for tiny models a second thread in one process saves
    little, and on a busy machine a descheduled thread stalls every one of thousands of small
    operations: measured 10x slower). vLLM's engine takes the cores itself: it runs after
    training, one checkpoint at a time."""
    hf = choose_engine(engine).value == "hf"
    workers = os.cpu_count() or 1
    models = out / "models"
    runs: list[tuple[str, str, list[Future]]] = []  # name, run folder, its slices' futures
    with ProcessPoolExecutor(workers) as pool:
        trainings = [f for f in minisuite.train_suite(list(sizes), training, models, pool).values()
                     if f is not None]
        waiting = [(size, step) for size in sorted(
            sizes, key=lambda s: -minisuite.SHAPES[s].non_embedding_params())
            for step in training.checkpoints]
        while hf and waiting:
            finished = all(future.done() for future in trainings)
            saved = [(size, step) for size, step in waiting if (minisuite.checkpoint_dir(
                models, size, step) / "config.json").exists()]  # renamed into place when whole
            if finished and not saved:
                for future in trainings:
                    future.result()  # a failed training raises here
                raise VmemError(f"{models}: training ended without checkpoints {waiting}")
            for size, step in saved:
                runs += submit_evaluation(pool, out, data, size, step, training, engine, workers)
            waiting = [job for job in waiting if job not in saved]
            for future in wait(trainings, timeout=0 if saved else 1).done:
                future.result()
        for future in trainings:
            future.result()
        for name, folder, slices in runs:
            for future in slices:
                future.result()
            merge_run(folder, str(out / "results" / f"{name}.parquet"))
    if not hf:
        for size in sizes:
            for step in training.checkpoints:
                for name, folder, _ in submit_evaluation(None, out, data, size, step, training,
                                                         engine, 1):
                    merge_run(folder, str(out / "results" / f"{name}.parquet"))


def submit_evaluation(pool: Executor | None, out: Path, data: str, size: str, step: int,
                      training: minisuite.Training, engine: str,
                      slices: int) -> list[tuple[str, str, list[Future]]]:
    """The evaluation of one checkpoint, unless merged already: its run's name, folder and
    futures. The final checkpoint by generation in `slices` task slices (the longest jobs), an
    earlier one by verification in one. Without a pool it runs here, now."""
    method = GENERATE if step == training.checkpoints[-1] else VERIFY
    name = f"{size}-step{step}" + ("" if method == GENERATE else f"-{method}")
    if (out / "results" / f"{name}.manifest.json").exists():  # merge writes it last
        print(f"  {name}: already evaluated and merged", flush=True)
        return []
    ev = Evaluation(
        # vmem evaluate's defaults; compiling (vLLM) would cost more than these tiny models run.
        engine=EngineConfig(str(minisuite.checkpoint_dir(out / "models", size, step)),
                            engine=engine, enforce_eager=True),
        data=data, out=str(out / "runs" / name), checkpoint=step,
        sequences_per_step=training.sequences_per_step, chunk_size=1024, method=method,
        # The continuation's log-probability, for the report's (n, p)-extraction: the final
        # checkpoints' generation runs hold it.
        logprobs=method == GENERATE, progress=False)
    parts = slices if method == GENERATE else 1
    tasks = [dataclasses.replace(ev, task_id=k, num_tasks=parts) for k in range(parts)]
    if pool is None:
        for task in tasks:
            evaluate(task)
        return [(name, ev.out, [])]
    return [(name, ev.out, [pool.submit(evaluate_single_threaded, task) for task in tasks])]


def evaluate_single_threaded(ev: Evaluation) -> None:
    import torch

    torch.set_num_threads(1)
    evaluate(ev)


def print_headlines(report: Path, epochs: int) -> None:
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
    once, more = copies_shares(report.parent / "data" / "duplicates.parquet",
                               report.parent / "results" / f"{largest}.parquet", epochs)
    print(f"{largest}: memorized {once:.1%} of the sequences whose continuation the corpus "
          f"holds once (count {epochs}: read once an epoch), {more:.1%} of those it holds 4+ "
          f"times (count {4 * epochs}+)")
    taxonomy = pd.read_csv(report / "tables" / "taxonomy.csv")
    shown = taxonomy[taxonomy["run"] == largest]
    print(f"{largest}'s memorized sequences: " + ", ".join(
        f"{row.category} {row.sequences:,} ({row.share:.0%})" for row in shown.itertuples()))
    sys.stdout.flush()


def copies_shares(counts: Path, run: Path, epochs: int) -> tuple[float, float]:
    """The memorized share of a run's sequences whose continuation the corpus holds once (each
    epoch stores it once: count `epochs`) and of those it holds 4+ times (count 4 x `epochs` or
    more); nan for an empty group."""
    scored = load_run(str(run))
    count = pd.read_parquet(counts, columns=["index", "count"]).set_index("index")["count"]
    count = count.reindex(range(scored.start, scored.stop)).to_numpy()
    memorized = scored.memorized()
    once, more = memorized[count == epochs], memorized[count >= 4 * epochs]
    return (once.mean() if once.size else float("nan"),
            more.mean() if more.size else float("nan"))
