#!/usr/bin/env bash
# A local stand-in for the sbatch calls submit.sh makes, for machines
# without Slurm (and for the tests): runs the job now, an array task per
# process (all in parallel), and prints a job id as `sbatch --parsable`
# does.  Understands --parsable, --array=A-B and --dependency=afterok:ID
# (the job it depends on has finished when this returns); other options
# are ignored.  Exits non-zero when a task fails.
set -euo pipefail
array="" dep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --parsable) ;;
    --array=*) array="${1#--array=}" ;;
    --dependency=*) dep="${1#--dependency=}" ;;
    --*) ;;
    *) break ;;
  esac
  shift
done
script="${1:?local-sbatch.sh: no job script}"
shift
jobid=$$
if [ -n "$dep" ]; then
  state="${LOCAL_SBATCH_DIR:-/tmp}/local-sbatch-${dep#afterok:}.failed"
  [ ! -e "$state" ] || { echo "local-sbatch.sh: dependency ${dep#afterok:} failed; not running $script" >&2; exit 1; }
fi
if [ -n "$array" ]; then
  first="${array%-*}" last="${array#*-}"
  [[ "$first" =~ ^[0-9]+$ && "$last" =~ ^[0-9]+$ ]] ||
    { echo "local-sbatch.sh: --array=$array: expected A-B, two decimal numbers" >&2; exit 2; }
  first=$((10#$first)) last=$((10#$last)) # decimal: 010 is ten, not octal eight
  pids=()
  for ((k = first; k <= last; k++)); do
    SLURM_ARRAY_JOB_ID=$jobid SLURM_ARRAY_TASK_ID=$k SLURM_ARRAY_TASK_COUNT=$((last - first + 1)) \
      bash "$script" "$@" >"${LOCAL_SBATCH_DIR:-/tmp}/local-sbatch-${jobid}_$k.out" 2>&1 &
    pids+=($!)
  done
  failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  [ $failed -eq 0 ] || : >"${LOCAL_SBATCH_DIR:-/tmp}/local-sbatch-$jobid.failed"
else
  SLURM_JOB_ID=$jobid bash "$script" "$@" >"${LOCAL_SBATCH_DIR:-/tmp}/local-sbatch-$jobid.out" 2>&1 ||
    { : >"${LOCAL_SBATCH_DIR:-/tmp}/local-sbatch-$jobid.failed"; echo "$jobid"; exit 1; }
fi
echo "$jobid"
