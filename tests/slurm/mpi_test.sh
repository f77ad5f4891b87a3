#!/usr/bin/env bash
# mpirun inside sbatch, checkpointed and restarted, on a real cluster with a real crestd: a batch
# script that runs `mpirun -np 2` of the MPI heat solver (examples/mpi/heat.c), submitted with
# `sbatch -n 2 --checkpoint=2s --requeue`, is requeued (`scontrol requeue`) once it has a
# checkpoint; Slurm runs it again (same job id) and the plugin restores the whole tree (the
# script, mpirun with its PMIx server and ptys, both ranks, their vader segments and TCP
# connections) in place of the script:
#   - the job's output says it was restored, the solver started once (one start line) and its
#     progress counter never went back: the run went on from the checkpoint, not from the top;
#   - its answer is the one of an uninterrupted run (the solver's answer does not depend on the
#     number of ranks: the reference is one rank, without Slurm);
#   - Slurm sees the job COMPLETED with exit code 0 after one restart.
# mpirun in a batch step would otherwise take the allocation from Slurm's environment (ras/slurm:
# here the node "crest1", which is not this host's name) and launch its daemons there with srun
# (plm/slurm), a step, which is not checkpointed: the script makes it use this node only and
# launch the ranks itself (OMPI_MCA_ras=^slurm OMPI_MCA_plm=isolated), as README "Slurm" says a
# one-node job should.
source "$(dirname "$0")/lib.sh"
slurm_test_start mpi
command -v mpirun >/dev/null 2>&1 ||
  { echo "SKIP: Open MPI is not installed (no mpirun: install openmpi-bin and libopenmpi-dev)"; exit 77; }
[[ -x ${CREST_HEAT_MPI:-} ]] ||
  { echo "SKIP: the MPI solver examples/mpi was not built (libopenmpi-dev missing at configure time)"; exit 77; }

# 200 x 200 grid, 700 sweeps with a pause of 25 ms each: about 18 s of work whatever the machine.
heat_args=(-n 200 -s 700 -r 10 -w 25000)
# The transport listens on ports of its own (README "MPI jobs": the restore needs them free).
port=$((30000 + RANDOM % 20000))
# The session directory and the vader segments on tmpfs (README "MPI jobs"), in a directory of
# this test's own: mpirun is pid 3 or so of the job's pid namespace, so another MPI job in a pid
# namespace on this machine (another test) would take the same names in /dev/shm.
shm=/dev/shm/crest-slurm-mpi.$$
mkdir -p "$shm"
trap 'rc=$?; rm -rf "$shm"; (exit $rc); slurm_test_cleanup' EXIT
mpi_env=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMPI_MCA_ras=^slurm OMPI_MCA_plm=isolated
  OMPI_MCA_orte_tmpdir_base=$shm OMPI_MCA_btl_vader_backing_directory=$shm
  OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo
  OMPI_MCA_rmaps_base_oversubscribe=1
  OMPI_MCA_btl_tcp_port_min_v4=$port OMPI_MCA_btl_tcp_port_range_v4=100
  OMPI_MCA_btl_tcp_port_min_v6=$port OMPI_MCA_btl_tcp_port_range_v6=100)

start_crestd
CLUSTER_PLUGSTACK=$(plugstack_line) cluster_up "$T/cluster" || fail "the cluster did not come up"

# The reference: one rank, no Slurm, no crest (the answer depends only on the grid and sweeps).
env "${mpi_env[@]}" mpirun -np 1 "$CREST_HEAT_MPI" -n 200 -s 700 >"$T/reference.out" 2>&1 ||
  fail "the reference run of the solver failed: $(tail -n 5 "$T/reference.out")"
ref=$(answer_of "$T/reference.out")
[[ -n $ref ]] || fail "the reference run printed no answer"

{
  echo '#!/bin/bash'
  for v in "${mpi_env[@]}"; do echo "export $v"; done
  echo "mpirun -np 2 $CREST_HEAT_MPI ${heat_args[*]}"
  echo 'echo "script: mpirun exited with $?"'
} >"$T/job.sh"
chmod +x "$T/job.sh"

a=$(sbatch --parsable -n 2 --checkpoint=2s --requeue --open-mode=append -o "$T/a.out" "$T/job.sh") ||
  fail "sbatch"
dir_a=$T/images/0/slurm-$a
note "job $a: mpirun -np 2 in a batch script"
wait_for 60 has_checkpoints "$dir_a" 2 || fail "not two checkpoints of job $a ($(grep '^crest' "$T/a.out"))"
job_gone "$a" && fail "job $a ended before it could be requeued (a faster machine? raise -s)"
sweeps_before=$(grep -c '^sweep' "$T/a.out")
t_requeue=$(now_ms)
scontrol requeue "$a" || fail "scontrol requeue"
note "requeued at progress line $sweeps_before (checkpoints: $(checkpoints_in "$dir_a"))"
wait_for 60 running_again "$a" || fail "job $a did not run again (state $(job_state "$a"))"
t_again=$(now_ms)
wait_for 80 job_gone "$a" || fail "job $a did not end after its restore"

grep -q "^crest: restored ckpt-[0-9]*\.h5 in " "$T/a.out" ||
  fail "job $a's output does not say it was restored: $(grep '^crest' "$T/a.out")"
grep -q "^crest: restored from checkpoint [0-9]* taken at .* UTC, lost [0-9.]* s of work\$" "$T/a.out" ||
  fail "job $a's output does not say what the restore brought back: $(grep '^crest' "$T/a.out")"
[[ $(grep -c '^heat: 200 x 200' "$T/a.out") -eq 1 ]] ||
  fail "job $a's solver started more than once: $(grep '^heat:' "$T/a.out")"
grep '^sweep' "$T/a.out" | awk '{ split($2, s, "/"); if (s[1] + 0 <= last) { print "sweep " s[1] " after " last; bad = 1 } last = s[1] + 0 } END { exit bad }' ||
  fail "job $a's progress counter went back"
[[ $(answer_of "$T/a.out") == "$ref" ]] ||
  fail "job $a answered '$(answer_of "$T/a.out")', an uninterrupted run '$ref'"
grep -q '^script: mpirun exited with 0$' "$T/a.out" || fail "mpirun's exit: $(grep '^script' "$T/a.out")"
scontrol show job "$a" | grep -q 'JobState=COMPLETED' || fail "job $a: $(scontrol show job "$a" | grep JobState)"
scontrol show job "$a" | grep -q 'ExitCode=0:0' || fail "job $a's exit code: $(scontrol show job "$a" | grep -o 'ExitCode=[^ ]*')"
[[ $(job_restarts "$a") == 1 ]] || fail "job $a: Restarts=$(job_restarts "$a")"
first_after=$(grep '^sweep' "$T/a.out" | sed -n "$((sweeps_before + 1))p")

echo "PASS: job $a (mpirun -np 2 in sbatch) requeued at progress line $sweeps_before, running" \
  "again $((t_again - t_requeue)) ms later, restored (next line: '$first_after'), with the answer of" \
  "an uninterrupted run ($ref): $(grep -m1 '^crest: restored from' "$T/a.out")"
