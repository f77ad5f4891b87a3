#!/usr/bin/env bash
# The plugin and users other than root (jobs of `nobody`, submitted by root with --uid):
#   - a user's job is checkpointed as theirs: crestd's job has their uid, the images directory
#     <storage>/<uid>/slurm-<id> and every image file are theirs; its exit code (3) reaches Slurm;
#   - --checkpoint-dir naming a directory that is not the user's is refused (the job runs, is
#     not checkpointed, its output says why) and the directory is left as it was;
#   - a user cannot make the plugin restore images that are not theirs: another user's (root's)
#     checkpoint placed in the user's --checkpoint-dir is refused when the job runs again after
#     a requeue, and the job starts from the top, saying why.
source "$(dirname "$0")/lib.sh"
slurm_test_start users
user=nobody
uid=$(id -u "$user") && gid=$(id -g "$user") || { echo "SKIP: no user '$user' on this machine"; exit 77; }
# The job runs crest-init as the user: it must be able to reach it (a build tree under a private
# home directory is not).
setpriv --reuid="$uid" --regid="$gid" --clear-groups test -x "$CREST_INIT" ||
  { echo "SKIP: $user cannot execute $CREST_INIT (a directory on its path is not searchable)"; exit 77; }

start_crestd
CLUSTER_PLUGSTACK=$(plugstack_line) cluster_up "$T/cluster" || fail "the cluster did not come up"
chmod 755 "$T"
mkdir -m 1777 "$T/out"
mkdir -m 755 "$T/root-owned"
mkdir -m 700 "$T/theirs" && chown "$uid:$gid" "$T/theirs"

as_user() { sbatch --parsable --uid="$uid" --gid="$gid" "$@"; }
a=$(as_user --checkpoint=1s -o "$T/out/a.out" --wrap "sleep 5; exit 3") || fail "sbatch as $user"
b=$(as_user --checkpoint=1s --checkpoint-dir="$T/root-owned" -o "$T/out/b.out" --wrap "sleep 1")
# c: root's job, whose checkpoint is then put in d's directory.
c=$(sbatch --parsable --checkpoint=1s -o "$T/out/c.out" --wrap "sleep 30")
d=$(as_user --checkpoint=1h --requeue --open-mode=append --checkpoint-dir="$T/theirs" \
  -o "$T/out/d.out" --wrap "echo started; sleep 4; echo finished")
note "jobs of $user: $a, $b (--checkpoint-dir not theirs), $d; of root: $c"

dir_a=$T/images/$uid/slurm-$a
wait_for 30 has_checkpoints "$dir_a" 1 || fail "no checkpoint of $user's job $a in $dir_a"
[[ $(stat -c %u:%a "$dir_a") == "$uid:700" ]] || fail "$dir_a: $(stat -c '%U %a' "$dir_a")"
for f in "$dir_a"/ckpt-*.h5; do
  [[ $(stat -c %u:%a "$f") == "$uid:600" ]] || fail "$f: $(stat -c '%U %a' "$f")"
done
"$CREST" jobs --socket "$T/crestd.sock" --json | python3 -c '
import json, sys
jobs = [j for j in json.load(sys.stdin)["jobs"] if j.get("scheduler_job") == "slurm:" + sys.argv[1]]
assert jobs and jobs[0]["uid"] == int(sys.argv[2]), jobs' "$a" "$uid" || fail "crestd's job for $a is not $user's"

wait_for 30 job_gone "$b" || fail "job $b did not end"
# The job's own exit status reaches Slurm through crest-init and the task's process.
wait_for 30 job_gone "$a" || fail "job $a did not end"
scontrol show job "$a" | grep -q 'ExitCode=3:0' || fail "job $a (exit 3): $(scontrol show job "$a" | grep -o 'ExitCode=[^ ]*')"
grep -q "^crest: job $b is not checkpointed: --checkpoint-dir=$T/root-owned is not a directory of yours\$" "$T/out/b.out" ||
  fail "job $b's output: $(cat "$T/out/b.out")"
[[ $(stat -c %u:%a "$T/root-owned") == "0:755" ]] || fail "$T/root-owned was changed: $(stat -c '%U %a' "$T/root-owned")"
"$CREST" jobs --socket "$T/crestd.sock" | grep -q "slurm:$b" && fail "job $b was registered"

# d runs and is requeued before its first checkpoint (every 1h); root's checkpoint of c is put
# in d's directory, as theirs, while d waits.
wait_for 30 has_checkpoints "$T/images/0/slurm-$c" 1 || fail "no checkpoint of root's job $c"
wait_for 30 bash -c "[[ \$(squeue -h -j $d -o %T) == RUNNING ]] && grep -q started '$T/out/d.out'" || fail "job $d did not start"
scontrol requeue "$d" || fail "scontrol requeue $d"
wait_for 30 bash -c "[[ \$(squeue -h -j $d -o %T) != RUNNING ]]" || fail "job $d kept running"
cp -P "$T/images/0/slurm-$c"/ckpt-*.h5 "$T/images/0/slurm-$c/latest" "$T/theirs/"
chown -h "$uid:$gid" "$T/theirs"/*
wait_for 60 job_gone "$d" || fail "job $d did not end after its requeue"
grep -q "^crest: job $d, run 2: no checkpoint to restore from $T/theirs (.*uid $uid.*); the job starts from the top\$" "$T/out/d.out" ||
  fail "job $d's output does not refuse root's images: $(cat "$T/out/d.out")"
# (The first run may print "finished" too: the requeue's SIGTERM can reach its sleep first.)
[[ $(grep -c '^started' "$T/out/d.out") -eq 2 && $(tail -n 1 "$T/out/d.out") == finished ]] ||
  fail "job $d did not start over: $(cat "$T/out/d.out")"
scancel "$c"
echo "PASS: $user's job checkpointed as theirs; a --checkpoint-dir not theirs refused;" \
  "root's images in $user's directory not restored: $(grep "^crest: job $d, run 2" "$T/out/d.out" | cut -c1-200)"
