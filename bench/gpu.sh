#!/usr/bin/env bash
# (a) the seed's method and (b) transformers + KV cache on one GPU, fp16, for the pythia-1b and
# pythia-12b shapes (random weights), with a bf16 torch.matmul roofline; then vmem's transformers
# engine, generation against the verification pass, for both shapes. Appends to bench/RESULTS.md.
# At most ~13 minutes (about 5 seen on an H100): each step runs under its own time limit, and a
# step that fails or runs out of time is named and the next one still runs (a device lease is too
# short to start over).
# Needs a Python with CUDA torch, transformers and numpy (not vLLM): PYTHON=... bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
common=(--methods seed,hf --dtypes float16 --peak-dtype bfloat16 --device cuda --threads "$(nproc)")

"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no GPU visible to torch"'
step() {
  local limit=$1; shift
  timeout "$limit" "$@" || echo "gpu.sh: failed or past ${limit} s: $*" >&2
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true

# pythia-1b: 2 GB of fp16 weights; the seed's batch 1024 fits, (b) tries up to 1024 rows.
step 170 "$PYTHON" bench/throughput.py --shape pythia-1b "${common[@]}" \
    --n-seed 1024 --n-hf 2048 --hf-batch-sizes 256,1024 --note "GPU, (a)/(b) only"
# pythia-12b: 24 GB of weights; a KV cache of 64 tokens is ~0.74 MB per sequence, so (b) stays
# at <= 256 rows, and (a) runs one batch of 128 (its FLOPs per row are ~24x (b)'s).
step 230 "$PYTHON" bench/throughput.py --shape pythia-12b "${common[@]}" \
    --n-seed 128 --n-hf 512 --hf-batch-sizes 64,256 --note "GPU, (a)/(b) only"
# Generation against the verification pass (and the pass computing every position) in vmem's own
# engine; the 12b model is built on the GPU and written once (24 GB), hence its longer limit.
step 80 env PYTHONPATH=. "$PYTHON" bench/engine_speed.py --shape pythia-1b --dtype float16 \
    --n 4096 --note "GPU"
step 300 env PYTHONPATH=. "$PYTHON" bench/engine_speed.py --shape pythia-12b --dtype float16 \
    --n 1024 --note "GPU"
