#!/usr/bin/env bash
# Ranks started by `srun --mpi=pmix` are refused, naming why (issue 11): their PMIx server is
# slurmstepd, outside the job (each rank is slurmstepd's child and holds a TCP connection to its
# PMIx server on loopback). `crest dump -t <rank>` must fail naming slurmstepd as the PMIx server
# of ranks srun started and saying to launch with mpirun inside the allocation, with
# --tcp-established too (which would otherwise take connections to the outside), and leave no
# checkpoint; the job runs on untouched. A real cluster (cluster.sh), Open MPI's solver
# (examples/mpi/heat.c), Slurm's pmix plugin; skipped, saying why, when one is missing.
source "$(dirname "$0")/lib.sh"
slurm_test_start mpi_pmix
if [[ -z ${CREST_HEAT_MPI:-} || ! -x ${CREST_HEAT_MPI:-} ]]; then
  echo "SKIP: the MPI solver examples/mpi was not built (install openmpi-bin and libopenmpi-dev)"
  exit 77
fi
command -v srun >/dev/null || { echo "SKIP: srun is not installed (slurm-client)"; exit 77; }

cluster_up "$T/cluster" || fail "the cluster did not come up"
if ! srun --mpi=list 2>&1 | grep -qw pmix; then
  echo "SKIP: this Slurm has no pmix MPI plugin (srun --mpi=list: $(srun --mpi=list 2>&1 | tr '\n' ' '))"
  exit 77
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_tcp_if_include=lo \
  OMPI_MCA_oob_tcp_if_include=lo
# Long enough to be dumped twice; cancelled at the end.
srun --mpi=pmix -n 2 -o "$T/job.out" "$CREST_HEAT_MPI" -n 200 -s 100000 -r 10 -w 20000 \
  >"$T/srun.out" 2>&1 &
srun_pid=$!
has_progress() { grep -q '^sweep' "$T/job.out" 2>/dev/null; }
wait_for 60 has_progress || fail "the srun job made no progress: $(cat "$T/job.out" "$T/srun.out" 2>&1 | tail -n 5)"
rank0=$(sed -n 's/^heat: .* pid \([0-9]*\)$/\1/p' "$T/job.out" | head -n 1)
[[ -n $rank0 && -d /proc/$rank0 ]] || fail "no rank 0 pid in the job's output: $(head -n 3 "$T/job.out")"
parent=$(awk '{ print $4 }' "/proc/$rank0/stat")
[[ $(cat "/proc/$parent/comm") == slurmstepd ]] || fail "rank 0's parent is $(cat "/proc/$parent/comm"), not slurmstepd"
grep -qz '^PMIX_SERVER_URI' "/proc/$rank0/environ" || fail "rank 0 is not a PMIx client (no PMIX_SERVER_URI*)"

for opt in "" --tcp-established; do
  img=$T/img${opt:+-tcp}
  if err=$("$CREST" dump -t "$rank0" -D "$img" $opt 2>&1); then
    fail "crest dump${opt:+ $opt} of a rank started by srun --mpi=pmix succeeded"
  fi
  for want in "which is not a socket of the tree (its peer is held by process $parent, slurmstepd): slurmstepd (process $parent) is the PMIx server of ranks started by srun --mpi=pmix" \
              "launch the ranks with mpirun inside the allocation"; do
    grep -qF -- "$want" <<<"$err" || fail "crest dump${opt:+ $opt}: the refusal does not say '$want':
$err"
  done
  [[ -z $(ls "$img"/ckpt-* 2>/dev/null) ]] || fail "a refused dump left a checkpoint in $img"
  note "crest dump${opt:+ $opt}: $(grep -F slurmstepd <<<"$err" | head -n 1)"
done
[[ -d /proc/$rank0 ]] || fail "rank 0 is gone after the refused dumps"
before=$(grep -c '^sweep' "$T/job.out")
progressed() { (($(grep -c '^sweep' "$T/job.out") > before)); }
wait_for 30 progressed || fail "the job stopped after the refused dumps"

kill "$srun_pid" 2>/dev/null
wait "$srun_pid" 2>/dev/null
echo "PASS: crest dump of a rank under srun --mpi=pmix refused, naming slurmstepd ($parent) as its" \
  "PMIx server and saying to launch with mpirun, with and without --tcp-established; the job ran on"
