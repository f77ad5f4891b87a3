#!/usr/bin/env bash
# The test cluster itself: up, a batch job runs and writes its output, down with no daemon left.
source "$(dirname "$0")/cluster.sh"
set -u
slurm_need_tools || exit 77
T=${SLURM_TEST_SCRATCH:-${TMPDIR:-/tmp}}/crest-slurm-cluster.$$
cluster_up "$T" || { echo "FAIL: the cluster did not come up"; exit 1; }
pids=$(cat "$CLUSTER_ROOT"/pid/*.pid)
out=$T/job.out
id=$(sbatch --parsable -o "$out" --wrap 'echo "hello from $SLURM_JOB_ID on $SLURMD_NODENAME"') ||
  { echo "FAIL: sbatch"; exit 1; }
for _ in $(seq 1 100); do
  [[ -z $(squeue -h -j "$id" -o %T 2>/dev/null) ]] && break
  sleep 0.1
done
grep -qx "hello from $id on $CLUSTER_NODE" "$out" || { echo "FAIL: job output: $(cat "$out" 2>&1)"; exit 1; }
cluster_down
trap - EXIT
for p in $pids; do
  st=$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null || true)
  [[ -z $st || $st == Z ]] || { echo "FAIL: daemon $p still runs after cluster_down"; exit 1; }
done
[[ ! -e $T ]] || { echo "FAIL: $T left behind"; exit 1; }
echo "PASS: cluster up in ${CLUSTER_UP_MS} ms, job $id ran, down"
