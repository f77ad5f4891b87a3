#!/usr/bin/env bash
# Before the time limit, on a real cluster with a real crestd: a job that needs about 80 s of
# work (steps.py: 80 steps of hashing and a 1 s sleep, so that the machine's load does not change
# how long it takes), submitted with a 1-minute time limit (`sbatch -t 1 --checkpoint=10m --requeue`,
# the plugin's margin=10s). crestd learns the job's end from the plugin's registration, takes a
# last checkpoint 10 s before it and requeues the job (scontrol requeue); Slurm runs it again and
# the plugin restores it from that checkpoint (the only one: the interval is 10 minutes). So it
# finishes across two (or, on a slow machine, more) allocations:
#   - the job started once, its progress counter never goes back, the answer is the one of an
#     uninterrupted run, Slurm sees the job COMPLETED with exit code 0 after >= 1 restart;
#   - the output says before each requeue that the last checkpoint was taken, and after each
#     restore which checkpoint it came from, when it was taken and how much work was lost;
#   - `scontrol show job` has the newest checkpoint in its AdminComment.
source "$(dirname "$0")/lib.sh"
slurm_test_start timelimit
steps=$(dirname "$0")/steps.py
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }

CLUSTER_PLUGSTACK=$(plugstack_line margin=10s) cluster_up "$T/cluster" || fail "the cluster did not come up"
# crestd after the cluster: it runs scontrol, which finds the cluster through SLURM_CONF.
start_crestd

python3 "$steps" 80 0 >"$T/reference.out" || fail "the reference run of steps.py failed"
ref=$(answer_of "$T/reference.out")
t_submit=$(now_ms)
a=$(sbatch --parsable -t 1 --checkpoint=10m --requeue --open-mode=append -o "$T/a.out" \
  --wrap "python3 $(realpath "$steps") 80 1") || fail "sbatch"
note "job $a, time limit 1 minute"
wait_for 240 job_gone "$a" || fail "job $a did not end ($(job_state "$a"), Restarts=$(job_restarts "$a"))"
t_done=$(now_ms)

restarts=$(job_restarts "$a")
((restarts >= 1)) || fail "job $a was never requeued (Restarts=$restarts)"
scontrol show job "$a" | grep -q 'JobState=COMPLETED' || fail "job $a: $(scontrol show job "$a" | grep JobState)"
scontrol show job "$a" | grep -q 'ExitCode=0:0' || fail "job $a's exit code: $(scontrol show job "$a" | grep -o 'ExitCode=[^ ]*')"
[[ $(grep -c '^steps: 80' "$T/a.out") -eq 1 ]] || fail "job $a started more than once"
grep '^step ' "$T/a.out" | awk '{ split($2, s, "/"); if (s[1] + 0 <= last) { print "sweep " s[1] " after " last; bad = 1 } last = s[1] + 0 } END { exit bad }' ||
  fail "job $a's progress counter went back"
[[ $(answer_of "$T/a.out") == "$ref" ]] || fail "job $a answered '$(answer_of "$T/a.out")', an uninterrupted run '$ref'"

finals=$(grep -c "^crest: job $a: last checkpoint before the time limit (.*), then requeued\$" "$T/a.out")
((finals == restarts)) || fail "$restarts restarts but $finals 'last checkpoint' lines: $(grep '^crest' "$T/a.out")"
restored=$(grep -c "^crest: restored from checkpoint [0-9]* taken at .* UTC, lost [0-9.]* s of work\$" "$T/a.out")
((restored == restarts)) || fail "$restarts restarts but $restored 'restored from' lines: $(grep '^crest' "$T/a.out")"
# Restored from the last checkpoint before the limit (the interval is 10 minutes: no other).
first=$(grep -m1 '^crest: restored from checkpoint' "$T/a.out")
[[ $first == "crest: restored from checkpoint 1 taken at"* ]] || fail "the first restore: $first"
lost=$(sed -n 's/^crest: restored from .*, lost \([0-9.]*\) s of work$/\1/p' "$T/a.out" | sort -n | tail -n 1)
awk -v l="$lost" 'BEGIN { exit !(l < 10) }' || fail "a restore lost $lost s of work (the requeue follows the checkpoint)"
grep -q "requeued after ckpt-" "$T/crestd.log" || fail "crestd's log does not say it requeued the job"
comment=$(scontrol show job "$a" | sed -n 's/^ *AdminComment=//p')
[[ $comment == "crest: checkpoint ckpt-"* ]] || fail "AdminComment: '$comment'"

echo "PASS: job $a (time limit 1 min, about 80 s of work) finished in $(((t_done - t_submit) / 1000)) s" \
  "across $((restarts + 1)) allocations with the answer of an uninterrupted run ($ref);" \
  "$(grep -m1 '^crest: restored from' "$T/a.out"); AdminComment: $comment"
