"""`vmem` command line: parse arguments, call one function; a VmemError is one line, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from vmem.errors import VmemError

DESCRIPTION = """\
Measure verbatim memorization of training data in language models (Biderman et al., 2023):
each training sequence's first 32 tokens are the prompt, the model continues greedily for 32
tokens, and the score is the share that equals the true continuation (1.0 = memorized).
Start with `vmem demo` (the whole study on a mini suite, no downloads); on real data:
`vmem evaluate` -> `vmem merge` -> `vmem report`."""


def _add_data_source(p: argparse.ArgumentParser, *, dtype_alias: bool = False) -> None:
    p.add_argument("--seq-len", type=int, default=None,
                   help="read PATH as a headerless raw .bin of rows this long (Pythia: 2049)")
    # `vmem evaluate --dtype` is the model's dtype, so the token dtype has its own name there.
    flags = ["--data-dtype", "--dtype"] if dtype_alias else ["--data-dtype"]
    p.add_argument(*flags, dest="data_dtype", default=None,
                   help="token dtype of a raw .bin (default uint16)")
    p.add_argument("--s3-endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                   help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="sequences per training step (Pythia: 1024)")


def _add_range(p: argparse.ArgumentParser, *, checkpoint: bool) -> None:
    p.add_argument("--start", type=int, default=None, help="first sequence index")
    p.add_argument("--stop", type=int, default=None, help="one past the last sequence index")
    if checkpoint:
        p.add_argument("--checkpoint", type=int, default=None, metavar="N",
                       help="all sequences seen by checkpoint stepN: [0, N*batch_size)")
    else:
        p.add_argument("--step", type=int, default=None,
                       help="the batch_size sequences of training step S")


def _add_engine(p: argparse.ArgumentParser, *, engine: str) -> None:
    p.add_argument("--model", required=True, help="Hugging Face id or local model folder")
    p.add_argument("--revision", default=None,
                   help="hub revision (Pythia: stepN; default step{--checkpoint})")
    p.add_argument("--engine", choices=["auto", "vllm", "hf"], default=engine,
                   help=f"vllm, hf (transformers: starts in seconds) or auto (vLLM on GPU, "
                        f"transformers on CPU); default {engine}")
    p.add_argument("--dtype", dest="model_dtype", default="auto",
                   choices=["auto", "float16", "bfloat16", "float32"],
                   help="auto: float16 on GPU (as the paper); on CPU bfloat16 where the CPU "
                        "computes it natively (AMX, AVX512-BF16), else float32")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (GPUs per engine)")
    p.add_argument("--prompt-len", type=int, default=32)
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

    data = sub.add_parser("data", help="inspect Pythia-format token datasets")
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

    ev = sub.add_parser("evaluate", parents=[common],
                        help="score sequences for memorization into CSV shards")
    _add_engine(ev, engine="auto")
    ev.add_argument("--data", required=True, help="dataset path or s3:// URL")
    _add_data_source(ev)
    _add_range(ev, checkpoint=True)
    ev.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    ev.add_argument("--logprobs", action="store_true",
                    help="also record the teacher-forced log-prob of the true continuation")
    ev.add_argument("--chunk-size", type=int, default=None,
                    help="sequences per engine call and per durable shard")
    ev.add_argument("--task-id", type=int, default=None, help="this task's slice (0-based)")
    ev.add_argument("--num-tasks", type=int, default=None, help="how many slices in all")
    ev.add_argument("--data-parallel", type=int, default=1,
                    help="engines on this node, each on its own sub-slice and GPU(s)")
    # Set by --data-parallel on the child processes it starts: which sub-slice is theirs.
    ev.add_argument("--dp-rank", type=int, default=None, help=argparse.SUPPRESS)
    ev.add_argument("--staging-dir", default=None, help="local staging folder for --out s3://")
    ev.add_argument("--params", type=int, default=None,
                    help="parameter count to record (known for Pythia)")
    ev.add_argument("--no-progress", action="store_true")

    spot = sub.add_parser("spot", parents=[common],
                          help="show prompt, truth and generation for a few sequences")
    # A few sequences: engine start-up dominates, and transformers starts in seconds.
    _add_engine(spot, engine="hf")
    spot.add_argument("--data", required=True)
    _add_data_source(spot)
    spot.add_argument("--index", type=int, action="append", required=True,
                      help="sequence index (repeat for several)")
    spot.add_argument("--tokenizer", default=None, help="tokenizer id or path, to decode text")

    mg = sub.add_parser("merge", parents=[common],
                        help="merge a run's shards into one table, checking coverage")
    mg.add_argument("run", help="run folder or s3://bucket/prefix")
    mg.add_argument("-o", "--output", required=True, help="FILE.parquet or FILE.csv")
    mg.add_argument("--s3-endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))

    rp = sub.add_parser("report", parents=[common],
                        help="the paper's analyses from a folder of merged runs")
    rp.add_argument("results", help="folder (or s3://) of merged runs")
    rp.add_argument("-o", "--output", required=True, help="report folder")
    rp.add_argument("--s3-endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))

    ex = sub.add_parser("export-memorized", parents=[common],
                        help="memorized sequences with their first tokens")
    ex.add_argument("run", help="merged run file (.parquet or .csv)")
    ex.add_argument("-o", "--output", required=True, help="FILE.parquet")
    ex.add_argument("--data", required=True)
    _add_data_source(ex)
    ex.add_argument("--tokens", type=int, default=64)

    demo = sub.add_parser("demo", parents=[common],
                          help="the whole study on a mini suite trained on the spot")
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--quick", action="store_true", help="smaller suite (for tests and CI)")
    demo.add_argument("--engine", choices=["auto", "vllm", "hf"], default="auto",
                      help="as for vmem evaluate (default auto)")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    # Imports are local so that `vmem data info` does not pay for torch/vLLM start-up.
    if args.command == "data":
        from vmem import data

        if args.data_command == "info":
            return data.info_command(args)
        return data.dump_command(args)
    if args.command == "evaluate":
        from vmem import evaluate

        return evaluate.evaluate_command(args)
    if args.command == "spot":
        from vmem import spot

        return spot.spot_command(args)
    if args.command == "merge":
        from vmem import merge

        return merge.merge_command(args)
    if args.command == "report":
        from vmem import report

        return report.report_command(args)
    if args.command == "export-memorized":
        from vmem import report

        return report.export_memorized_command(args)
    from vmem import demo

    return demo.demo_command(args)


QUIET_DEFAULTS = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also read by VllmEngine for its loading bar
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ warnings ("NUMA binding: ...")
    "PYTHONWARNINGS": "ignore",  # the worker processes' FutureWarnings
}


def quiet_libraries() -> None:
    """vmem's own progress and warnings only: the libraries' logs, warnings and progress bars
    are off unless the environment already says otherwise. Environment variables reach vLLM's
    worker processes; this must run before vLLM, transformers or torch is imported."""
    for name, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if os.environ["VLLM_LOGGING_LEVEL"] == "ERROR":
        # vLLM warns about Triton while importing, before its own logging is configured.
        logging.getLogger("vllm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(torch|transformers|vllm|huggingface_hub)\b")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    args.argv = argv  # --data-parallel starts children with the same command line
    try:
        return dispatch(args)
    except VmemError as err:
        print(f"vmem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
