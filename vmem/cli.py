"""`vmem` command line: parse arguments, call one function; a VmemError is one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from vmem.errors import VmemError
from vmem.quiet import quiet_libraries

DESCRIPTION = """\
Measure verbatim memorization of training data in language models (Biderman et al., 2023):
each training sequence's first 32 tokens are the prompt, the model continues greedily for 32
tokens, and the score is the share that equals the true continuation (1.0 = memorized).
Start with `vmem demo` (the whole study on a mini suite, no downloads); on real data:
`vmem evaluate` -> `vmem status` (on a cluster) -> `vmem merge` -> `vmem report`. EleutherAI's
released lists of memorized sequences join a report through `vmem import-released`."""


def _add_data_source(p: argparse.ArgumentParser, *, dtype_alias: bool = False) -> None:
    p.add_argument("--seq-len", type=int, default=None,
                   help="read PATH as a headerless raw .bin of rows this long (Pythia: 2049); "
                        "a .npy's header gives it (if given, they must agree)")
    # `vmem evaluate --dtype` is the model's dtype, so the token dtype has its own name there.
    flags = ["--data-dtype", "--dtype"] if dtype_alias else ["--data-dtype"]
    p.add_argument(*flags, dest="data_dtype", default=None,
                   help="token dtype of a raw .bin (default uint16)")
    _add_s3_endpoint(p)
    _add_sequences_per_step(p)


def _add_s3_endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                   help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL or AWS)")


def _add_sequences_per_step(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sequences-per-step", type=int, default=None,
                   help="sequences per training step (default: the order's own where it "
                        "records one, else Pythia's 1024)")
    # The flag's old name read as the inference batch (that is --chunk-size) and silently
    # scored other sequences: it is refused by name (see `main`), never taken as either.
    p.add_argument("--batch-size", dest="refused_batch_size", default=None,
                   help=argparse.SUPPRESS)


def _add_taxonomy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, metavar="TOK",
                   help="tokenizer (hub id or folder; Pythia's: EleutherAI/pythia-70m) to decode "
                        "sequences: the reconstruction category (templated text) and examples")
    p.add_argument("--recitation-threshold", type=int, default=6, metavar="N",
                   help="a memorized sequence whose continuation occurs N or more times is "
                        "recitation (default 6: the paper's 'more than 5 duplicates')")


def _prompt_lens(text: str) -> int | list[int]:
    try:
        lens = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of tokens, or several "
                                         f"separated by commas") from None
    return lens[0] if len(lens) == 1 else lens


def _add_range(p: argparse.ArgumentParser, *, checkpoint: bool) -> None:
    p.add_argument("--start", type=int, default=None, help="first sequence index")
    p.add_argument("--stop", type=int, default=None, help="one past the last sequence index")
    if checkpoint:
        p.add_argument("--checkpoint", type=int, default=None, metavar="N",
                       help="all sequences seen by checkpoint stepN: "
                            "[0, N * sequences per step)")
    else:
        p.add_argument("--step", type=int, default=None,
                       help="the sequences of training step S")


def _add_engine(p: argparse.ArgumentParser, *, engine: str) -> None:
    """The model, its engine and the prompt window: shared by evaluate and spot. Each dest is
    the name of an EngineConfig or Evaluation field."""
    p.add_argument("--model", required=True, help="Hugging Face id or local model folder")
    p.add_argument("--revision", default=None,
                   help="hub revision (Pythia: stepN; default step{--checkpoint})")
    p.add_argument("--engine", choices=["auto", "vllm", "hf"], default=engine,
                   help=f"vllm, hf (transformers: starts in seconds) or auto (vLLM on GPU, "
                        f"transformers on CPU); default {engine}")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="auto: float16 on GPU (as the paper); on CPU bfloat16 where the CPU "
                        "computes it natively (AMX, AVX512-BF16), else float32")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (GPUs per engine)")
    p.add_argument("--method", choices=["generate", "verify"], default="generate",
                   help="generate: greedy decoding, the paper's fractional score; verify: one "
                        "teacher-forced pass decides memorized and the prefix match exactly, "
                        "without decoding")
    p.add_argument("--prompt-len", type=_prompt_lens, default=32, metavar="P[,P...]",
                   help="prompt tokens (default 32); several lengths, e.g. 32,64,128, in one "
                        "--method verify pass")
    p.add_argument("--cont-len", type=int, default=32)
    p.add_argument("--offset", type=int, default=0, help="token offset of the prompt in a sequence")
    p.add_argument("--allow-eos", action="store_true",
                   help="let the model emit end-of-text (paper mode masks it)")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="vLLM: sequences decoded concurrently")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="vLLM: tokens per scheduler step")
    p.add_argument("--memory-share", type=float, default=None,
                   help="vLLM gpu_memory_utilization (default 0.9 on GPU; on CPU the KV cache "
                        "is sized from the work instead)")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM: no CUDA graphs/compile")
    p.add_argument("--download-dir", default=None, help="where model weights are cached")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmem", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show the libraries' logs (vLLM, transformers) besides vmem's own")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect token datasets and training orders; import a "
                                       "corpus; build OLMo's order")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    info = data_sub.add_parser("info", parents=[common],
                               help="sequences, length, dtype, layout, shards, steps")
    info.add_argument("path")
    _add_data_source(info, dtype_alias=True)
    dump = data_sub.add_parser("dump", parents=[common],
                               help="write rows [start, stop) as a 2-D .npy")
    dump.add_argument("path")
    _add_data_source(dump, dtype_alias=True)
    _add_range(dump, checkpoint=False)
    dump.add_argument("-o", "--output", required=True, help="FILE.npy")
    imp = data_sub.add_parser("import", parents=[common],
                              help="a corpus of your own (token rows, token id lists or text) → "
                                   "a dataset in training order, with a manifest")
    imp.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="files (local or s3://) in training order, all of one kind: .npy "
                          "or .bin of token rows; .parquet or .jsonl of token id lists; .jsonl "
                          "of text (with --tokenizer)")
    imp.add_argument("-o", "--output", required=True,
                     help="PREFIX: writes PREFIX.bin, PREFIX.idx, PREFIX.manifest.json (and "
                          "PREFIX.lengths.npy with --packing document)")
    imp.add_argument("--seq-len", type=int, default=None,
                     help="tokens per row: of a headerless .bin source, or of the rows "
                          "--packing cuts")
    imp.add_argument("--data-dtype", default=None, help="token dtype of a raw .bin source")
    imp.add_argument("--field", default=None,
                     help="parquet column or jsonl key (default token_ids; in jsonl, text "
                          "where a line has no token_ids)")
    imp.add_argument("--tokenizer", default=None, metavar="TOK",
                     help="hub id or folder: tokenizes text; token ids must lie in its "
                          "vocabulary")
    imp.add_argument("--packing", choices=["concat", "document"], default=None,
                     help="how the training made rows of documents: concat (each followed by "
                          "end-of-text, joined, cut into --seq-len rows, the rest dropped) or "
                          "document (one a row, cut at --seq-len, padded; padding never scored)")
    imp.add_argument("--eos-id", type=int, default=None,
                     help="end-of-text id: joins documents with --packing concat (default the "
                          "tokenizer's); with document, appended to each if given")
    imp.add_argument("--pad-id", type=int, default=None,
                     help="pad id for --packing document (default the tokenizer's)")
    _add_s3_endpoint(imp)
    imp.add_argument("--sequences-per-step", type=int, default=None,
                     help="sequences per training step, recorded in the manifest: the "
                          "dataset's --checkpoint N is then the rows [0, N * this)")

    ol = data_sub.add_parser("olmo", parents=[common],
                             help="OLMo's training order from its training config → an order "
                                  "folder that --data reads")
    ol.add_argument("config", help="the run's training config (YAML), e.g. OLMo2-7B-stage1.yaml")
    ol.add_argument("-o", "--output", required=True,
                    help="local order folder: olmo-order.json and the built global_indices.npy")
    ol.add_argument("--root", default=None,
                    help="folder or s3:// prefix standing for the host of the config's URLs "
                         "(http://HOST/preprocessed/... is read as ROOT/preprocessed/...)")
    ol.add_argument("--global-indices", default=None, metavar="FILE",
                    help="a published global_indices.npy, read in place instead of building one")
    _add_s3_endpoint(ol)

    ev = sub.add_parser("evaluate", parents=[common],
                        help="score sequences for memorization into score files")
    _add_engine(ev, engine="auto")
    ev.add_argument("--data", required=True,
                    help="dataset path or s3:// URL (also GPT-NeoX index maps or a folder of "
                         "train-NNNNNN.parquet: docs/orders.md)")
    _add_data_source(ev)
    _add_range(ev, checkpoint=True)
    ev.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    ev.add_argument("--logprobs", action="store_true",
                    help="also record the teacher-forced log-prob of the true continuation")
    ev.add_argument("--chunk-size", type=int, default=None,
                    help="sequences per engine call and per durable score file")
    ev.add_argument("--task-id", type=int, default=None, help="this task's slice (0-based)")
    ev.add_argument("--num-tasks", type=int, default=None, help="how many slices in all")
    ev.add_argument("--data-parallel", type=int, default=1,
                    help="engines on this node, each on its own part of the slice and GPU(s)")
    ev.add_argument("--staging-dir", default=None, help="local staging folder for --out s3://")
    ev.add_argument("--params", type=int, default=None,
                    help="parameter count to record (known for Pythia)")
    ev.add_argument("--no-progress", dest="progress", action="store_false")

    spot = sub.add_parser("spot", parents=[common],
                          help="show prompt, truth and generation for a few sequences")
    # A few sequences: engine start-up dominates, and transformers starts in seconds.
    _add_engine(spot, engine="hf")
    spot.add_argument("--data", required=True)
    _add_data_source(spot)
    spot.add_argument("--index", type=int, action="append", required=True,
                      help="sequence index (repeat for several)")
    spot.add_argument("--tokenizer", default=None, help="tokenizer id or path, to decode text")

    st = sub.add_parser("status", parents=[common],
                        help="print the ids of a run's unfinished task slices, one per line")
    st.add_argument("out", help="run folder or s3://bucket/prefix (vmem evaluate --out)")
    st.add_argument("--num-tasks", type=int, default=1, help="how many slices in all")
    _add_range(st, checkpoint=True)
    _add_sequences_per_step(st)
    _add_s3_endpoint(st)

    mg = sub.add_parser("merge", parents=[common],
                        help="merge a run's score files into one table, checking coverage")
    mg.add_argument("run", help="run folder or s3://bucket/prefix")
    mg.add_argument("-o", "--output", required=True,
                    help="FILE.parquet or FILE.csv (or s3://…), its manifest beside it")
    _add_s3_endpoint(mg)

    rp = sub.add_parser("report", parents=[common],
                        help="the paper's analyses from a folder of merged runs")
    rp.add_argument("results", nargs="+",
                    help="folders (or s3://) holding merged runs, at any depth")
    rp.add_argument("-o", "--output", required=True, help="report folder (or s3://…)")
    rp.add_argument("--duplicates", metavar="FILE",
                    help="duplicate counts (.parquet or .csv): vmem duplicates' table "
                         "(index,count,...) or EleutherAI's sequence_id,counts; memorized share "
                         "by duplication and the recitation/reconstruction/recollection taxonomy")
    _add_taxonomy(rp)
    rp.add_argument("--data", default=None,
                    help="the runs' training data, for the taxonomy's templating and examples "
                         "(default: each run's dataset as its manifest records it)")
    rp.add_argument("--index-bound", type=int, default=None, metavar="N",
                    help="compare runs (predictability) only on sequence indices below N, as "
                         "the paper's mem_graph.py did with 23552000 (default: every index "
                         "both runs evaluated)")
    _add_s3_endpoint(rp)

    ex = sub.add_parser("export-memorized", parents=[common],
                        help="memorized sequences with their first tokens")
    ex.add_argument("run", help="merged run file (.parquet or .csv)")
    ex.add_argument("-o", "--output", required=True, help="FILE.parquet (or s3://…)")
    ex.add_argument("--data", required=True)
    _add_data_source(ex)
    ex.add_argument("--tokens", type=int, default=64)
    ex.add_argument("--duplicates", metavar="FILE",
                    help="duplicate counts (as for vmem report): adds the columns count and "
                         "category")
    _add_taxonomy(ex)

    im = sub.add_parser("import-released", parents=[common],
                        help="EleutherAI's list of a model's memorized sequences → a merged run")
    im.add_argument("source", nargs="+",
                    help="the list: parquet rows index,tokens (local or s3://); a split stored "
                         "as several files is given whole: its files, a glob, or a folder of "
                         "them (the dataset's data/ folder with --split)")
    im.add_argument("--split", default=None,
                    help="the split to read from a folder holding several, e.g. deduped.1b.new")
    im.add_argument("--model", required=True, help="the model it lists, e.g. EleutherAI/pythia-12b")
    im.add_argument("--step", type=int, required=True,
                    help="its checkpoint (Pythia's final: 143000); the run covers "
                         "[0, step * sequences per step)")
    im.add_argument("-o", "--output", required=True,
                    help="folder of merged runs (or s3://…); writes "
                         "<model>-step<N>-released.parquet and its .manifest.json")
    im.add_argument("--data", default=None,
                    help="the training data (as for vmem evaluate): check every row's tokens")
    _add_data_source(im)

    du = sub.add_parser("duplicates", parents=[common],
                        help="how often each sequence's continuation occurs in the whole data "
                             "(a tokengrams index, built once)")
    du.add_argument("--data", required=True, help="dataset path or s3:// URL")
    _add_data_source(du)
    du.add_argument("--index", required=True,
                    help="local folder of the suffix-table index: built if absent, else reused")
    _add_range(du, checkpoint=True)
    du.add_argument("--offset", type=int, default=0, help="token offset of the prompt")
    du.add_argument("--prompt-len", type=int, default=32)
    du.add_argument("--cont-len", type=int, default=32,
                    help="the window counted: tokens [offset + prompt-len, + cont-len)")
    du.add_argument("--definition", choices=["stream", "rows"], default="stream",
                    help="stream (default): count the window anywhere in the token stream, "
                         "across row ends too; rows: semantic-memorization's, inside rows at "
                         "offsets 0 … seq-len − cont-len − 1, over rows [0, 146,432,000) (all "
                         "rows of a dataset that has fewer). Each needs its own --index")
    du.add_argument("-o", "--output", default=None, help="COUNTS.parquet")
    du.add_argument("--chunk-size", type=int, default=None,
                    help="windows per durable chunk file")
    du.add_argument("--task-id", type=int, default=None, help="this task's slice (0-based)")
    du.add_argument("--num-tasks", type=int, default=None, help="how many slices in all")
    du.add_argument("--build-only", action="store_true",
                    help="only build the index (one shard's part with --shard, or the shard "
                         "$SLURM_ARRAY_TASK_ID of an array job)")
    du.add_argument("--shard", type=int, default=None, help="with --build-only: this part only")
    du.add_argument("--no-progress", dest="progress", action="store_false")

    dr = sub.add_parser("doctor", parents=[common],
                        help="before a big job, on its node: machine, versions, model, data, "
                             "output, and whether vLLM and transformers agree on this model")
    dr.add_argument("--model", required=True, help="Hugging Face id or local model folder")
    dr.add_argument("--revision", default=None,
                    help="hub revision (Pythia: stepN; default step{--checkpoint})")
    dr.add_argument("--checkpoint", type=int, default=None, metavar="N",
                    help="the job's checkpoint: its range [0, N * sequences per step) must lie "
                         "in the data, and the engines are compared on its first sequences")
    dr.add_argument("--engine", choices=["auto", "vllm", "hf"], default="auto",
                    help="the job's engine; with hf, vLLM is not compared")
    dr.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                    help="the job's dtype (auto as for vmem evaluate)")
    dr.add_argument("--tp", type=int, default=1, help="tensor-parallel size (GPUs per engine)")
    dr.add_argument("--download-dir", default=None, help="where model weights are cached")
    dr.add_argument("--data", required=True, help="dataset path or s3:// URL")
    _add_data_source(dr)
    dr.add_argument("--out", required=True, help="the job's output folder or s3://bucket/prefix")
    dr.add_argument("-n", "--sequences", type=int, default=64,
                    help="sequences the engines are compared on (default 64)")
    dr.add_argument("--tolerance", type=float, default=None, metavar="GAP",
                    help="where the engines choose different tokens, the largest log-prob gap "
                         "between them that counts as a near-tie, not a disagreement (default: "
                         "4 units in the last place of the dtype at the chosen token's logit)")

    demo = sub.add_parser("demo", parents=[common],
                          help="the whole study on a mini suite trained on the spot")
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--quick", action="store_true", help="smaller suite (for tests and CI)")
    demo.add_argument("--engine", choices=["auto", "vllm", "hf"], default="auto",
                      help="as for vmem evaluate (default auto)")
    return parser


def _fields(cls, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The dataclass fields the flags set (a flag left unset keeps the field's default)."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if v is not None and k not in skip}


def engine_config(args: argparse.Namespace):
    """One EngineConfig from the shared engine flags: evaluate and spot honour every one."""
    from vmem.engines import EngineConfig

    return EngineConfig(**_fields(EngineConfig, args, skip=("max_len",)))


def _dataset(args: argparse.Namespace, path: str):
    from vmem.data import open_dataset

    return open_dataset(path, seq_len=args.seq_len, dtype=args.data_dtype,
                        s3_endpoint=args.s3_endpoint)


# Imports are local to each command so that `vmem status` does not pay for torch/vLLM start-up.

def data_command(args: argparse.Namespace) -> None:
    from vmem import data as datasets
    from vmem.io.location import Output

    if args.data_command == "import":
        import_corpus_command(args)
        return
    if args.data_command == "olmo":
        olmo_order_command(args)
        return
    if args.data_command == "dump":
        Output(args.output, local_only="vmem data dump writes a local .npy").check()
        datasets.check_dump_output(args.output)
    found = _dataset(args, args.path)
    if args.data_command == "info":
        print(datasets.describe(found, args.sequences_per_step))
        return
    start, stop = datasets.resolve_range(found, args.start, args.stop, step=args.step,
                                         sequences_per_step=args.sequences_per_step)
    datasets.dump(found, start, stop, args.output)
    print(f"wrote rows [{start}, {stop}) of {found.location} to {args.output}")


def olmo_order_command(args: argparse.Namespace) -> None:
    from vmem.data import describe, open_dataset
    from vmem.io.location import Output
    from vmem.olmo import build_order

    Output(args.output, local_only="vmem data olmo writes a local order folder").check(
        folder=True)
    order = build_order(args.config, args.output, root=args.root,
                        published=args.global_indices, s3_endpoint=args.s3_endpoint)
    print(f"{order['global_indices']['source']} the order of {order['instances']:,} instances "
          f"in {len(order['files'])} files (seed {order['seed']}, epoch {order['epoch']})")
    print(describe(open_dataset(args.output, s3_endpoint=args.s3_endpoint)))


def import_corpus_command(args: argparse.Namespace) -> None:
    from vmem.corpus import Import, import_corpus
    from vmem.data import describe, open_dataset
    from vmem.pythia import SEQUENCES_PER_STEP

    made = import_corpus(Import(**_fields(Import, args)))
    if made["dropped_tokens"]:
        print(f"dropped the last {made['dropped_tokens']} tokens: too few for a row of "
              f"{made['seq_len']}")
    if made["truncated_documents"]:
        print(f"cut {made['truncated_documents']} documents longer than {made['seq_len']} "
              f"tokens to their first {made['seq_len']}")
    print(describe(open_dataset(args.output), made["sequences_per_step"] or SEQUENCES_PER_STEP))
    print(f"manifest   {args.output}.manifest.json")


def evaluate_command(args: argparse.Namespace) -> None:
    from vmem.evaluate import Evaluation, evaluate

    evaluate(Evaluation(engine=engine_config(args), **_fields(Evaluation, args, skip=("engine",))))


def spot_command(args: argparse.Namespace) -> None:
    from vmem.spot import spot

    if isinstance(args.prompt_len, list):
        raise VmemError("--prompt-len: vmem spot takes one prompt length")
    print(spot(_dataset(args, args.data), args.index, engine_config(args),
               prompt_len=args.prompt_len, cont_len=args.cont_len, offset=args.offset,
               allow_eos=args.allow_eos, sequences_per_step=args.sequences_per_step,
               method=args.method, tokenizer=args.tokenizer))


def status_command(args: argparse.Namespace) -> None:
    from vmem.data import selected_range
    from vmem.runs.status import recorded_step_size, unfinished_tasks

    requested = None
    if (args.start, args.stop, args.checkpoint) != (None, None, None):
        per_step = args.sequences_per_step
        if per_step is None and args.checkpoint is not None:
            per_step = recorded_step_size(args.out, s3_endpoint=args.s3_endpoint)
        requested = selected_range(args.start, args.stop, checkpoint=args.checkpoint,
                                   sequences_per_step=per_step)
    todo = unfinished_tasks(args.out, args.num_tasks, requested, s3_endpoint=args.s3_endpoint)
    for task in todo:
        print(task)
    print(f"vmem: {len(todo)} of {args.num_tasks} task slices of {args.out} unfinished",
          file=sys.stderr)


def merge_command(args: argparse.Namespace) -> None:
    from vmem.runs.merge import merge_run

    merge_run(args.run, args.output, s3_endpoint=args.s3_endpoint)


def report_command(args: argparse.Namespace) -> None:
    from vmem.study.report import report

    runs = report(args.results, args.output, duplicates=args.duplicates,
                  tokenizer=args.tokenizer, data=args.data,
                  recitation_threshold=args.recitation_threshold, index_bound=args.index_bound,
                  s3_endpoint=args.s3_endpoint)
    out = args.output.rstrip("/")
    print(f"vmem report: {len(runs)} runs → {out}/report.html, report.md, tables/, figures/")


def export_command(args: argparse.Namespace) -> None:
    from vmem.study.export import check_output, export_memorized
    from vmem.study.merged_runs import load_run
    from vmem.study.taxonomy import export_columns

    target = check_output(args.output, s3_endpoint=args.s3_endpoint)
    if args.tokenizer is not None and args.duplicates is None:
        raise VmemError("--tokenizer: export-memorized decides categories from counts; give "
                        "--duplicates too")
    run = load_run(args.run, s3_endpoint=args.s3_endpoint)
    dataset = _dataset(args, args.data)
    columns = None if args.duplicates is None else export_columns(
        run, dataset, args.duplicates, args.tokenizer, args.recitation_threshold,
        s3_endpoint=args.s3_endpoint)
    count = export_memorized(run, dataset, args.tokens, target, columns)
    print(f"vmem export-memorized: {count:,} memorized sequences of {run.name} → {args.output}")


def import_command(args: argparse.Namespace) -> None:
    from vmem.pythia import SEQUENCES_PER_STEP
    from vmem.study.released import check_request, import_released

    per_step = (SEQUENCES_PER_STEP if args.sequences_per_step is None  # Pythia's lists
                else args.sequences_per_step)
    check_request(args.step, per_step, args.output, s3_endpoint=args.s3_endpoint)
    data = None if args.data is None else _dataset(args, args.data)
    import_released(args.source, model=args.model, step=args.step, out=args.output, data=data,
                    split_name=args.split, sequences_per_step=per_step,
                    s3_endpoint=args.s3_endpoint)


def duplicates_command(args: argparse.Namespace) -> None:
    from vmem.duplicates import Counting, build_index, count_duplicates

    if args.build_only:
        shard, array_id = args.shard, os.environ.get("SLURM_ARRAY_TASK_ID")
        if shard is None and array_id is not None:  # one array task per shard
            if not array_id.isdigit():
                raise VmemError(f"SLURM_ARRAY_TASK_ID: expected a shard number, got {array_id!r}")
            shard = int(array_id)
        build_index(_dataset(args, args.data), args.index, args.cont_len,
                    definition=args.definition, part=shard, progress=args.progress)
        return
    if args.shard is not None:
        raise VmemError("--shard: only with --build-only")
    if args.output is None:
        raise VmemError("-o/--output: expected COUNTS.parquet (or --build-only)")
    count_duplicates(Counting(**_fields(Counting, args)))


def doctor_command(args: argparse.Namespace) -> None:
    from vmem.doctor import Doctor, run_doctor

    doctor = Doctor(engine=engine_config(args), **_fields(Doctor, args, skip=("engine",)))
    if not run_doctor(doctor):
        raise SystemExit(1)  # a check failed (exit 2 stays a usage error)


def demo_command(args: argparse.Namespace) -> None:
    from vmem.demo.run import DEFAULT, QUICK, run_demo

    run_demo(QUICK if args.quick else DEFAULT, Path(args.out), args.engine)


COMMANDS = {"data": data_command, "evaluate": evaluate_command, "spot": spot_command,
            "status": status_command, "merge": merge_command, "report": report_command,
            "export-memorized": export_command, "import-released": import_command,
            "duplicates": duplicates_command, "doctor": doctor_command,
            "demo": demo_command}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        if getattr(args, "refused_batch_size", None) is not None:
            raise VmemError("--batch-size: ambiguous, not accepted; give --sequences-per-step "
                            "(sequences per training step: which sequences --step/--checkpoint "
                            "select) or --chunk-size (sequences per engine call)")
        COMMANDS[args.command](args)
        return 0
    except VmemError as err:
        print(f"vmem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
