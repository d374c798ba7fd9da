#!/bin/bash
# Runs `python -m hrm_jax.main ARGS` on every worker of a Cloud TPU VM pod.
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--dry_run] \
#       [--skip_setup] -- --config=experiments/arc.py --workdir=gs://BUCKET/hrm_arc1 \
#       --config.mesh=data:-1,fsdp:8
#
# (or TPU_NAME, ZONE, PROJECT, DRY_RUN=1 in the environment). Steps, all with
# `gcloud compute tpus tpu-vm ... --worker=all`:
#   1. setup (unless --skip_setup): copy this checkout (tar of the working
#      tree, without .git/.venv) to every worker, create a venv there and
#      `pip install 'jax[tpu]' gcsfs -e` the package;
#   2. run the entry point on all workers at once with --distributed=on:
#      jax.distributed.initialize() then finds the coordinator, process count
#      and id from the TPU metadata by itself (no addresses to pass).
# The workdir must be gs:// (every worker writes its shards of the same
# checkpoint; a local path would give each worker its own partial copy).
# gcsfs lets etils.epath (metrics, checkpoint metadata) reach gs://; orbax
# writes arrays through tensorstore.
#
# --dry_run prints the exact gcloud commands instead of running them.
set -euo pipefail

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
DRY_RUN="${DRY_RUN:-0}"
SETUP=1
REMOTE_DIR="${REMOTE_DIR:-hrm_jax}"        # relative to the worker's home
REMOTE_VENV="${REMOTE_VENV:-hrm_venv}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]>=0.10.2}"
ALLOW_LOCAL_WORKDIR=0

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    --skip_setup) SETUP=0 ;;
    --allow_local_workdir) ALLOW_LOCAL_WORKDIR=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1 (main.py flags go after --)" >&2; usage ;;
  esac
  shift
done
MAIN_ARGS=("$@")
[[ -n "$TPU_NAME" && -n "$ZONE" ]] || { echo "need --tpu and --zone" >&2; usage; }
[[ ${#MAIN_ARGS[@]} -gt 0 ]] || { echo "need main.py flags after --" >&2; usage; }

workdir=""
distributed_given=0
for arg in "${MAIN_ARGS[@]}"; do
  case "$arg" in
    --workdir=*) workdir="${arg#*=}" ;;
    --distributed=*) distributed_given=1 ;;
  esac
done
if [[ "$workdir" != gs://* && "$ALLOW_LOCAL_WORKDIR" != 1 ]]; then
  echo "--workdir must be gs://... on a pod (got '${workdir}'); --allow_local_workdir to override" >&2
  exit 2
fi
if [[ "$distributed_given" == 0 ]]; then
  MAIN_ARGS=(--distributed=on "${MAIN_ARGS[@]}")
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
TARBALL="${TMPDIR:-/tmp}/hrm_jax_src.tgz"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" --worker=all)
[[ -n "$PROJECT" ]] && where+=(--project="$PROJECT")

# Shell-quotes each argument only where needed ('...' form), space-separated.
quoted() {
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$arg"); else out+=("${arg@Q}"); fi
  done
  echo "${out[*]}"
}

# Prints a command, copy-pasteable, or runs it.
run() {
  if [[ "$DRY_RUN" != "0" ]]; then
    quoted "$@"
  else
    "$@"
  fi
}

if [[ "$SETUP" == 1 ]]; then
  run tar -czf "$TARBALL" --exclude=./.git --exclude=./.venv --exclude='*/__pycache__' \
      -C "$REPO" .
  run "${gcloud_tpu[@]}" scp "$TARBALL" "$TPU_NAME:hrm_jax_src.tgz" "${where[@]}"
  setup="set -e; rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR"
  setup+=" && tar -xzf hrm_jax_src.tgz -C $REMOTE_DIR"
  setup+=" && (test -x $REMOTE_VENV/bin/python || python3 -m venv $REMOTE_VENV)"
  setup+=" && $REMOTE_VENV/bin/pip install -q -U pip"
  setup+=" && $REMOTE_VENV/bin/pip install -q $(quoted "$JAX_SPEC") gcsfs -e ./$REMOTE_DIR"
  run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --command="$setup"
fi

remote="cd $REMOTE_DIR && ../$REMOTE_VENV/bin/python -m hrm_jax.main $(quoted "${MAIN_ARGS[@]}")"
run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --command="$remote"
