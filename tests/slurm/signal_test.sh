#!/usr/bin/env bash
# Signals as "checkpoint now", on a real cluster with a real crestd (the plugin's default,
# signal=USR1): SIGUSR1 sent to a job's batch step reaches the plugin's task process, which asks
# crestd for a checkpoint instead of passing the signal on, so the job does not die of it.
#   - job A (`--checkpoint=10m`, so no timer checkpoint comes in the test's time):
#     `scancel --signal=USR1 --batch` -> a checkpoint; requeued, it is restored from it, and the
#     same signal to the restored run (whose task supervises `crest restore`) -> a checkpoint of
#     the restored job. It still finishes once, with the answer of an uninterrupted run;
#   - job B: `sbatch -t 2 --signal=B:USR1@110` (Slurm's own warning signal before the time
#     limit) -> a checkpoint, and B finishes normally (exit 0, no restart).
source "$(dirname "$0")/lib.sh"
slurm_test_start signal
steps=$(realpath "$(dirname "$0")/steps.py")
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }

CLUSTER_PLUGSTACK=$(plugstack_line) cluster_up "$T/cluster" || fail "the cluster did not come up"
start_crestd
python3 "$steps" 60 0 >"$T/reference.out" || fail "the reference run of steps.py failed"
ref=$(answer_of "$T/reference.out")

a=$(sbatch --parsable --checkpoint=10m --requeue --open-mode=append -o "$T/a.out" \
  --wrap "python3 $steps 60 1") || fail "sbatch a"
# Its output is not opened for appending: the plugin does not have it requeued at its time
# limit (the next run could not be restored from an output Slurm truncated), and says so.
b=$(sbatch --parsable -t 2 --signal=B:USR1@110 --checkpoint=10m -o "$T/b.out" \
  --wrap "python3 $steps 60 1") || fail "sbatch b"
dir_a=$T/images/0/slurm-$a
dir_b=$T/images/0/slurm-$b
note "jobs: A=$a (scancel --signal=USR1 --batch), B=$b (--signal=B:USR1@110)"
registered() { grep -q "^crest: job $1: checkpointed every" "$2" 2>/dev/null; }
wait_for 30 registered "$a" "$T/a.out" || fail "job $a was not registered with crestd"
has_checkpoints "$dir_a" 1 && fail "job $a has a checkpoint before any signal"

scancel --signal=USR1 --batch "$a" || fail "scancel --signal=USR1 --batch $a"
wait_for 20 has_checkpoints "$dir_a" 1 || fail "no checkpoint of job $a after SIGUSR1"
grep -q "^crest: job $a: SIGUSR1: checkpoint requested\$" "$T/a.out" || fail "job $a's output: $(grep '^crest' "$T/a.out")"
[[ $(job_state "$a") == RUNNING ]] || fail "job $a is $(job_state "$a") after SIGUSR1"

scontrol requeue "$a" || fail "scontrol requeue $a"
wait_for 60 running_again "$a" || fail "job $a did not run again"
restored_a() { grep -q '^crest: restored from checkpoint 1 taken at' "$T/a.out"; }
wait_for 30 restored_a || fail "job $a was not restored: $(grep '^crest' "$T/a.out")"
# The restored run is registered with crestd again (its line follows the restore's).
registered_again() { (($(grep -c "^crest: job $a: checkpointed every" "$T/a.out") >= 2)); }
wait_for 30 registered_again || fail "the restored job $a was not registered: $(grep '^crest' "$T/a.out")"
scancel --signal=USR1 --batch "$a" || fail "second scancel --signal=USR1 --batch $a"
wait_for 20 has_checkpoints "$dir_a" 2 || fail "no checkpoint of the restored job $a after SIGUSR1: $(grep '^crest' "$T/a.out")"
[[ $(grep -c "^crest: job $a: SIGUSR1: checkpoint requested\$" "$T/a.out") -eq 2 ]] ||
  fail "job $a's output after the second signal: $(grep '^crest' "$T/a.out")"

wait_for 90 has_checkpoints "$dir_b" 1 || fail "no checkpoint of job $b after Slurm's --signal=B:USR1@110"
grep -q "^crest: job $b: SIGUSR1: checkpoint requested\$" "$T/b.out" || fail "job $b's output: $(grep '^crest' "$T/b.out")"
grep -q "^crest: job $b: not requeued at its time limit: Slurm would truncate its output when it runs again" "$T/b.out" ||
  fail "job $b's output does not say why it is not requeued: $(grep '^crest' "$T/b.out")"

wait_for 120 job_gone "$a" || fail "job $a did not end"
wait_for 120 job_gone "$b" || fail "job $b did not end"
for j in "$a" "$b"; do
  scontrol show job "$j" | grep -q 'JobState=COMPLETED' || fail "job $j: $(scontrol show job "$j" | grep JobState)"
  scontrol show job "$j" | grep -q 'ExitCode=0:0' || fail "job $j's exit code: $(scontrol show job "$j" | grep -o 'ExitCode=[^ ]*')"
done
[[ $(job_restarts "$a") == 1 && $(job_restarts "$b") == 0 ]] || fail "restarts: A $(job_restarts "$a"), B $(job_restarts "$b")"
for f in a b; do
  [[ $(grep -c '^steps: 60' "$T/$f.out") -eq 1 ]] || fail "job $f started more than once"
  grep '^step ' "$T/$f.out" | awk '{ split($2, s, "/"); if (s[1] + 0 <= last) { print "step " s[1] " after " last; bad = 1 } last = s[1] + 0 } END { exit bad }' ||
    fail "job $f's progress counter went back"
  [[ $(answer_of "$T/$f.out") == "$ref" ]] || fail "job $f answered '$(answer_of "$T/$f.out")', an uninterrupted run '$ref'"
done
echo "PASS: SIGUSR1 (scancel --batch, before and after a restore, and Slurm's --signal=B:USR1@110)" \
  "took checkpoints of jobs $a and $b, which did not die of it and answered $ref"
