#!/usr/bin/env bash
# Work lost per failure vs the checkpoint interval, on a private Slurm cluster (the one
# tests/slurm brings up, with the crest SPANK plugin and a private crestd). For each INTERVAL a
# solver job `sbatch --checkpoint=INTERVAL --requeue` is requeued ROUNDS times (`scontrol
# requeue`, standing for a preemption or a node failure), each at a random moment (a wait drawn
# uniformly from [INTERVAL, 2 x INTERVAL] after the job runs again, so unrelated to when its
# checkpoints fall), and each round reads the work lost from what the restored job prints:
#   crest: restored from checkpoint N taken at ..., lost S s of work
# (S: from the checkpoint the job came back from to the end of the run that was stopped, which
# crestd records). Expected: about INTERVAL / 2 on average plus the checkpoint's own time, at
# most about INTERVAL + its time. Prints one row per interval. Run as root from the repository:
#   bench/slurm_lost_work.sh [ROUNDS (3)] [INTERVALS ("2 5 10", seconds)] [GRID N (512)]
# The programs come from $BUILD (default build/) unless CREST, CRESTD, CREST_INIT, CREST_SOLVER
# and CREST_SPANK are set.
set -u
rounds=${1:-3}
intervals=${2:-2 5 10}
grid=${3:-512}
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$repo/build}
: "${CREST:=$build/bin/crest}" "${CRESTD:=$build/bin/crestd}" "${CREST_INIT:=$build/bin/crest-init}"
: "${CREST_SOLVER:=$build/bin/crest-solver}" "${CREST_SPANK:=$build/lib/crest_spank.so}"
export CREST CRESTD CREST_INIT CREST_SOLVER CREST_SPANK
source "$repo/tests/slurm/lib.sh"
slurm_test_start bench-lost

CLUSTER_PLUGSTACK=$(plugstack_line) cluster_up "$T/cluster" >/dev/null || fail "the cluster did not come up"
start_crestd

rows=()
for interval in $intervals; do
  out=$T/job-$interval.out
  log_from=$(($(wc -l <"$T/crestd.log") + 1))
  job=$(sbatch --parsable --checkpoint="${interval}s" --requeue --open-mode=append -o "$out" \
    --wrap "$CREST_SOLVER -n $grid -s 100000000 -t 1 -r 1000") || fail "sbatch"
  registered_n() {
    local n
    n=$(grep -c "^crest: job $job: checkpointed every" "$out" 2>/dev/null)
    ((${n:-0} >= $1))
  }
  lost=()
  wait_for 60 registered_n 1 || fail "job $job was not registered"
  for r in $(seq 1 "$rounds"); do
    # A random moment: INTERVAL to 2 x INTERVAL after the job (re)started, in ms.
    wait_ms=$((interval * 1000 + RANDOM % (interval * 1000 + 1)))
    sleep "$(awk -v m="$wait_ms" 'BEGIN { printf "%.3f", m / 1000 }')"
    scontrol requeue "$job" || fail "scontrol requeue"
    wait_for 300 bash -c "[[ \$(squeue -h -j $job -o %T) == RUNNING && \$(scontrol show job $job | grep -o 'Restarts=[0-9]*') == Restarts=$r ]]" ||
      fail "round $r: the job did not run again"
    wait_for 120 registered_n $((r + 1)) || fail "round $r: the restored job was not registered: $(grep '^crest' "$out" | tail -n 3)"
    line=$(grep '^crest: restored from checkpoint' "$out" | tail -n 1)
    [[ $(grep -c '^crest: restored from checkpoint' "$out") -eq $r ]] ||
      fail "round $r (interval ${interval}s): not restored: $(grep '^crest' "$out" | tail -n 3)"
    lost+=($(sed -n 's/.*, lost \([0-9.]*\) s of work$/\1/p' <<<"$line"))
    echo "interval ${interval}s, round $r: requeued ${wait_ms} ms after the run started; lost ${lost[-1]} s"
  done
  scancel "$job"
  wait_for 30 job_gone "$job"
  # The median checkpoint time of this job, from crestd's log.
  cost=$(tail -n "+$log_from" "$T/crestd.log" | grep -o ' frozen [0-9.]* ms, [0-9]* bytes stored, [0-9.]* ms in all' |
    sed -n 's/.*, \([0-9.]*\) ms in all/\1/p' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "?" }')
  rows+=("$(printf '%s\n' "${lost[@]}" | awk -v i="$interval" -v c="$cost" \
    '{ s += $1; if ($1 > m) m = $1; n++ } END { printf "  %8ss %7d %12.2f %10.2f %14.2f %12s\n", i, n, s / n, m, i / 2, c }')")
done
echo "work lost per failure (scontrol requeue at a random moment), solver -n $grid, $rounds rounds each:"
printf '  %9s %7s %12s %10s %14s %12s\n' interval rounds "mean lost s" "max lost s" "interval/2 s" "ckpt ms"
printf '%s\n' "${rows[@]}"
