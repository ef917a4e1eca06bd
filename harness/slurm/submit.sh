#!/usr/bin/env bash
# Submits a suite as a Slurm job array of N shards and a merge that runs
# when every shard has succeeded.
#   harness/slurm/submit.sh SUITE N OUTDIR [extra sbatch options...]
# e.g. harness/slurm/submit.sh paper 7 results/runs/paper-cluster --partition=gpu
# SBATCH names the sbatch to call (default sbatch; harness/slurm/local-sbatch.sh
# runs the same jobs on this machine, one process per array task).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
suite="${1:?usage: submit.sh SUITE N OUTDIR [sbatch options]}"
n="${2:?usage: submit.sh SUITE N OUTDIR [sbatch options]}"
outdir="${3:?usage: submit.sh SUITE N OUTDIR [sbatch options]}"
shift 3
case "$n" in ''|*[!0-9]*) echo "submit.sh: N must be a positive integer (got '$n')" >&2; exit 2 ;; esac
[ "$n" -ge 1 ] || { echo "submit.sh: N must be at least 1" >&2; exit 2; }
sbatch="${SBATCH:-sbatch}"
mkdir -p "$outdir"
array=$("$sbatch" --parsable --array="1-$n" "$@" "$here/sweep-array.sbatch" "$suite" "$outdir")
array="${array%%;*}"
merge=$("$sbatch" --parsable --dependency="afterok:$array" "$@" "$here/merge.sbatch" "$outdir")
echo "submitted: array job $array ($n shards of $suite), merge job ${merge%%;*} -> $outdir/merged.csv"
