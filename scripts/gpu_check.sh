#!/usr/bin/env bash
# The one GPU check, one command: bash scripts/gpu_check.sh OUTDIR [--data FILE] [--budget-s S] [--oom-gib G]
# Ends by itself within 8 minutes (internal deadline --budget-s, default 450 s; this wrapper stops it at 470 s
# in any case), writing its results into OUTDIR as it goes (at most 8 files). What it runs and how to read
# it: docs/gpu-runbook.md; the steps: scripts/gpu_check.py. Needs data/cifar10-jpeg.npz (or --data).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: bash scripts/gpu_check.sh OUTDIR [--data FILE] [--budget-s S] [--oom-gib G]" >&2
  exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout -s TERM -k 15 "${GPU_CHECK_HARD_LIMIT_S:-470}" "${PYTHON:-python3}" scripts/gpu_check.py "$@"
