#!/usr/bin/env bash
# Node failure, on a real two-node cluster whose nodes are distinct hosts (cluster_netns.sh:
# network and UTS namespaces, hostnames n1 and n2), each with its own crestd, sharing one images
# directory (the plugin's socket=…/crestd-%h.sock picks the node's crestd):
# a job (`sbatch --checkpoint=2s --requeue`, steps.py) runs on one node; once it has checkpoints,
# that node dies: its slurmd, the job's slurmstepd and every process under it, and its crestd are
# killed with SIGKILL, and the node is marked DOWN. Slurm requeues the job, runs it on the other
# node, and the plugin restores it there from the newest checkpoint: the job started once, its
# progress counter never goes back, the answer is the one of an uninterrupted run, and its output
# says what the restore brought back ("lost at most …": the dead node recorded no end).
source "$(dirname "$0")/lib.sh"
slurm_test_start nodefail
source "$(dirname "$0")/cluster_netns.sh"
for t in ip nsenter unshare python3; do
  command -v $t >/dev/null || { echo "SKIP: $t is not installed"; exit 77; }
done
steps=$(realpath "$(dirname "$0")/steps.py")
CRESTD_PIDS=()

CLUSTER_PLUGSTACK="required $CREST_SPANK socket=$T/crestd-%h.sock storage=$T/images crest=$CREST" \
  cluster_netns_up "$T/cluster" 2 || fail "the cluster did not come up"
start_node_crestd 1
start_node_crestd 2
python3 "$steps" 40 0 >"$T/reference.out" || fail "the reference run of steps.py failed"
ref=$(answer_of "$T/reference.out")

a=$(ns sbatch --parsable --checkpoint=2s --requeue --open-mode=append -o "$T/a.out" \
  --wrap "python3 $steps 40 1") || fail "sbatch"
dir=$T/images/0/slurm-$a
node_of() { ns squeue -h -j "$a" -o %N 2>/dev/null; }
wait_for 30 bash -c "[[ \$($CLUSTER_ROOT/ns squeue -h -j $a -o %T) == RUNNING ]]" || fail "job $a did not start"
node=$(node_of)
wait_for 60 has_checkpoints "$dir" 2 || fail "no 2 checkpoints of job $a: $(grep '^crest' "$T/a.out")"
grep -q "^crest: job $a: checkpointed every 2s by crestd" "$T/a.out" || fail "job $a: $(grep '^crest' "$T/a.out")"
note "job $a runs on $node, checkpointed; $node dies"

# The node's processes: its slurmd, its job steps (slurmstepd in its network namespace) and all
# below them, its crestd.
i=${node#n}
netns_id=$(stat -L -c %i "/run/netns/crest-$$-n$i")
victims=("$(cat "$CLUSTER_ROOT/pid/slurmd-$node.pid")" "${CRESTD_PIDS[$((i - 1))]}")
descendants() {
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}
for p in $(pgrep -x slurmstepd); do
  [[ $(readlink "/proc/$p/ns/net") == "net:[$netns_id]" ]] || continue
  victims+=("$p" $(descendants "$p"))
done
((${#victims[@]} >= 5)) || fail "the job's processes on $node were not found (${victims[*]})"
steps_before=$(grep -c '^step ' "$T/a.out")
t_kill=$(now_ms)
kill -KILL "${victims[@]}"
ns scontrol update NodeName="$node" State=DOWN Reason=crest-nodefail-test || fail "scontrol update $node DOWN"

running_elsewhere() {
  [[ $(ns squeue -h -j "$a" -o %T 2>/dev/null) == RUNNING && $(node_of) != "$node" &&
     $(ns scontrol show job "$a" | grep -o 'Restarts=[0-9]*') != Restarts=0 ]]
}
wait_for 90 running_elsewhere || fail "job $a did not run again on another node ($(ns squeue -h -j "$a" -o '%T %N %r'))"
t_again=$(now_ms)
other=$(node_of)
restored() { grep -q '^crest: restored from checkpoint' "$T/a.out"; }
wait_for 60 restored || fail "job $a was not restored on $other: $(grep '^crest' "$T/a.out")"
wait_for 120 bash -c "[[ -z \$($CLUSTER_ROOT/ns squeue -h -j $a -o %T) ]]" || fail "job $a did not end on $other"

show=$(ns scontrol show job "$a")
grep -q 'JobState=COMPLETED' <<<"$show" || fail "job $a: $(grep JobState <<<"$show")"
grep -q 'ExitCode=0:0' <<<"$show" || fail "job $a's exit code: $(grep -o 'ExitCode=[^ ]*' <<<"$show")"
[[ $(grep -c '^steps: 40' "$T/a.out") -eq 1 ]] || fail "job $a started more than once"
grep '^step ' "$T/a.out" | awk '{ split($2, s, "/"); if (s[1] + 0 <= last) { print "step " s[1] " after " last; bad = 1 } last = s[1] + 0 } END { exit bad }' ||
  fail "job $a's progress counter went back"
[[ $(answer_of "$T/a.out") == "$ref" ]] || fail "job $a answered '$(answer_of "$T/a.out")', an uninterrupted run '$ref'"
line=$(grep -m1 '^crest: restored from checkpoint' "$T/a.out")
[[ $line == *"lost at most "*" s of work (the end of its last run was not recorded: its node failed?)" ]] ||
  fail "the restore's line: $line"
grep -q "registered" "$T/crestd-$other.log" || fail "$other's crestd did not take the restored job"
echo "PASS: job $a, on $node when it died (after $steps_before steps), ran again on $other" \
  "$(((t_again - t_kill) / 1000)) s later, restored: '$line'; answer $ref as uninterrupted"
