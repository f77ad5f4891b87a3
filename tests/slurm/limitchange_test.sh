#!/usr/bin/env bash
# A time limit changed while the job runs (`scontrol update JobId=N TimeLimit=...`), on a real
# cluster with a real crestd that asks Slurm again for each job's end every 2 s (--slurm-poll;
# default 30 s, and again just before the last checkpoint). The plugin's margin is 10 s.
#   - job A starts with a 10-minute limit, shortened to 1 minute once it runs: crestd takes its
#     last checkpoint and requeues it before the new end (within the margin and the poll), not
#     10 minutes later; requeued, it is restored from that checkpoint;
#   - job B starts with a 1-minute limit, extended to 3 minutes once it runs: at the old end's
#     last checkpoint time (and past its old end) it is still running, never requeued, with no
#     "last checkpoint" line, and crestd knows its new end.
source "$(dirname "$0")/lib.sh"
slurm_test_start limitchange
steps=$(realpath "$(dirname "$0")/steps.py")
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }

CLUSTER_PLUGSTACK=$(plugstack_line margin=10s) cluster_up "$T/cluster" || fail "the cluster did not come up"
# crestd after the cluster: it runs scontrol, which finds the cluster through SLURM_CONF.
start_crestd --slurm-poll 2s

submit() {
  sbatch --parsable -t "$1" --checkpoint=10m --requeue --open-mode=append -o "$T/$2.out" \
    --wrap "python3 $steps 300 1"
}
a=$(submit 10 a) && b=$(submit 1 b) || fail "sbatch"
note "jobs: A=$a (10 min, to be shortened to 1), B=$b (1 min, to be extended to 3)"
registered() { grep -q "^crest: job $1: checkpointed every" "$2" 2>/dev/null; }
wait_for 30 registered "$a" "$T/a.out" || fail "job $a was not registered with crestd"
wait_for 30 registered "$b" "$T/b.out" || fail "job $b was not registered with crestd"

scontrol update JobId="$a" TimeLimit=1 || fail "scontrol update JobId=$a TimeLimit=1"
scontrol update JobId="$b" TimeLimit=3 || fail "scontrol update JobId=$b TimeLimit=3"
# The ends Slurm gives them now (scontrol's local time), in seconds since the epoch.
end_of() { date -d "$(scontrol show job "$1" | grep -o 'EndTime=[^ ]*' | cut -d= -f2)" +%s; }
end_a=$(end_of "$a") && end_b=$(end_of "$b") || fail "no EndTime"
start_b=$(date -d "$(scontrol show job "$b" | grep -o 'StartTime=[^ ]*' | cut -d= -f2)" +%s)
note "A now ends in $((end_a - $(date +%s))) s, B in $((end_b - $(date +%s))) s"

# crestd's view of a job's end (seconds since the epoch, "" if it has none).
crestd_end() {
  "$CREST" jobs --socket "$T/crestd.sock" --json | python3 -c '
import datetime, json, sys
for j in json.load(sys.stdin)["jobs"]:
    if j.get("scheduler_job") == "slurm:" + sys.argv[1] and j["state"] == "running" and j.get("end_time"):
        print(int(datetime.datetime.fromisoformat(j["end_time"].replace("Z", "+00:00")).timestamp()))' "$1"
}
follows() { [[ $(crestd_end "$1") == "$2" ]]; }
wait_for 10 follows "$a" "$end_a" || fail "crestd did not learn job $a's new end $end_a (it has '$(crestd_end "$a")')"
wait_for 10 follows "$b" "$end_b" || fail "crestd did not learn job $b's new end $end_b (it has '$(crestd_end "$b")')"
# (crestd flushes its log every second)
wait_for 5 grep -q "(slurm $a): its time limit changed" "$T/crestd.log" || fail "crestd's log does not say A's limit changed"

# A: the last checkpoint and the requeue come before its new end, within the margin (10 s) and
# the poll (2 s) and a little slack for this loaded machine.
wait_for 90 bash -c "[[ \$(scontrol show job $a | grep -o 'Restarts=[0-9]*') == Restarts=1 ]]" ||
  fail "job $a was not requeued before its new end (state $(job_state "$a"))"
t_requeue=$(date +%s)
((t_requeue <= end_a)) || fail "job $a was requeued $((t_requeue - end_a)) s after its new end"
((t_requeue >= end_a - 16)) || fail "job $a was requeued $((end_a - t_requeue)) s before its new end (margin 10 s)"
grep -q "^crest: job $a: last checkpoint before the time limit (.*), then requeued\$" "$T/a.out" ||
  fail "job $a's output: $(grep '^crest' "$T/a.out")"
wait_for 5 grep -q "job .* (slurm $a): requeued after ckpt-" "$T/crestd.log" || fail "crestd's log does not say it requeued job $a"

# B: past its old end's last checkpoint time (start + 50 s) and its old end (start + 60 s),
# still in its first run, untouched.
wait_for 90 bash -c "(( \$(date +%s) >= $start_b + 62 ))"
[[ $(job_state "$b") == RUNNING && $(job_restarts "$b") == 0 ]] ||
  fail "job $b, whose limit was extended, is $(job_state "$b") with Restarts=$(job_restarts "$b")"
grep -q "^crest: job $b: last checkpoint before" "$T/b.out" &&
  fail "job $b took a last checkpoint for its old limit: $(grep '^crest' "$T/b.out")"
follows "$b" "$end_b" || fail "crestd has job $b ending at '$(crestd_end "$b")', not $end_b"

# A runs again, restored from its last checkpoint.
wait_for 60 running_again "$a" || fail "job $a did not run again"
wait_for 30 grep -q "^crest: restored from checkpoint 1 taken at" "$T/a.out" ||
  fail "job $a was not restored: $(grep '^crest' "$T/a.out")"

echo "PASS: job $a's limit shortened to 1 min: requeued $((end_a - t_requeue)) s before its new end" \
  "and restored; job $b's limit extended to 3 min: still running past its old end, crestd" \
  "follows its new end ($(date -u -d "@$end_b" +%H:%M:%S) UTC)"
