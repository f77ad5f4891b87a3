#!/usr/bin/env bash
# srun steps and --checkpoint, on a real cluster with a real crestd. An srun step runs under a
# slurmstepd of its own, outside the batch script's tree, and the srun in the script holds
# connections to that slurmstepd and to slurmctld that end with the allocation: neither the step
# nor a script in the middle of srun could be restored after a requeue. So (README "Slurm"):
#   - a step that asks (`srun --checkpoint`, or the option sbatch exported to the script) is
#     not checkpointed and says so by name in its output, once (task 0);
#   - crestd refuses to checkpoint a batch script while it runs an srun step, naming the srun
#     process (the job's last_error; no checkpoint is committed while the step runs), and
#     checkpoints it again once the step has ended;
#   - requeued in the middle of its step, the job is restored from a checkpoint taken before
#     the step, runs the step again and finishes (exit 0).
source "$(dirname "$0")/lib.sh"
slurm_test_start steps

start_crestd
CLUSTER_PLUGSTACK=$(plugstack_line) cluster_up "$T/cluster" || fail "the cluster did not come up"

# A bare srun asking for checkpoints: refused by name.
srun --checkpoint=1s -n 1 true >"$T/bare.out" 2>&1 || fail "srun --checkpoint: $(cat "$T/bare.out")"
grep -q '^crest: step [0-9]*\.0 is not checkpointed: srun steps are not, only batch steps' "$T/bare.out" ||
  fail "srun --checkpoint said: $(cat "$T/bare.out")"

cat >"$T/job.sh" <<'EOF'
#!/bin/bash
echo "script: started"
sleep 4
echo "script: step starts"
srun -n 1 sleep 9
echo "script: step ended with $?"
sleep 3
echo "script: done"
EOF
chmod +x "$T/job.sh"
a=$(sbatch --parsable --checkpoint=1s --checkpoint-keep=100 --requeue --open-mode=append \
  -o "$T/a.out" "$T/job.sh") || fail "sbatch"
dir_a=$T/images/0/slurm-$a
note "job $a: a batch script that runs 'srun sleep 9'"
wait_for 30 grep -q '^script: step starts' "$T/a.out" || fail "job $a did not reach its step: $(cat "$T/a.out")"
has_checkpoints "$dir_a" 1 || fail "job $a has no checkpoint from before its step"
# Once the step runs (a checkpoint started just before it may still commit):
wait_for 10 grep -q "^crest: step $a\.0 is not checkpointed: srun steps are not" "$T/a.out" ||
  fail "the step did not say it is not checkpointed: $(grep '^crest' "$T/a.out")"
sleep 1.5
before=$(checkpoints_in "$dir_a")
sleep 4
during=$(checkpoints_in "$dir_a")
((during == before)) || fail "job $a was checkpointed while its srun step ran ($before, then $during checkpoints)"
last_error() {
  "$CREST" jobs --socket "$T/crestd.sock" --json | python3 -c '
import json, sys
for j in json.load(sys.stdin)["jobs"]:
    if j.get("scheduler_job") == "slurm:" + sys.argv[1] and j["state"] == "running":
        print(j.get("last_error", ""))' "$1"
}
err=$(last_error "$a")
[[ $err == *"the job runs an srun step (srun pid "*"cannot be restored after a requeue"* ]] ||
  fail "job $a's last error does not name its srun step: '$err'"
grep -q "the job runs an srun step (srun pid" "$T/crestd.log" || fail "crestd's log does not name the srun step"

# Requeued in the middle of the step: restored from before it, the step runs again.
scontrol requeue "$a" || fail "scontrol requeue"
wait_for 60 running_again "$a" || fail "job $a did not run again (state $(job_state "$a"))"
wait_for 60 job_gone "$a" || fail "job $a did not end after its restore"
grep -q "^crest: restored ckpt-[0-9]*\.h5 in " "$T/a.out" || fail "job $a was not restored: $(grep '^crest' "$T/a.out")"
[[ $(grep -c '^script: started' "$T/a.out") -eq 1 ]] || fail "job $a's script started over: $(grep '^script' "$T/a.out")"
grep -q '^script: step ended with 0$' "$T/a.out" || fail "job $a's step: $(grep '^script' "$T/a.out")"
grep -q '^script: done$' "$T/a.out" || fail "job $a did not finish: $(grep '^script' "$T/a.out")"
scontrol show job "$a" | grep -q 'ExitCode=0:0' || fail "job $a's exit code: $(scontrol show job "$a" | grep -o 'ExitCode=[^ ]*')"

# After the step, the script was checkpointed again (the restored run's own checkpoints).
after=$(checkpoints_in "$dir_a")
((after > during)) || fail "job $a was not checkpointed after its step ($during, then $after)"

echo "PASS: srun steps are refused by name ('$(head -c 80 <"$T/bare.out")...'); job $a was not" \
  "checkpointed while its step ran ($before checkpoints before, $during during), crestd named" \
  "the srun; requeued mid-step it came back from before the step, ran it again and finished"
