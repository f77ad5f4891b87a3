# A private, throw-away Slurm cluster for crest's tests: munged, slurmctld and one slurmd, all
# running as root on this machine with their configuration, keys, sockets, state and logs under
# one temporary directory (nothing in /etc or /var), on ports nobody else is using.
#
# Sourced by the test scripts in this directory:
#     source cluster.sh
#     slurm_need_tools || exit 77          # prints why and skips when Slurm is not installed
#     cluster_up "$dir"                    # waits until the node is idle; sets SLURM_CONF
#     ... sbatch / squeue / scontrol ...
#     cluster_down                         # kills the daemons by pid and removes the directory
# Unless the caller has an EXIT trap already (which must call cluster_down), cluster_up installs
# one that calls cluster_down, so a failing test cleans up too.
#
# Knobs (environment, read by cluster_up):
#   CLUSTER_PLUGSTACK   contents of plugstack.conf (default: empty)
#   CLUSTER_CRED_EXPIRE AuthInfo cred_expire in seconds (default 5, the smallest Slurm accepts;
#                       it is also the wait before a requeued job may run again)

# What the tests need; a missing one is reported and the caller skips.
slurm_need_tools() {
  local t missing=()
  for t in munged slurmctld slurmd sbatch squeue scontrol sinfo scancel; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if ((${#missing[@]})); then
    echo "SKIP: Slurm is not installed (missing: ${missing[*]}; install slurmctld slurmd" \
         "slurm-client munge)"
    return 1
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: the test cluster's daemons run as root (SlurmUser=root): run the test as root"
    return 1
  fi
  return 0
}

# Two consecutive TCP ports that no socket on this machine uses.
_cluster_free_ports() {
  local used p
  used=$(awk 'NR > 1 { split($2, a, ":"); print strtonum("0x" a[2]) }' /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort -un)
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 30000))
    if ! grep -qx "$p" <<<"$used" && ! grep -qx "$((p + 1))" <<<"$used"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

_cluster_pids() {
  local f
  for f in "$CLUSTER_ROOT"/pid/*.pid; do
    [[ -s $f ]] && cat "$f"
  done
}

# cluster_up DIR: DIR must not exist or be empty. Sets CLUSTER_ROOT, CLUSTER_NODE, SLURM_CONF.
cluster_up() {
  local start port node_hw mem host
  start=$(date +%s%N)
  CLUSTER_ROOT=$1
  mkdir -p "$CLUSTER_ROOT"/{etc,munge,log,state,pid,tmp} "$CLUSTER_ROOT/spool/crest1"
  chmod 700 "$CLUSTER_ROOT/munge"
  [[ -n $(trap -p EXIT) ]] || trap cluster_down EXIT

  head -c 1024 /dev/urandom >"$CLUSTER_ROOT/munge/munge.key"
  chmod 400 "$CLUSTER_ROOT/munge/munge.key"
  munged --force --key-file="$CLUSTER_ROOT/munge/munge.key" \
    --socket="$CLUSTER_ROOT/munge/munge.sock" --pid-file="$CLUSTER_ROOT/pid/munged.pid" \
    --log-file="$CLUSTER_ROOT/log/munged.log" --seed-file="$CLUSTER_ROOT/munge/seed" ||
    { echo "cluster: munged did not start" >&2; return 1; }

  port=$(_cluster_free_ports) || { echo "cluster: no free ports" >&2; return 1; }
  host=$(hostname -s)
  CLUSTER_NODE=crest1
  # The node as slurmd sees the hardware (CPUs, boards, sockets, cores, threads, memory), so that
  # it is not drained for a configuration that differs from the hardware.
  node_hw=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *UpTime=.*//')
  mem=${node_hw##*RealMemory=}
  printf '%s\n' "${CLUSTER_PLUGSTACK:-}" >"$CLUSTER_ROOT/etc/plugstack.conf"
  cat >"$CLUSTER_ROOT/etc/slurm.conf" <<CONF
ClusterName=crest-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$CLUSTER_ROOT/munge/munge.sock,cred_expire=${CLUSTER_CRED_EXPIRE:-5}
StateSaveLocation=$CLUSTER_ROOT/state
SlurmdSpoolDir=$CLUSTER_ROOT/spool/%n
TmpFS=$CLUSTER_ROOT/tmp
SlurmctldPidFile=$CLUSTER_ROOT/pid/slurmctld.pid
SlurmdPidFile=$CLUSTER_ROOT/pid/slurmd.pid
SlurmctldLogFile=$CLUSTER_ROOT/log/slurmctld.log
SlurmdLogFile=$CLUSTER_ROOT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$CLUSTER_ROOT/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
InactiveLimit=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MailProg=/bin/true
NodeName=$CLUSTER_NODE NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 1)) ${node_hw% RealMemory=*} RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$CLUSTER_ROOT/etc/slurm.conf
  slurmctld -f "$SLURM_CONF" || { echo "cluster: slurmctld did not start" >&2; tail -n 20 "$CLUSTER_ROOT/log/slurmctld.log" >&2; return 1; }
  slurmd -f "$SLURM_CONF" -N "$CLUSTER_NODE" || { echo "cluster: slurmd did not start" >&2; tail -n 20 "$CLUSTER_ROOT/log/slurmd.log" >&2; return 1; }

  local state=""
  for _ in $(seq 1 300); do
    state=$(sinfo -h -N -o '%t' 2>/dev/null)
    [[ $state == idle ]] && break
    sleep 0.1
  done
  if [[ $state != idle ]]; then
    echo "cluster: the node is not idle after 30 s (state '$state')" >&2
    tail -n 20 "$CLUSTER_ROOT"/log/*.log >&2
    return 1
  fi
  CLUSTER_UP_MS=$((($(date +%s%N) - start) / 1000000))
  echo "cluster: up in ${CLUSTER_UP_MS} ms under $CLUSTER_ROOT (ports $port, $((port + 1)))"
}

# True when pid is gone or a zombie (slurmstepd and the daemons are reparented to pid 1, which
# may reap them late).
_cluster_dead() {
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 0
  [[ -z $st || $st == Z ]]
}

# Stops every job, then the daemons by the pids they wrote, and removes the directory.
cluster_down() {
  [[ -n ${CLUSTER_ROOT:-} && -d $CLUSTER_ROOT ]] || return 0
  local pids=() p start
  start=$(date +%s%N)
  if [[ -n ${SLURM_CONF:-} ]]; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null | tr "\n" " ")
    [[ -n ${jobs// } ]] && scancel --quiet $jobs 2>/dev/null
    true
    for _ in $(seq 1 60); do
      [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.05
    done
  fi
  # The daemons by the pids they wrote, and any job step (slurmstepd) they left: steps are
  # reparented to pid 1, but their working directory is the log directory of this cluster.
  mapfile -t pids < <(_cluster_pids)
  for p in $(pgrep -x slurmstepd); do
    [[ $(readlink "/proc/$p/cwd" 2>/dev/null) == "$CLUSTER_ROOT"/* ]] && pids+=("$p")
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for p in "${pids[@]}"; do _cluster_dead "$p" || alive=1; done
    ((alive)) || break
    sleep 0.05
  done
  for p in "${pids[@]}"; do _cluster_dead "$p" || kill -KILL "$p" 2>/dev/null || true; done
  if [[ ${CLUSTER_KEEP:-0} == 1 ]]; then
    echo "cluster: down; kept $CLUSTER_ROOT (CLUSTER_KEEP=1)"
  else
    rm -rf "$CLUSTER_ROOT"
  fi
  echo "cluster: down in $((($(date +%s%N) - start) / 1000000)) ms"
  CLUSTER_ROOT=
}
