#!/usr/bin/env bash
# Submit the paper's grid: every Pythia size (vmem/pythia.py) x {duped, deduped} x checkpoints
# 23000..143000 every 20000, one Slurm array per (model, checkpoint), and print the job ids.
#
#   launch/grid.sh --dry-run          # print the sbatch commands only
#   launch/grid.sh                    # submit
#   launch/grid.sh --only '*-12b-*'   # just the runs whose name matches a glob
#
# Run it again at any time: it submits only what is unfinished. `vmem status` lists the slices of a
# run without a completion marker (in OUT/tasks/, local or on S3); a run with a job in the queue
# (squeue, by job name) is left alone; of an unfinished run only the missing slices are submitted
# (--array=2,5 with --num-tasks).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")

# ---- edit for your cluster -------------------------------------------------------------------
DATA_DUPED=${DATA_DUPED:-/path/to/pythia/pile/document}             # Pythia's preshuffled Pile
DATA_DEDUPED=${DATA_DEDUPED:-/path/to/pythia/pile-deduped/document} # ... and its deduped version
RUNS=${RUNS:-$ROOT/runs}                  # one output folder per run (local or s3://bucket/prefix)
LOGS=${LOGS:-$ROOT/runs/logs}             # Slurm's job logs (local)
VMEM=${VMEM:-$ROOT/.venv/bin/vmem}
PYTHON=${PYTHON:-$(dirname "$VMEM")/python}
SBATCH_ARGS=${SBATCH_ARGS:-}              # e.g. "--partition=gpu --account=myproject"
VMEM_ARGS=${VMEM_ARGS:-}                  # extra `vmem evaluate` arguments for every run
# Array tasks per run at the final checkpoint (earlier checkpoints get proportionally fewer:
# step23000 has seen 16% of the data), and GPUs per task (more than 1: one tensor-parallel engine
# with launch/tp.sbatch). Sized for a few hours per task on one A100/H100; scale them with the
# throughput you measure (bench/).
declare -A TASKS=([70m]=4 [160m]=8 [410m]=16 [1b]=32 [1.4b]=32 [2.8b]=64 [6.9b]=64 [12b]=64)
declare -A GPUS=([70m]=1 [160m]=1 [410m]=1 [1b]=1 [1.4b]=1 [2.8b]=1 [6.9b]=2 [12b]=4)
# -----------------------------------------------------------------------------------------------

dry_run=0
only='*'
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --only) only=${2:?--only needs a glob, e.g. "pythia-70m-*"}; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "grid.sh: error: unknown argument $1 (expected --dry-run, --only GLOB)" >&2; exit 2 ;;
  esac
  shift
done

# The suite's facts come from vmem/pythia.py: checkpoints, sequences per step, the final step, then
# one "SIZE HUB_ID" line per model (duped and deduped).
mapfile -t facts < <("$PYTHON" -c 'from vmem import pythia as p
print(*p.PAPER_CHECKPOINTS); print(p.SEQUENCES_PER_STEP, p.FINAL_STEP)
for size in p.SIZES:
    print(size, p.hub_id(size, deduped=False)); print(size, p.hub_id(size, deduped=True))')
((${#facts[@]} > 2)) || { echo "grid.sh: error: $PYTHON could not import vmem" >&2; exit 2; }
read -r -a checkpoints <<< "${facts[0]}"
read -r per_step final_step <<< "${facts[1]}"

# Runs already queued or running, by job name.
queued=" $(squeue -h -u "$(id -un)" -o %j | tr '\n' ' ') "
status_err=$(mktemp)
trap 'rm -f "$status_err"' EXIT

for line in "${facts[@]:2}"; do
  read -r size model <<< "$line"
  [[ -n "${TASKS[$size]:-}" && -n "${GPUS[$size]:-}" ]] || {
    echo "grid.sh: error: TASKS/GPUS at the top of $0 have no entry for size $size" >&2; exit 2; }
  for step in "${checkpoints[@]}"; do
    name=$(basename "$model")-step$step
    # shellcheck disable=SC2053 # a glob on purpose
    [[ $name == $only ]] || continue
    out=$RUNS/$name
    if [[ $queued == *" vmem-$name "* ]]; then echo "queued    $name"; continue; fi

    tasks=$(( (TASKS[$size] * step + final_step - 1) / final_step ))
    # The slices without a completion marker, local or on S3 (vmem status).
    if ! todo=$("$VMEM" status "$out" --num-tasks "$tasks" --checkpoint "$step" \
                --sequences-per-step "$per_step" 2>"$status_err"); then
      cat "$status_err" >&2; exit 2
    fi
    missing=()
    [[ -z $todo ]] || mapfile -t missing <<< "$todo"
    if ((${#missing[@]} == 0)); then echo "finished  $name"; continue; fi
    if ((${#missing[@]} == tasks)); then array=0-$((tasks - 1)); else
      array=$(IFS=,; echo "${missing[*]}"); fi

    script=$HERE/array.sbatch
    resources=()
    if ((GPUS[$size] > 1)); then script=$HERE/tp.sbatch; resources=(--gres=gpu:${GPUS[$size]}); fi
    data=$DATA_DUPED; [[ $model != *-deduped ]] || data=$DATA_DEDUPED
    read -r -a site <<< "$SBATCH_ARGS"
    cmd=(env MODEL="$model" CHECKPOINT="$step" DATA="$data" OUT="$out"
         VMEM="$VMEM" VMEM_ARGS="$VMEM_ARGS" GPUS="${GPUS[$size]}"
         sbatch --parsable --job-name="vmem-$name" --array="$array"
         --output="$LOGS/$name-%A_%a.out" "${site[@]}" "${resources[@]}"
         "$script" --num-tasks "$tasks")
    if ((dry_run)); then echo "dry-run   $name: $(printf '%q ' "${cmd[@]:1}")"; continue; fi
    mkdir -p "$LOGS"
    job=$("${cmd[@]}")
    echo "submitted $name: job $job array $array of $tasks"
  done
done
