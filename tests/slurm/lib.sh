# What the Slurm tests share beyond the cluster (cluster.sh): the built programs, a private
# crestd, waiting for things. The test's CMake entry passes the programs in the environment:
#   CREST CRESTD CREST_INIT CREST_SOLVER CREST_SPANK (empty when the plugin was not built)
# A test sources this, then calls `slurm_test_start NAME`, which skips (exit 77) with the reason
# when something is missing, and leaves a fresh scratch directory in $T.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/cluster.sh"

fail() {
  echo "FAIL: $*"
  exit 1
}
note() { echo "-- $*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

slurm_test_start() {
  slurm_need_tools || exit 77
  if [[ -z ${CREST_SPANK:-} || ! -f ${CREST_SPANK:-} ]]; then
    echo "SKIP: the crest SPANK plugin was not built (slurm/spank.h missing: install libslurm-dev)"
    exit 77
  fi
  local t
  for t in CREST CRESTD CREST_INIT CREST_SOLVER; do
    [[ -x ${!t:-} ]] || fail "$t is not set to a built program"
  done
  T=${SLURM_TEST_SCRATCH:-${TMPDIR:-/tmp}}/crest-slurm-$1.$$
  rm -rf "$T"
  mkdir -p "$T"
  # Every test gets its own crestd (socket, storage root, state, log) and its own cluster.
  CRESTD_PID=
  trap 'slurm_test_cleanup' EXIT
}

slurm_test_cleanup() {
  local rc=$?
  if ((rc != 0)) && [[ -n ${T:-} ]]; then
    echo "---- logs of the failed test ----"
    [[ -n ${CLUSTER_ROOT:-} ]] && tail -n 15 "$CLUSTER_ROOT"/log/slurmd.log 2>/dev/null
    tail -n 15 "$T/crestd.log" 2>/dev/null
    local f
    for f in "$T"/*.out "$T"/out/*.out; do
      [[ -f $f ]] || continue
      echo "---- $f (without progress lines) ----"
      grep -v '^sweep' "$f" | tail -n 25
    done
  fi
  cluster_down
  if [[ -n ${CRESTD_PID:-} ]]; then
    kill -TERM "$CRESTD_PID" 2>/dev/null
    wait "$CRESTD_PID" 2>/dev/null
  fi
  [[ ${CLUSTER_KEEP:-0} == 1 ]] || rm -rf "$T"
  exit $rc
}

# crestd on $T/crestd.sock, images under $T/images; arguments are more crestd flags.
start_crestd() {
  "$CRESTD" --socket "$T/crestd.sock" --storage-root "$T/images" --state-file "$T/crestd-state.json" \
    --log "$T/crestd.log" --init "$CREST_INIT" "$@" &
  CRESTD_PID=$!
  for _ in $(seq 1 100); do
    [[ -S $T/crestd.sock ]] && return 0
    sleep 0.05
  done
  fail "crestd did not start (log: $(tail -n 5 "$T/crestd.log" 2>/dev/null))"
}

# The plugstack.conf line an admin writes, pointing at this test's crestd and programs.
plugstack_line() {
  echo "required $CREST_SPANK socket=$T/crestd.sock storage=$T/images crest=$CREST $*"
}

# wait_for SECONDS COMMAND...: polls every 0.1 s until COMMAND succeeds.
wait_for() {
  local limit=$1
  shift
  local end=$(($(date +%s) + limit))
  while (($(date +%s) < end)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

job_state() { squeue -h -j "$1" -o %T 2>/dev/null; }
job_gone() { [[ -z $(job_state "$1") ]]; }
job_restarts() { scontrol show job "$1" 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2; }
running_again() { [[ $(job_state "$1") == RUNNING && $(job_restarts "$1") -ge 1 ]]; }
checkpoints_in() { ls "$1"/ckpt-*.h5 2>/dev/null | wc -l; }
has_checkpoints() { (($(checkpoints_in "$1") >= $2)); }
answer_of() { sed -n 's/^answer: //p' "$1"; }
