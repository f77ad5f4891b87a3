#!/usr/bin/env bash
# Requeue to running again, on a private Slurm cluster (the one tests/slurm brings up, with the
# crest SPANK plugin and a private crestd): a solver job `sbatch --checkpoint=1s --requeue` is
# requeued ROUNDS times (`scontrol requeue`), each time once it has a checkpoint taken since its
# last restore, and each round measures
#   slurm    requeue -> Slurm runs the job again (squeue RUNNING, Restarts=r): the credential
#            wait (AuthInfo=cred_expire, 5 s here, Slurm's default 120 s) and a scheduler pass
#   restore  crest restore's own time, as it reports it ("crest: restored ckpt-N in T")
#   total    requeue -> the restored job is registered with crestd again (working, checkpointed)
# and prints the first round beside the median of all. Run as root from the repository:
#   bench/slurm_requeue.sh [ROUNDS (5)] [GRID N (2048: two grids of N*N doubles, 64 MiB)]
# The programs come from $BUILD (default build/) unless CREST, CRESTD, CREST_INIT, CREST_SOLVER
# and CREST_SPANK are set.
set -u
rounds=${1:-5}
grid=${2:-2048}
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$repo/build}
: "${CREST:=$build/bin/crest}" "${CRESTD:=$build/bin/crestd}" "${CREST_INIT:=$build/bin/crest-init}"
: "${CREST_SOLVER:=$build/bin/crest-solver}" "${CREST_SPANK:=$build/lib/crest_spank.so}"
export CREST CRESTD CREST_INIT CREST_SOLVER CREST_SPANK
source "$repo/tests/slurm/lib.sh"
slurm_test_start bench-requeue

CLUSTER_PLUGSTACK=$(plugstack_line) cluster_up "$T/cluster" >/dev/null || fail "the cluster did not come up"
start_crestd
job=$(sbatch --parsable --checkpoint=1s --requeue --open-mode=append -o "$T/job.out" \
  --wrap "$CREST_SOLVER -n $grid -s 100000000 -t 1 -r 100") || fail "sbatch"
out=$T/job.out
dir=$T/images/0/slurm-$job
count() {
  local n
  n=$(grep -c "$1" "$out" 2>/dev/null)
  echo "${n:-0}"
}
registered_n() { (($(count "^crest: job $job: checkpointed every") >= $1)); }
newer_checkpoint() { [[ -n $(find "$dir" -name 'ckpt-*.h5' -newer "$1" 2>/dev/null) ]]; }
ms_since() { echo $(($(now_ms) - $1)); }

wait_for 60 registered_n 1 || fail "job $job was not registered"
touch "$T/mark"
slurm=() restore=() total=()
for r in $(seq 1 "$rounds"); do
  wait_for 60 newer_checkpoint "$T/mark" || fail "no new checkpoint before round $r"
  sleep 1
  t0=$(now_ms)
  scontrol requeue "$job" || fail "scontrol requeue"
  wait_for 300 bash -c "[[ \$(squeue -h -j $job -o %T) == RUNNING && \$(scontrol show job $job | grep -o 'Restarts=[0-9]*') == Restarts=$r ]]" ||
    fail "round $r: the job did not run again"
  slurm+=($(ms_since "$t0"))
  wait_for 120 registered_n $((r + 1)) || fail "round $r: the restored job was not registered: $(grep '^crest' "$out" | tail -n 3)"
  total+=($(ms_since "$t0"))
  line=$(grep '^crest: restored ckpt-' "$out" | tail -n 1)
  [[ $(count '^crest: restored ckpt-') -eq $r ]] || fail "round $r: not restored: $(grep '^crest' "$out" | tail -n 3)"
  # "crest: restored ckpt-000004.h5 in 112.4ms; root pid ..." -> ms
  restore+=($(sed -n 's/^crest: restored ckpt-[0-9]*\.h5 in \([0-9.]*\) \(m\?s\);.*/\1 \2/p' <<<"$line" |
    awk '{ printf "%.0f", $2 == "s" ? $1 * 1000 : $1 }'))
  touch "$T/mark"
  echo "round $r: slurm ${slurm[-1]} ms, restore ${restore[-1]} ms, total ${total[-1]} ms"
done
scancel "$job"
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
size=$(du -sh "$dir" | cut -f1)
echo "requeue -> running again, solver -n $grid ($((grid * grid * 16 >> 20)) MiB of grids), images $size, $rounds rounds, cred_expire=${CLUSTER_CRED_EXPIRE:-5}:"
printf '  %-8s first %6s ms   median %6s ms\n' slurm "${slurm[0]}" "$(median "${slurm[@]}")" \
  restore "${restore[0]}" "$(median "${restore[@]}")" total "${total[0]}" "$(median "${total[@]}")"
