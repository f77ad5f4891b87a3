#!/usr/bin/env bash
# The README's main job: a solver that is killed comes back by itself with the same answer.
#
# 1. examples/solver.c (a Jacobi solve of the heat equation on a 4096 x 4096 grid, 256 MiB, two
#    threads) runs straight through: its answer is the reference.
# 2. The same solver runs under `crest run` with the embedded supervisor (no daemon): its own pid
#    namespace with crest-init as pid 1, an incremental checkpoint every 3 s into an images
#    directory. After a few checkpoints this script kills the solver with SIGKILL. crest run sees
#    the job die of a signal, restores it from its newest checkpoint (rolling its output file
#    back to that point), and the solver carries on from there.
# 3. Both answers are compared: PASS or FAIL. The whole demo takes about a minute.
#
#   examples/demo.sh [WORK_DIR]
#
# WORK_DIR (default ./demo-run) receives reference.log, run.log (the solver's output under
# crest), run.err (what crest run said) and images/ (the checkpoints). Binaries come from
# $CREST_BIN_DIR, else <repo>/build/bin (built by .ci/setup). Run as root: without crestd,
# crest run makes the pid namespace and restores the tree itself.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CREST_BIN_DIR:-$root/build/bin}"
work="${1:-demo-run}"
every=3s

die() { echo "demo: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

for tool in crest crest-init crest-solver; do
  [[ -x "$bin/$tool" ]] || die "$bin/$tool is missing: run .ci/setup first"
done
[[ $(id -u) -eq 0 ]] || die "run as root (crest run makes a pid namespace and restores the job itself)"

# Start from a clean work directory, but never delete anything this demo did not make.
if [[ -e "$work" ]]; then
  [[ -d "$work" ]] || die "$work exists and is not a directory"
  for f in "$work"/* "$work"/.[!.]*; do
    [[ -e "$f" || -L "$f" ]] || continue
    case "${f##*/}" in
      reference.log | run.log | run.err) rm -f -- "$f" ;;
      images)
        for g in "$f"/* "$f"/.[!.]*; do
          [[ -e "$g" || -L "$g" ]] || continue
          case "${g##*/}" in
            ckpt-*.h5 | ckpt-*.h5.tmp | latest | .latest.tmp | .lock) rm -f -- "$g" ;;
            *) die "$f holds ${g##*/}, which is not part of an images directory" ;;
          esac
        done
        rmdir -- "$f"
        ;;
      *) die "$work holds ${f##*/}, which this demo did not make; pick another directory" ;;
    esac
  done
fi
mkdir -p "$work"
work="$(cd "$work" && pwd)"

answer_of() { grep '^answer:' "$1" | tail -n 1 || true; }
checkpoints() { find "$work/images" -maxdepth 1 -name 'ckpt-*.h5' 2>/dev/null | wc -l; }

step "1/3  the solver, straight through (the reference answer)"
"$bin/crest-solver" | tee "$work/reference.log"
reference="$(answer_of "$work/reference.log")"
[[ -n "$reference" ]] || die "the solver gave no answer"

step "2/3  the same solver under crest run, a checkpoint every $every; killed with SIGKILL after 3"
# The solver's output goes to run.log: a file, which a restore rolls back to the checkpoint, so
# that it ends up exactly as if nothing had happened. What crest run says (its stderr, which the
# solver shares) goes through a pipe, shown here live and kept in run.err.
exec {narration}> >(tee "$work/run.err" >&2)
tee_pid=$!
"$bin/crest" run --no-daemon --every "$every" -D "$work/images" \
  -- "$bin/crest-solver" >"$work/run.log" 2>&"$narration" &
crest_pid=$!
exec {narration}>&-

deadline=$((SECONDS + 120))
until (( $(checkpoints) >= 3 )); do
  kill -0 "$crest_pid" 2>/dev/null || break
  (( SECONDS < deadline )) || die "no 3 checkpoints after 120 s"
  sleep 0.2
done
init_pid="$(pgrep -P "$crest_pid" -x crest-init || true)"
solver_pid="$(pgrep -P "${init_pid:-0}" -x crest-solver || true)"
if [[ -z "$solver_pid" ]] || [[ -n "$(answer_of "$work/run.log")" ]]; then
  wait "$crest_pid" || true
  die "the solver finished before it could be killed (a faster machine? raise its sweeps with -s)"
fi
echo "demo: $(grep -c '^sweep' "$work/run.log") progress lines so far; kill -9 $solver_pid (the solver, pid 2 in its namespace)" >&2
kill -KILL "$solver_pid"

status=0
wait "$crest_pid" || status=$?
wait "$tee_pid" 2>/dev/null || true

step "3/3  the checkpoints, and the answers"
ls -l "$work/images"
"$bin/crest" verify "$work/images"
result="$(answer_of "$work/run.log")"
echo "straight through:        ${reference#answer: }"
echo "killed, restored:        ${result#answer: }   (crest run exited with $status)"
grep -q 'restored from' "$work/run.err" || { echo "FAIL: crest run never restored the solver"; exit 1; }
if [[ $status -eq 0 && "$result" == "$reference" ]]; then
  echo "PASS: the solver was killed with SIGKILL, came back by itself from its last checkpoint,"
  echo "      and finished with the same answer as the run that nobody interrupted."
else
  echo "FAIL: the answers differ or crest run failed (see $work/run.log and $work/run.err)"
  exit 1
fi
