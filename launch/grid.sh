#!/usr/bin/env bash
# Submit a grid: every Pythia size (vmem/pythia.py) x {duped, deduped} x the paper's checkpoints
# 23000..143000 every 20000, one Slurm array per (model, checkpoint), and print the job ids.
#
#   launch/grid.sh --dry-run          # print the sbatch commands only (no Slurm controller needed)
#   launch/grid.sh                    # submit
#   launch/grid.sh --only '*-12b-*'   # just the runs whose name matches a glob
#   launch/grid.sh --paper            # the models the paper evaluated: pythia-SIZE[-deduped]-v0
#   launch/grid.sh --download         # fetch each run's revision into the hub cache, then submit
#   launch/grid.sh --doctor           # `vmem doctor` once per model; a model that fails is skipped
#
# Array tasks never download: they run with HF_HUB_OFFLINE=1 (OFFLINE below) and load the model
# from the hub cache (HF_HOME / HF_HUB_CACHE, or --download-dir in VMEM_ARGS), which must be on a
# file system the compute nodes share. Fill it first from a node with network access: --download
# runs one `hf download MODEL --revision stepN` per run it submits; --dry-run --download prints
# them. Run it again at any time: it submits only what is unfinished. `vmem status` lists the
# slices of a run without a completion marker (in OUT/tasks/, local or on S3); a run with a job in
# the queue (squeue, by job name) is left alone; of an unfinished run only the missing slices are
# submitted (--array=2,5 with --num-tasks).
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
DOCTOR_ARGS=${DOCTOR_ARGS:-}              # extra `vmem doctor` arguments, e.g. "--engine vllm"
HF=${HF:-$(dirname "$VMEM")/hf}           # huggingface_hub's command, for --download
OFFLINE=${OFFLINE:-1}                     # HF_HUB_OFFLINE of the array tasks (0: each may download)
# Array tasks per run at the final checkpoint (earlier checkpoints get proportionally fewer:
# step23000 has seen 16% of the data), and GPUs per task (more than 1: one tensor-parallel engine
# with launch/tp.sbatch). Sized for a few hours per task on one A100/H100; scale them with the
# throughput you measure (bench/).
declare -A TASKS=([70m]=4 [160m]=8 [410m]=16 [1b]=32 [1.4b]=32 [2.8b]=64 [6.9b]=64 [12b]=64)
declare -A GPUS=([70m]=1 [160m]=1 [410m]=1 [1b]=1 [1.4b]=1 [2.8b]=1 [6.9b]=2 [12b]=4)
# -----------------------------------------------------------------------------------------------

dry_run=0
only='*'
paper=0
download=0
doctor=0
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --only) only=${2:?--only needs a glob, e.g. "pythia-70m-*"}; shift ;;
    --paper) paper=1 ;;
    --download) download=1 ;;
    --doctor) doctor=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "grid.sh: error: unknown argument $1 (expected --dry-run, --only GLOB, --paper," \
            "--download, --doctor)" >&2; exit 2 ;;
  esac
  shift
done

# The suite's facts come from vmem/pythia.py: checkpoints, sequences per step, the final step, then
# one "SIZE DEDUPED HUB_ID" line per model of the paper's sizes (duped and deduped; -v0 ids
# with --paper).
mapfile -t facts < <("$PYTHON" -c 'import sys
from vmem import pythia as p
v0 = sys.argv[1] == "1"
print(*p.PAPER_CHECKPOINTS); print(p.SEQUENCES_PER_STEP, p.FINAL_STEP)
for size in p.PAPER_SIZES:
    for deduped in (0, 1):
        print(size, deduped, p.hub_id(size, bool(deduped), v0))' "$paper")
((${#facts[@]} > 2)) || { echo "grid.sh: error: $PYTHON could not import vmem" >&2; exit 2; }
read -r -a checkpoints <<< "${facts[0]}"
read -r per_step final_step <<< "${facts[1]}"

# The hub cache the tasks load from: --download-dir in VMEM_ARGS, else huggingface_hub's default.
read -r -a extra <<< "$VMEM_ARGS"
cache_dir=
for i in "${!extra[@]}"; do
  case ${extra[i]} in
    --download-dir=*) cache_dir=${extra[i]#*=} ;;
    --download-dir) cache_dir=${extra[i+1]:-} ;;
  esac
done
if ((download && !dry_run)) && [[ ! -x $HF ]]; then
  echo "grid.sh: error: --download needs huggingface_hub's hf command, not found at $HF (set HF)" >&2
  exit 2
fi

status_err=$(mktemp)
trap 'rm -f "$status_err"' EXIT
# Runs already queued or running, by job name. A dry run goes on without a Slurm controller.
if queue=$(squeue -h -u "$(id -un)" -o %j 2>"$status_err"); then
  queued=" $(tr '\n' ' ' <<< "$queue") "
else
  why=$(head -n 1 "$status_err")
  if ((!dry_run)); then
    echo "grid.sh: error: squeue failed (${why:-no message}); submit from a node of the cluster" >&2
    exit 2
  fi
  echo "grid.sh: no Slurm controller answered (squeue: ${why:-no message}); queued runs are" \
       "not known" >&2
  queued=" "
fi
declare -A checked=()  # model → the doctor's verdict (0: passed)

for line in "${facts[@]:2}"; do
  read -r size deduped model <<< "$line"
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
    data=$DATA_DUPED; ((!deduped)) || data=$DATA_DEDUPED

    if ((download)); then
      fetch=("$HF" download "$model" --revision "step$step")
      [[ -z $cache_dir ]] || fetch+=(--cache-dir "$cache_dir")
      if ((dry_run)); then echo "download  $name: $(printf '%q ' "${fetch[@]}")"
      elif ! "${fetch[@]}" >&2; then
        echo "grid.sh: error: $(printf '%q ' "${fetch[@]}")failed; nothing more submitted" >&2
        exit 2
      fi
    fi
    # The doctor checks a model once, at its first run to submit, as its tasks will run.
    if ((doctor)) && [[ -z ${checked[$model]:-} ]]; then
      read -r -a doctor_args <<< "$DOCTOR_ARGS"
      checked[$model]=0
      HF_HUB_OFFLINE=$OFFLINE "$VMEM" doctor --model "$model" --checkpoint "$step" --data "$data" \
        --out "$out" "${doctor_args[@]}" >&2 || checked[$model]=1
    fi
    if [[ ${checked[$model]:-0} == 1 ]]; then
      echo "unhealthy $name: vmem doctor failed for $model"; continue; fi

    script=$HERE/array.sbatch
    resources=()
    if ((GPUS[$size] > 1)); then script=$HERE/tp.sbatch; resources=(--gres=gpu:${GPUS[$size]}); fi
    read -r -a site <<< "$SBATCH_ARGS"
    cmd=(env MODEL="$model" CHECKPOINT="$step" DATA="$data" OUT="$out"
         VMEM="$VMEM" VMEM_ARGS="$VMEM_ARGS" GPUS="${GPUS[$size]}" HF_HUB_OFFLINE="$OFFLINE"
         sbatch --parsable --job-name="vmem-$name" --array="$array"
         --output="$LOGS/$name-%A_%a.out" "${site[@]}" "${resources[@]}"
         "$script" --num-tasks "$tasks")
    if ((dry_run)); then echo "dry-run   $name: $(printf '%q ' "${cmd[@]:1}")"; continue; fi
    mkdir -p "$LOGS"
    job=$("${cmd[@]}")
    echo "submitted $name: job $job array $array of $tasks"
  done
done
