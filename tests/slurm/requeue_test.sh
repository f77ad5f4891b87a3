#!/usr/bin/env bash
# Restart after requeue, on a real cluster with a real crestd. Two solver jobs, both
# `sbatch --checkpoint=1s --requeue`, are requeued (`scontrol requeue`) once they have a
# checkpoint; Slurm runs them again (same job id, SLURM_RESTART_COUNT=1) after cred_expire:
#   - job A is restored from its checkpoint in place (crest restore is the batch step's task);
#     the restored job is checkpointed again, and requeued a second time it is restored from a
#     checkpoint taken after the first restore. Its output continues the solver's progress
#     counter where each checkpoint left it (one start line, sweeps only ever increasing), says
#     it was restored, and the answer is the one of an uninterrupted run; Slurm sees the job
#     complete with exit code 0 after two restarts;
#   - job B's images are damaged while it waits: it starts from the top, says so in its output,
#     and still gives the right answer.
source "$(dirname "$0")/lib.sh"
slurm_test_start requeue
solver_args=(-n 512 -s 25000 -t 1 -r 250)

start_crestd
CLUSTER_PLUGSTACK=$(plugstack_line) cluster_up "$T/cluster" || fail "the cluster did not come up"

"$CREST_SOLVER" "${solver_args[@]}" >"$T/reference.out" &
ref_pid=$!
submit() {
  sbatch --parsable --checkpoint=1s --requeue --open-mode=append -o "$T/$1.out" \
    --wrap "$CREST_SOLVER ${solver_args[*]}"
}
a=$(submit a) && b=$(submit b) || fail "sbatch"
dir_a=$T/images/0/slurm-$a
dir_b=$T/images/0/slurm-$b
note "jobs: A=$a, B=$b"
wait_for 60 has_checkpoints "$dir_a" 1 || fail "no checkpoint of job $a"
wait_for 60 has_checkpoints "$dir_b" 1 || fail "no checkpoint of job $b"
job_gone "$a" && fail "job $a ended before it could be requeued (a faster machine? raise -s)"
sweeps_a=$(grep -c '^sweep' "$T/a.out")
first_pid=$("$CREST" jobs --socket "$T/crestd.sock" --json | python3 -c '
import json, sys
print([j["pid"] for j in json.load(sys.stdin)["jobs"] if j.get("scheduler_job") == "slurm:" + sys.argv[1]][0])' "$a") ||
  fail "crestd has no job for slurm:$a"
t_requeue=$(now_ms)
scontrol requeue "$a" "$b" || fail "scontrol requeue"
note "requeued at sweep line $sweeps_a of job $a"

# B's images damaged once its first run is over (crestd takes no more checkpoints of it).
wait_for 30 bash -c "[[ \$(squeue -h -j $b -o %T) != RUNNING ]]" || fail "job $b kept running after the requeue"
sleep 0.5
for f in "$dir_b"/ckpt-*.h5; do
  size=$(stat -c %s "$f")
  head -c 65536 /dev/urandom | dd of="$f" bs=1 seek=$((size / 2)) conv=notrunc status=none
done

wait_for 60 running_again "$a" || fail "job $a did not run again (state $(job_state "$a"))"
t_again=$(now_ms)

# The restored job is checkpointed again (it runs under crest-init in a pid namespace of its
# own, so the restored tree is one crest can dump): requeued a second time, it comes back from
# a checkpoint taken after the first restore.
# crestd's job for the restored tree: registered with the same Slurm id, running, and its own
# newest checkpoint.
restored_checkpoint() {
  "$CREST" jobs --socket "$T/crestd.sock" --json | python3 -c '
import json, sys
for j in json.load(sys.stdin)["jobs"]:
    if j.get("scheduler_job") == "slurm:" + sys.argv[1] and j["state"] == "running" \
            and j.get("restores", 0) == 0 and j["checkpoints"] > 0 and j["pid"] != int(sys.argv[2]):
        print(j["last_checkpoint"]["name"])
' "$a" "$first_pid"
}
has_restored_checkpoint() { [[ -n $(restored_checkpoint) ]]; }
wait_for 30 has_restored_checkpoint ||
  fail "crestd took no checkpoint of job $a after its restore: $("$CREST" jobs --socket "$T/crestd.sock")"
second_latest=$(restored_checkpoint)
t_requeue2=$(now_ms)
scontrol requeue "$a" || fail "second scontrol requeue"
wait_for 60 bash -c "[[ \$(squeue -h -j $a -o %T) == RUNNING && \$(scontrol show job $a | grep -o 'Restarts=[0-9]*') == Restarts=2 ]]" ||
  fail "job $a did not run a third time"
t_again2=$(now_ms)
wait_for 120 job_gone "$a" || fail "job $a did not end after its restore"
wait_for 120 job_gone "$b" || fail "job $b did not end after its second run"
wait "$ref_pid" || fail "the reference run of the solver failed"
ref=$(answer_of "$T/reference.out")

# A: restored, not started over.
[[ $(grep -c "^crest: restored ckpt-[0-9]*\.h5 in " "$T/a.out") -eq 2 ]] ||
  fail "job $a's output does not say twice that it was restored: $(grep '^crest' "$T/a.out")"
last_restored=$(sed -n 's/^crest: restored \(ckpt-[0-9]*\.h5\) in .*/\1/p' "$T/a.out" | tail -n 1)
((10#$(tr -dc 0-9 <<<"$last_restored") >= 10#$(tr -dc 0-9 <<<"$second_latest"))) ||
  fail "job $a was restored the second time from $last_restored, older than $second_latest (taken after the first restore)"
[[ $(grep -c '^solver: 512' "$T/a.out") -eq 1 ]] || fail "job $a's solver started more than once: $(grep '^solver:' "$T/a.out")"
grep '^sweep' "$T/a.out" | awk '{ split($2, s, "/"); if (s[1] + 0 <= last) { print "sweep " s[1] " after " last; bad = 1 } last = s[1] + 0 } END { exit bad }' ||
  fail "job $a's progress counter went back"
[[ $(answer_of "$T/a.out") == "$ref" ]] || fail "job $a answered '$(answer_of "$T/a.out")', an uninterrupted run '$ref'"
scontrol show job "$a" | grep -q 'JobState=COMPLETED' || fail "job $a: $(scontrol show job "$a" | grep JobState)"
scontrol show job "$a" | grep -q 'ExitCode=0:0' || fail "job $a's exit code: $(scontrol show job "$a" | grep -o 'ExitCode=[^ ]*')"
[[ $(job_restarts "$a") == 2 ]] || fail "job $a: Restarts=$(job_restarts "$a")"

# B: from the top, and says why.
grep -q "^crest: job $b, run 2: no checkpoint to restore from $dir_b (.*); the job starts from the top\$" "$T/b.out" ||
  fail "job $b's output does not say it starts from the top: $(grep '^crest' "$T/b.out")"
[[ $(grep -c '^solver: 512' "$T/b.out") -eq 2 ]] || fail "job $b did not start over"
[[ $(answer_of "$T/b.out") == "$ref" ]] || fail "job $b answered '$(answer_of "$T/b.out")', an uninterrupted run '$ref'"

echo "PASS: job $a restored after each of two requeues (running again $((t_again - t_requeue))" \
  "and $((t_again2 - t_requeue2)) ms after scontrol requeue; the second time from $last_restored," \
  "taken after the first restore) with the answer of an uninterrupted run ($ref); job $b with damaged images" \
  "started from the top and said so: $(grep '^crest: job .* run 2' "$T/b.out" | cut -c1-160)"
