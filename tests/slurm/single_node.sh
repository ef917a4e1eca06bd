#!/usr/bin/env bash
# Starts a single-node Slurm on this machine (munged, slurmctld, slurmd, all
# in DIR, on ports of their own), runs harness/slurm/submit.sh for SUITE
# with N shards through the real sbatch, waits for the array and the merge,
# and stops everything it started.  Exit 0 when the merge job wrote
# DIR/out/merged.csv; 77 when Slurm or munge is not installed or this is not
# root (the caller skips).  Used by tests/test_slurm.c.
#   tests/slurm/single_node.sh DIR MOEBENCH SUITE N
set -uo pipefail
dir="${1:?DIR}" bin="${2:?MOEBENCH}" suite="${3:?SUITE}" n="${4:?N}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
for c in munged mungekey slurmctld slurmd sbatch squeue; do
  command -v "$c" >/dev/null 2>&1 || { echo "single_node.sh: $c is not installed" >&2; exit 77; }
done
[ "$(id -u)" -eq 0 ] || { echo "single_node.sh: needs root to run slurmd" >&2; exit 77; }
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
pids=()
stop() {
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  sleep 1
}
trap stop EXIT
mungekey -c -k "$dir/munge.key" -f >/dev/null 2>&1 && chmod 600 "$dir/munge.key" || exit 1
munged --key-file="$dir/munge.key" --socket="$dir/munge.sock" --pid-file="$dir/munged.pid" \
  --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" --force || exit 1
host="$(hostname -s)"
port=$((20000 + $$ % 20000))
cpus="$(nproc)"
cat >"$dir/slurm.conf" <<CONF
ClusterName=moetest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" || exit 1
slurmd -f "$SLURM_CONF" || exit 1
for _ in $(seq 1 30); do
  sinfo -h -o %t 2>/dev/null | grep -q idle && break
  sleep 1
done
sinfo -h -o %t 2>/dev/null | grep -q idle || { echo "single_node.sh: the node never became idle" >&2; tail -5 "$dir/log/slurmctld.log" >&2; exit 1; }
# the node has no GPU and few cores: the test overrides the script's requests
(cd "$here" && MOEBENCH="$bin" harness/slurm/submit.sh "$suite" "$n" "$dir/out" --gres=none \
   --cpus-per-task=1 --output="$dir/log/job-%j.out") || exit 1
for _ in $(seq 1 240); do
  [ "$(squeue -h 2>/dev/null | wc -l)" -eq 0 ] && break
  sleep 1
done
[ "$(squeue -h 2>/dev/null | wc -l)" -eq 0 ] || { echo "single_node.sh: jobs still queued" >&2; squeue >&2; exit 1; }
[ -s "$dir/out/merged.csv" ] || { echo "single_node.sh: no merged.csv" >&2; cat "$dir"/log/job-*.out >&2; exit 1; }
exit 0
