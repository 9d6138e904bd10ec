# The body every sbatch template shares (sourced, not run): `vmem evaluate` for one Slurm task,
# with the run named by environment variables and the template's own flags in "$@".
# `vmem evaluate` reads SLURM_ARRAY_TASK_ID/MIN/MAX/COUNT itself: an array's size is the task count.
#
#   MODEL     hub id or local model folder          (default EleutherAI/pythia-70m-deduped)
#   CHECKPOINT  scores [0, CHECKPOINT*1024) at revision stepCHECKPOINT (default 143000)
#   REVISION  hub revision (default step$CHECKPOINT)
#   START/STOP  an index range instead of CHECKPOINT's
#   DATA      dataset, local or s3://: Pythia's folder DIR (document-000NN-of-00020.bin + document.idx)
#             as DIR, DIR/document or DIR/document.idx alike; a merged PREFIX; a FILE.npy
#             (default /path/to/pythia/pile-deduped/document)
#   OUT       run folder: local or s3://bucket/prefix  (default runs/MODEL-stepCHECKPOINT)
#   VMEM      the vmem executable                    (default: the repository's .venv)
#   VMEM_ARGS extra `vmem evaluate` arguments, e.g. "--num-tasks 32" so that --array=5,17 reruns
#             just slices 5 and 17 of a 32-way run
# Resubmitting the same job is safe: finished chunks are skipped, so every index is scored once.

MODEL=${MODEL:-EleutherAI/pythia-70m-deduped}
CHECKPOINT=${CHECKPOINT:-143000}
REVISION=${REVISION:-}
START=${START:-}
STOP=${STOP:-}
DATA=${DATA:-/path/to/pythia/pile-deduped/document}
OUT=${OUT:-runs/$(basename "$MODEL")-step$CHECKPOINT}
VMEM=${VMEM:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/vmem}
VMEM_ARGS=${VMEM_ARGS:-}

if [[ -n "$STOP" ]]; then
  range=(--start "${START:-0}" --stop "$STOP")
else
  range=(--checkpoint "$CHECKPOINT")
fi
if [[ -n "$REVISION" ]]; then range+=(--revision "$REVISION"); fi
read -r -a extra <<< "$VMEM_ARGS"

echo "vmem: job ${SLURM_JOB_ID:-none} task ${SLURM_ARRAY_TASK_ID:-none} on $(hostname): $MODEL -> $OUT"
exec "$VMEM" evaluate --model "$MODEL" --data "$DATA" --out "$OUT" "${range[@]}" --no-progress \
  "${extra[@]}" "$@"
