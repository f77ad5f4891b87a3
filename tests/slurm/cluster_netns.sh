# A private Slurm cluster whose nodes are distinct hosts as far as Slurm and the job can tell:
# slurmctld in a network + UTS namespace of its own (hostname "ctl", 192.168.213.1 on a bridge),
# each slurmd in another (hostname nI, 192.168.213.(10+I)), munged's socket on the filesystem,
# and beside each slurmd that node's own crestd (in the node's network namespace, so that its
# scontrol reaches slurmctld) on $T/crestd-nI.sock. The addresses exist only inside namespaces
# the cluster made (named crest-<pid>-ctl, crest-<pid>-nI), removed by cluster_down.
# Sourced after lib.sh (it replaces lib.sh's cluster_down):
#     cluster_netns_up DIR NODES     # sets CLUSTER_ROOT, SLURM_CONF; writes $DIR/ns (a client wrapper)
#     ns sbatch ...                  # clients run in the controller's namespaces
# Knobs as cluster.sh's: CLUSTER_PLUGSTACK, CLUSTER_CRED_EXPIRE.

ns() { "$CLUSTER_ROOT/ns" "$@"; }

cluster_netns_up() {
  local n=$2 net=192.168.213 prefix=crest-$$ i hw mem
  CLUSTER_ROOT=$1
  CLUSTER_NETNS=()
  mkdir -p "$CLUSTER_ROOT"/{etc,munge,log,state,pid}
  chmod 700 "$CLUSTER_ROOT/munge"
  ip netns add "$prefix-ctl" || return 1
  CLUSTER_NETNS+=("$prefix-ctl")
  ip -n "$prefix-ctl" link set lo up
  ip -n "$prefix-ctl" link add br0 type bridge
  ip -n "$prefix-ctl" addr add $net.1/24 dev br0
  ip -n "$prefix-ctl" link set br0 up
  for i in $(seq 1 "$n"); do
    mkdir -p "$CLUSTER_ROOT/spool/n$i" "$CLUSTER_ROOT/tmp/n$i"
    ip netns add "$prefix-n$i" || return 1
    CLUSTER_NETNS+=("$prefix-n$i")
    ip -n "$prefix-n$i" link set lo up
    ip -n "$prefix-ctl" link add "vn$i" type veth peer name eth0 netns "$prefix-n$i"
    ip -n "$prefix-ctl" link set "vn$i" master br0 up
    ip -n "$prefix-n$i" addr add $net.$((10 + i))/24 dev eth0
    ip -n "$prefix-n$i" link set eth0 up
  done
  head -c 1024 /dev/urandom >"$CLUSTER_ROOT/munge/munge.key"
  chmod 400 "$CLUSTER_ROOT/munge/munge.key"
  munged --force --key-file="$CLUSTER_ROOT/munge/munge.key" \
    --socket="$CLUSTER_ROOT/munge/munge.sock" --pid-file="$CLUSTER_ROOT/pid/munged.pid" \
    --log-file="$CLUSTER_ROOT/log/munged.log" --seed-file="$CLUSTER_ROOT/munge/seed" || return 1
  hw=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *UpTime=.*//')
  mem=${hw##*RealMemory=}
  printf '%s\n' "${CLUSTER_PLUGSTACK:-}" >"$CLUSTER_ROOT/etc/plugstack.conf"
  cat >"$CLUSTER_ROOT/etc/slurm.conf" <<CONF
ClusterName=crest-netns
SlurmctldHost=ctl($net.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$CLUSTER_ROOT/munge/munge.sock,cred_expire=${CLUSTER_CRED_EXPIRE:-5}
StateSaveLocation=$CLUSTER_ROOT/state
SlurmdSpoolDir=$CLUSTER_ROOT/spool/%n
TmpFS=$CLUSTER_ROOT/tmp/%n
SlurmctldPidFile=$CLUSTER_ROOT/pid/slurmctld.pid
SlurmdPidFile=$CLUSTER_ROOT/pid/slurmd-%n.pid
SlurmctldLogFile=$CLUSTER_ROOT/log/slurmctld.log
SlurmdLogFile=$CLUSTER_ROOT/log/slurmd-%n.log
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
SchedulerParameters=sched_interval=1,bf_interval=1
MailProg=/bin/true
CONF
  for i in $(seq 1 "$n"); do
    echo "NodeName=n$i NodeAddr=$net.$((10 + i)) ${hw% RealMemory=*} RealMemory=$mem State=UNKNOWN" >>"$CLUSTER_ROOT/etc/slurm.conf"
  done
  echo "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$CLUSTER_ROOT/etc/slurm.conf"
  export SLURM_CONF=$CLUSTER_ROOT/etc/slurm.conf
  # nsenter --net, not `ip netns exec` (which mounts a /sys without the cgroup tree slurmd needs).
  nsenter --net="/run/netns/$prefix-ctl" unshare -u sh -c "hostname ctl; exec slurmctld -f $SLURM_CONF" || return 1
  cat >"$CLUSTER_ROOT/ns" <<WRAP
#!/bin/sh
export SLURM_CONF=$SLURM_CONF
exec nsenter --net=/run/netns/$prefix-ctl --uts=/proc/\$(cat $CLUSTER_ROOT/pid/slurmctld.pid)/ns/uts "\$@"
WRAP
  chmod +x "$CLUSTER_ROOT/ns"
  for i in $(seq 1 "$n"); do
    nsenter --net="/run/netns/$prefix-n$i" unshare -u sh -c "hostname n$i; exec slurmd -f $SLURM_CONF -N n$i" || return 1
  done
  local st=""
  for _ in $(seq 1 300); do
    st=$(ns sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')
    [[ $st == "idle " ]] && break
    sleep 0.1
  done
  [[ $st == "idle " ]] || { echo "cluster: nodes not idle ($st)" >&2; tail -n 20 "$CLUSTER_ROOT"/log/*.log >&2; return 1; }
  echo "cluster: $n nodes up under $CLUSTER_ROOT"
}

# crestd of node I: in that node's network and UTS namespaces (the slurmd's), on $T/crestd-nI.sock.
start_node_crestd() {
  local i=$1 slurmd_pid
  slurmd_pid=$(cat "$CLUSTER_ROOT/pid/slurmd-n$i.pid")
  nsenter --net="/run/netns/crest-$$-n$i" --uts="/proc/$slurmd_pid/ns/uts" \
    env SLURM_CONF="$SLURM_CONF" "$CRESTD" --socket "$T/crestd-n$i.sock" --storage-root "$T/images" \
    --state-file "$T/crestd-n$i-state.json" --log "$T/crestd-n$i.log" --init "$CREST_INIT" &
  CRESTD_PIDS+=($!)
  for _ in $(seq 1 100); do
    [[ -S $T/crestd-n$i.sock ]] && return 0
    sleep 0.05
  done
  fail "crestd of n$i did not start"
}

# Everything of the cluster: jobs, the daemons by their pids, the job steps left, each node's
# crestd, the namespaces.
cluster_down() {
  [[ -n ${CLUSTER_ROOT:-} && -d $CLUSTER_ROOT ]] || return 0
  local p pids=()
  local jobs
  jobs=$(ns squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  [[ -n ${jobs// } ]] && ns scancel --quiet $jobs 2>/dev/null
  for f in "$CLUSTER_ROOT"/pid/*.pid; do [[ -s $f ]] && pids+=("$(cat "$f")"); done
  for p in $(pgrep -x slurmstepd); do
    [[ $(readlink "/proc/$p/cwd" 2>/dev/null) == "$CLUSTER_ROOT"/* ]] && pids+=("$p")
  done
  pids+=("${CRESTD_PIDS[@]}")
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 100); do
    local alive=0
    for p in "${pids[@]}"; do _cluster_dead "$p" || alive=1; done
    ((alive)) || break
    sleep 0.05
  done
  for p in "${pids[@]}"; do _cluster_dead "$p" || kill -KILL "$p" 2>/dev/null; done
  for n in "${CLUSTER_NETNS[@]}"; do ip netns delete "$n" 2>/dev/null; done
  [[ ${CLUSTER_KEEP:-0} == 1 ]] || rm -rf "$CLUSTER_ROOT"
  CLUSTER_ROOT=
}
