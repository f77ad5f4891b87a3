#!/usr/bin/env bash
# The SPANK plugin on a real cluster with a real crestd:
#   - sbatch/srun --help list the options; a bad --checkpoint value fails sbatch at once;
#   - `sbatch --checkpoint=1s` of the solver: crestd has the job under its Slurm id, checkpoints
#     of it appear in <storage>/<uid>/slurm-<id>, the job's output says so, and the solver still
#     gives the answer of a run without crest;
#   - the environment form (SLURM_SPANK__SLURM_SPANK_OPTION_crest_checkpoint) works as well;
#   - a job without the option is left alone (the site default, jobs=opt-in).
# This cluster runs the plugin with wrap=no: the script is slurmstepd's task itself, a process
# group in slurmstepd's session. A checkpoint of such a tree is refused at restore without
# --launcher-session (naming the session), and restored with it. (requeue_test.sh covers the
# default, wrap=yes: the job under crest-init in a pid namespace and session of its own.)
source "$(dirname "$0")/lib.sh"
slurm_test_start checkpoint
solver_args=(-n 512 -s 36000 -t 1 -r 500)  # about 6 s here when idle: time for 2 checkpoints

start_crestd
CLUSTER_PLUGSTACK=$(plugstack_line wrap=no) cluster_up "$T/cluster" || fail "the cluster did not come up"

sbatch --help | grep -q -- '--checkpoint=INTERVAL|auto' || fail "sbatch --help does not list --checkpoint"
srun --help | grep -q -- '--checkpoint-dir=DIR' || fail "srun --help does not list --checkpoint-dir"
if err=$(sbatch --checkpoint=often --wrap true 2>&1); then fail "sbatch --checkpoint=often was accepted"; fi
grep -q "give an interval" <<<"$err" || fail "no reason given for --checkpoint=often: $err"

"$CREST_SOLVER" "${solver_args[@]}" >"$T/reference.out" &
ref_pid=$!

a=$(sbatch --parsable --checkpoint=1s -o "$T/a.out" --wrap "$CREST_SOLVER ${solver_args[*]}")
b=$(SLURM_SPANK__SLURM_SPANK_OPTION_crest_checkpoint=1s sbatch --parsable -o "$T/b.out" --wrap "sleep 7")
c=$(sbatch --parsable -o "$T/c.out" --wrap "sleep 2")
note "jobs: $a (--checkpoint=1s), $b (environment form), $c (no option)"

dir_a=$T/images/0/slurm-$a
wait_for 60 has_checkpoints "$dir_a" 2 || fail "no 2 checkpoints of job $a in $dir_a ($(ls "$dir_a" 2>&1))"
dir_b=$T/images/0/slurm-$b
wait_for 30 has_checkpoints "$dir_b" 1 || fail "no checkpoint of job $b (environment form)"
# Job b (sh and its sleep) restored while it still runs (its script is in the spool): refused
# without --launcher-session, naming the session slurmstepd led; with it, brought back in a new
# pid namespace in our session, and it runs to its end.
if err=$("$CREST" restore -D "$dir_b" --pidns --file-changes=ignore 2>&1); then
  fail "crest restore of a batch step's tree without --launcher-session succeeded"
fi
grep -q "whose leader was outside the tree (the job's launcher); restore it with --launcher-session" <<<"$err" ||
  fail "no refusal naming the launcher's session: $err"
"$CREST" restore -D "$dir_b" --pidns --launcher-session --file-changes=ignore 2>"$T/b-restore.err" ||
  fail "crest restore --launcher-session of job $b's tree: $(cat "$T/b-restore.err")"
grep -q "^crest: restored ckpt-" "$T/b-restore.err" || fail "no restore of job $b: $(cat "$T/b-restore.err")"
jobs=$("$CREST" jobs --socket "$T/crestd.sock" --json)
check='
import json, sys
a, b, c, dir_a = sys.argv[1:]
jobs = json.load(sys.stdin)["jobs"]
by_sched = {j.get("scheduler_job"): j for j in jobs}
ja = by_sched.get("slurm:" + a)
assert ja, f"no crestd job for slurm:{a}"
assert ja["name"] == "slurm-" + a and ja["dir"] == dir_a and ja["every"] == "1s", ja
assert ja["policy"]["auto_restore"] == 0, ja["policy"]
assert "slurm:" + b in by_sched, "the environment form did not register job " + b
assert "slurm:" + c not in by_sched, "job " + c + " without --checkpoint was registered"
'
python3 -c "$check" "$a" "$b" "$c" "$dir_a" <<<"$jobs" || fail "crest jobs --json: $jobs"
"$CREST" jobs --socket "$T/crestd.sock" | grep -q "slurm:$a" || fail "crest jobs does not show slurm:$a"

# What the user sees in the job's output, and what the checkpoints say about the job.
grep -q "^crest: job $a: checkpointed every 1s by crestd (job [0-9]*) into $dir_a\$" "$T/a.out" ||
  fail "job $a's output does not say it is checkpointed: $(head -n 3 "$T/a.out")"
sched=$("$CREST" show "$dir_a/latest" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["info"]["scheduler_job_id"])') ||
  fail "crest show of $dir_a/latest"
[[ $sched == "slurm:$a" ]] || fail "the checkpoint records scheduler job '$sched', not slurm:$a"
[[ ! -e $T/images/0/slurm-$c ]] || fail "job $c without the option has images"

wait_for 120 job_gone "$a" || fail "job $a did not end"
wait "$ref_pid" || fail "the reference run of the solver failed"
ref=$(answer_of "$T/reference.out")
[[ -n $ref && $(answer_of "$T/a.out") == "$ref" ]] ||
  fail "job $a answered '$(answer_of "$T/a.out")', the solver alone '$ref'"
n=$(checkpoints_in "$dir_a")
echo "PASS: job $a checkpointed ($n checkpoints kept) and answered $ref like the solver alone;" \
  "the environment form works; job $c untouched; a copy of job $b restored with --launcher-session"
