// The crest image schema: every record a checkpoint holds, in one place.
//
// A checkpoint is one HDF5 file (see storage/h5_container.cpp for the on-disk mapping and
// README.md for how to read it with stock tools). This header is the single source of truth for
// its content: root attributes (ImageInfo), one typed table per kernel object kind, the page index
// and the per-chunk checksums. core/ fills these records when dumping and consumes them when
// restoring; storage/ maps them to HDF5 compound datasets generically from the field lists below,
// so adding a column is one line here (and a format version bump if old readers would misread it).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace crest::schema {

inline constexpr const char* kFormatName = "crest-checkpoint";
// Bump when a reader of the previous version would misread a new file. Readers refuse newer files.
// 2: /pages/data holds u64 rows with the byte-shuffle filter before LZ4 (1 had u8 rows and LZ4
// alone; no release wrote it, and it is refused).
// 3: every VmFlag of a mapping (vmas.vmflags), per-thread scheduling, robust lists, seccomp,
// prctl and namespace state, file locks, owners, POSIX timers, AIO rings and guard regions. A
// version 2 image lacks that state: restoring it could hand a program different state, so it
// is refused like any other version.
// 4: event descriptors (files.count/clock/value_ns/interval_ns/sigmask/kind_flags; the epoll
// and inotify tables) and the sockets tables. A version 3 image has none of them.
// 5: Unix sockets restored: the sockets table gains the connection's credentials, the socket
// file, waiting connections; socket_queues the credentials of each message.
// 6: TCP and UDP sockets: the tcp table, sockets.congestion, socket_queues.dest/tos/ttl.
// 7: netlink sockets (files kind 20, sockets.nl_groups); POSIX message queues (files kind 21,
// the mq_messages table); System V IPC: the sysv, sysv_messages and sysv_limits tables,
// info.ipc_namespace, and mappings of System V shared memory (vmas.kind sysv_shm); TCP
// connections to peers outside the tree (--tcp-established): tcp.external, and info.net_lock,
// the nftables table that keeps their packets dropped until the restore; pseudo-terminals (files
// kinds 22-24): the ptys table, files.pty_id, processes.tty (a terminal outside the tree);
// threads.restart.
// 8: Unix sockets whose peer is outside the tree (--ext-unix-sk): sockets.external, and
// info.ext_unix_sk, the option the dump was taken with.
// 9: descriptors in flight over Unix sockets (SCM_RIGHTS): socket_queues.fds names the files rows
// a queued message carries; files.in_flight marks a description no process holds, only messages.
// 10: files on tmpfs mapped shared or open (POSIX shared memory in /dev/shm, Open MPI's vader
// segments and PMIx stores): files kind 25 with their contents saved; ptys.to_master, the output
// of a pseudo-terminal not read from its master yet (mpirun's forwarding of its ranks' stdout).
inline constexpr uint32_t kFormatVersion = 10;

inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kChunkPages = 256;  // pages per HDF5 chunk: 1 MiB
inline constexpr uint64_t kChunkBytes = kPageSize * kChunkPages;

// ---- Root attributes -------------------------------------------------------------------------

struct ImageInfo {
  std::string format = kFormatName;
  uint32_t format_version = kFormatVersion;
  std::string uuid;
  std::string parent_uuid;  // empty for a full checkpoint
  std::string parent_file;  // file name relative to this file's directory; empty for a full one
  uint64_t sequence = 0;    // 1 for the first checkpoint of an images directory
  int64_t created_ns = 0;   // CLOCK_REALTIME
  std::string host;
  std::string kernel_release;  // uname -r
  std::string kernel_build;    // uname -v: the vdso can be moved only on the same build
  std::string machine;         // uname -m
  uint64_t xsave_mask = 0;     // XCR0 of the dumping CPU
  std::string crest_version;
  std::string job_id;            // crest job name, if the agent took it
  std::string scheduler_job_id;  // e.g. "slurm:1234.0"
  int64_t root_pid = 0;
  uint32_t pid_namespace = 0;     // 1 if the tree lives in its own pid namespace (crest run)
  uint32_t ipc_namespace = 0;     // 1 if the tree lived in an IPC namespace of its own
  std::string tracker = "none";   // dirty tracking used: none, uffd-wp, soft-dirty, hash
  std::string mode = "stop-copy"; // memory snapshot mode: stop-copy, cow
  // The nftables table (family inet) a dump that killed the tree left in place to drop the
  // packets of its connections to the outside until they are restored ("": none).
  std::string net_lock;
  // 1 if the dump was taken with --ext-unix-sk (Unix sockets connected to the outside accepted;
  // the ones that were are marked sockets.external).
  uint32_t ext_unix_sk = 0;
  uint32_t complete = 0;          // written last, as part of the commit
};

// Statistics of the checkpoint that wrote the file (frozen time, pages, bytes, stage timings).
// Names are snake_case with a unit suffix: frozen_ns, pages_written, bytes_stored, ...
using Stats = std::map<std::string, int64_t>;

// ---- Typed tables ----------------------------------------------------------------------------

// One row per process of the tree.
struct ProcessRecord {
  int32_t pid = 0, ppid = 0, pgid = 0, sid = 0;
  uint32_t flags = 0;  // ProcessFlags
  uint32_t uid = 0, euid = 0, suid = 0, fsuid = 0;
  uint32_t gid = 0, egid = 0, sgid = 0, fsgid = 0;
  std::vector<uint32_t> groups;
  uint64_t cap_inh = 0, cap_prm = 0, cap_eff = 0, cap_bnd = 0, cap_amb = 0;
  uint32_t umask = 022;
  uint32_t personality = 0;
  int32_t exit_signal = 17;  // signal sent to the parent on exit (SIGCHLD normally)
  int32_t pdeath_signal = 0;
  std::string comm, exe, cwd, root;
  // mm fields, as prctl(PR_SET_MM_MAP) takes them
  uint64_t start_code = 0, end_code = 0, start_data = 0, end_data = 0;
  uint64_t start_brk = 0, brk = 0, start_stack = 0;
  uint64_t arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
  std::vector<uint64_t> auxv;
  std::vector<uint64_t> rlimits;  // (cur, max) pairs by RLIMIT_*; empty when not readable
  std::vector<uint64_t> itimers;  // ITIMER_REAL, _VIRTUAL, _PROF: interval s, us, value s, us
  uint64_t mem_owner = 0;         // page-store owner of this address space
  int32_t exit_status = 0;        // zombies: the wait status their parent will collect
  uint32_t securebits = 0;        // PR_GET_SECUREBITS (keep-caps, no-setuid-fixup, ...)
  int32_t oom_score_adj = 0;      // /proc/PID/oom_score_adj
  uint32_t loginuid = 0xffffffff; // /proc/PID/loginuid (4294967295: never set)
  uint32_t thp_disable = 0;       // PR_GET_THP_DISABLE
  uint32_t memory_merge = 0;      // PR_GET_MEMORY_MERGE (KSM for every mapping)
  uint32_t mdwe = 0;              // PR_GET_MDWE (memory-deny-write-execute flags)
  uint32_t membarrier = 0;        // MEMBARRIER_CMD_GET_REGISTRATIONS: registered commands
  uint32_t mlock_future = 0;      // mlockall() flags in force for new mappings (MCL_FUTURE|MCL_ONFAULT)
  int32_t stop_signal = 0;        // stopped by job control with this signal (0: running)
  // Time namespace the process made for its children (unshare(CLONE_NEWTIME)): clock offsets.
  int64_t timens_monotonic_ns = 0, timens_boottime_ns = 0;
  // Working and root directories: their mode and owner, for one removed while in use (made
  // again, entered, removed again at restore).
  uint32_t cwd_mode = 0, cwd_uid = 0, cwd_gid = 0;
  uint32_t root_mode = 0, root_uid = 0, root_gid = 0;
  uint32_t coredump_filter = 0x33;  // /proc/PID/coredump_filter
  int32_t autogroup_nice = 0;       // /proc/PID/autogroup: the nice of its session's group
  uint32_t futex_slots = 0;         // PR_FUTEX_HASH_GET_SLOTS (0: the global hash)
  // Its controlling terminal when that is a terminal outside the tree (a user's shell: dumped
  // with --shell-job): the tty_nr of /proc/PID/stat (0: none, or a pty of the tree).
  uint64_t tty = 0;
  int32_t tty_fg = 0;  // ... and whether its process group was that terminal's foreground (1)
};

enum ProcessFlags : uint32_t {
  kProcessRoot = 1u << 0,         // the root of the dumped tree
  kProcessSubreaper = 1u << 1,    // PR_SET_CHILD_SUBREAPER
  kProcessNoNewPrivs = 1u << 2,
  kProcessDumpableOff = 1u << 3,  // PR_SET_DUMPABLE 0
  kProcessZombie = 1u << 4,       // exited, not yet reaped by its parent: exit_status holds why
  kProcessSharesFiles = 1u << 5,  // shares its fd table with its parent (clone CLONE_FILES)
  kProcessSharesFs = 1u << 6,     // shares cwd, root and umask with its parent (clone CLONE_FS)
  kProcessTimeNs = 1u << 7,       // made a time namespace for its children (timens_* offsets)
  kProcessDumpableSuid = 1u << 8, // PR_SET_DUMPABLE 2 (suid_dumpable)
  kProcessCwdDeleted = 1u << 9,   // its working directory was removed
  kProcessRootDeleted = 1u << 10, // its root directory was removed
};

// One row per thread (the main thread included).
struct ThreadRecord {
  int32_t pid = 0, tid = 0;
  std::array<uint64_t, 27> regs{};  // struct user_regs_struct, syscall already rewound for restart
  int32_t restart = 0;  // the -ERESTART* code of the syscall the thread was in (regs rewound), or 0
  std::vector<uint8_t> xstate;      // NT_X86_XSTATE
  uint64_t sigmask = 0;
  uint64_t rseq_ptr = 0;
  uint32_t rseq_len = 0, rseq_sig = 0;
  uint64_t clear_tid = 0;  // set_tid_address()
  uint64_t altstack_sp = 0, altstack_size = 0;
  int32_t altstack_flags = 0;
  std::string comm;
  uint64_t robust_list = 0, robust_len = 0;  // set_robust_list(); glibc sets one per thread
  // sched_getattr(): policy (with SCHED_RESET_ON_FORK as sched_flags bit), nice, priority,
  // deadline parameters and utilization clamps.
  uint32_t sched_policy = 0;
  uint64_t sched_flags = 0;
  int32_t sched_nice = 0;
  uint32_t sched_priority = 0;
  uint64_t sched_runtime = 0, sched_deadline = 0, sched_period = 0;
  uint32_t sched_util_min = 0, sched_util_max = 0;
  std::vector<uint64_t> affinity;  // CPU mask, 64 CPUs per word
  uint64_t timerslack_ns = 0;      // PR_GET_TIMERSLACK
  int32_t ioprio = 0;              // ioprio_get(IOPRIO_WHO_PROCESS, tid)
  uint32_t seccomp_mode = 0;       // 0 none, 1 strict, 2 filter (filters: the seccomp table)
  uint32_t no_new_privs = 0;
  uint32_t tsc = 0;                // PR_GET_TSC (PR_TSC_ENABLE/PR_TSC_SIGSEGV)
  int32_t mce_kill = 0;            // PR_MCE_KILL_GET
  uint32_t io_flusher = 0;         // PR_GET_IO_FLUSHER
  // PR_GET_SPECULATION_CTRL of store bypass, indirect branch and L1D flush, as the kernel says
  int32_t spec_store_bypass = 0, spec_indirect_branch = 0, spec_l1d_flush = 0;
  int32_t mempolicy = 0;              // get_mempolicy(): mode with its MPOL_F_* flags
  std::vector<uint64_t> mempolicy_nodes;
  uint32_t cpuid_faulting = 0;        // arch_prctl(ARCH_GET_CPUID) == 0
};

// One row per seccomp filter of a thread, oldest first (index 0 was installed first).
struct SeccompRecord {
  int32_t pid = 0, tid = 0;
  uint32_t index = 0;
  uint64_t flags = 0;          // PTRACE_SECCOMP_GET_METADATA flags (SECCOMP_FILTER_FLAG_LOG)
  std::vector<uint8_t> prog;   // struct sock_filter[], as PTRACE_SECCOMP_GET_FILTER gives it
};

// One row per POSIX timer (timer_create) of a process.
struct TimerRecord {
  int32_t pid = 0;
  int32_t id = 0;              // the timer_t the program holds
  int32_t clock = 0;           // clockid_t (CPU clocks of other tasks are refused)
  int32_t notify = 0;          // SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID
  int32_t signo = 0;
  int32_t notify_tid = 0;      // SIGEV_THREAD_ID target
  uint64_t sigval = 0;         // sigev_value
  int64_t interval_ns = 0, value_ns = 0;  // timer_gettime(); value 0: disarmed
  int32_t overrun = 0;         // timer_getoverrun()
};

enum class LockKind : uint32_t { flock = 0, posix = 1, ofd = 2, lease = 3 };

enum class SocketState : uint32_t {
  unconnected = 0,  // made, maybe bound, not listening or connected
  listening = 1,
  connected = 2,    // (datagram: connected to a peer address)
  closed_peer = 3,  // connected once; its peer is gone
};

// One row per file lock or lease held by the tree (/proc/PID/fdinfo "lock:" lines).
struct LockRecord {
  int32_t pid = 0;         // the process that takes it again (POSIX locks: their owner)
  int32_t fd = 0;          // through this descriptor of that process
  int64_t file_id = 0;     // the open file description (flock, OFD locks and leases live on it)
  uint32_t kind = 0;       // LockKind
  int32_t type = 0;        // F_RDLCK / F_WRLCK (leases: the lease type held)
  int64_t start = 0, len = 0;  // byte range (len 0: to the end of the file)
  uint32_t breaking = 0;   // leases: a break was in progress (the holder was told to give it up)
};

// One row per AIO context (io_setup) of a process: its ring is the "/[aio]" mapping.
struct AioRecord {
  int32_t pid = 0;
  uint64_t ring = 0;       // the aio_context_t: the ring's address
  uint64_t size = 0;       // bytes mapped
  uint32_t nr_events = 0;  // the ring's capacity (struct aio_ring nr)
  uint32_t head = 0, tail = 0;
};

// Guard regions (MADV_GUARD_INSTALL): pages that fault on any access.
struct GuardRecord {
  int32_t pid = 0;
  uint64_t addr = 0, npages = 0;
};

// One row per installed signal disposition that is not the default.
struct SigactionRecord {
  int32_t pid = 0, signo = 0;
  uint64_t handler = 0, flags = 0, restorer = 0, mask = 0;
};

// One row per queued signal (tid 0: the process-wide queue).
struct SignalRecord {
  int32_t pid = 0, tid = 0;
  std::vector<uint8_t> siginfo;  // 128 bytes of siginfo_t
};

enum class VmaKind : uint32_t {
  anon_private = 0,  // heap, stacks, anonymous private mappings
  anon_shared = 1,   // MAP_SHARED|MAP_ANONYMOUS (shmem "/dev/zero (deleted)")
  file_private = 2,  // a file mapped MAP_PRIVATE: only pages that differ from the file are saved
  file_shared = 3,   // a file mapped MAP_SHARED: contents stay in the file
  memfd = 4,         // shmem/memfd/deleted file, contents saved under the file's owner
  vdso = 5,          // [vdso], [vvar], [vvar_vclock]: moved, not saved
  vsyscall = 6,      // fixed by the kernel; nothing to do
  aio = 7,           // the ring of an AIO context (io_setup): made again by io_setup, moved here
  sysv_shm = 8,      // an attach of a System V shared memory segment (owner: the segment's row
                     // of the sysv table; pgoff: offset in the segment)
};

struct VmaRecord {
  int32_t pid = 0;
  uint64_t start = 0, end = 0, pgoff = 0;
  uint32_t prot = 0;     // PROT_*
  uint32_t flags = 0;    // MAP_SHARED / MAP_PRIVATE / MAP_GROWSDOWN
  uint32_t kind = 0;     // VmaKind
  uint64_t vmflags = 0;  // VmFlag bits: every flag smaps reported for it
  int64_t file_id = -1;  // row of the files table for file-backed mappings
  uint64_t owner = 0;    // page-store owner of its pages (the process or the shared object)
  std::string name;      // path or [heap], [stack], [vdso] ...
  int32_t mempolicy = -1;  // its own NUMA policy (mbind), with MPOL_F_* flags; -1: the task's
  std::vector<uint64_t> mempolicy_nodes;
};

// The VmFlags of /proc/PID/smaps, one bit each, in this order: bit i is kVmFlagNames[i]. The
// meaning of each and whether crest restores it is in core/audit.cpp.
inline constexpr const char* kVmFlagNames[] = {
    "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "pf", "lo", "io", "sr", "rr",
    "dc", "de", "ac", "nr", "ht", "sf", "ar", "wf", "dd", "sd", "mm", "hg", "nh", "mg",
    "um", "uw", "ss", "sl", "lf", "dp", "gu", "bt", "mt", "ui"};
inline constexpr int kVmFlagCount = sizeof(kVmFlagNames) / sizeof(kVmFlagNames[0]);
// Bit of a mnemonic; -1 if unknown.
constexpr int vmflag_bit(std::string_view name) {
  for (int i = 0; i < kVmFlagCount; ++i)
    if (name == kVmFlagNames[i]) return i;
  return -1;
}
constexpr uint64_t vmflag(std::string_view name) {
  int b = vmflag_bit(name);
  return b < 0 ? 0 : 1ull << b;
}

enum class FileKind : uint32_t {
  regular = 0,
  directory = 1,
  pipe = 2,
  fifo = 3,
  memfd = 4,
  unlinked = 5,  // a regular file unlinked while open: contents saved
  chardev = 6,   // /dev/null, /dev/zero, /dev/urandom ...
  inherited = 7, // stdio from outside the tree: reconnected to what the restorer is given
  shmem = 8,     // anonymous shared memory object (no fd; only mappings refer to it)
  proc = 9,      // a file of /proc/<pid>/ of a task of the tree: reopened for the restored task
  path = 10,     // an O_PATH descriptor (of any kind of file)
  eventfd = 11,  // count: the counter; kind_flags: EFD_SEMAPHORE
  timerfd = 12,  // clock, interval_ns, value_ns: time left (the absolute deadline for a
                 // TFD_TIMER_ABSTIME timer on CLOCK_REALTIME[_ALARM]); count: expirations not
                 // read; kind_flags: settime flags
  signalfd = 13, // sigmask
  epoll = 14,    // its targets: the epoll table
  inotify = 15,  // its watches: the inotify table
  pidfd = 16,    // proc_pid: the process (as the tree sees it); kind_flags: PIDFD_THREAD
  unix_socket = 17,  // the sockets table (and socket_queues for queued messages)
  tcp_socket = 18,   // the sockets table; connected: the tcp table
  udp_socket = 19,   // the sockets table (and socket_queues for queued datagrams)
  netlink_socket = 20,  // the sockets table: port id (name), destination (peer_name), nl_groups
  mqueue = 21,   // POSIX message queue: path its name ("/q"), count mq_maxmsg, size mq_msgsize,
                 // ino the queue (descriptions of one queue share it); messages: mq_messages
  pty_master = 22,   // /dev/ptmx: pty_id names its pair in the ptys table
  pty_slave = 23,    // /dev/pts/N of a pair whose master is in the tree: pty_id
  dev_tty = 24,      // /dev/tty: opened again by a holder once it has its controlling terminal
  shm_file = 25,     // a named file on tmpfs mapped shared by the tree (/dev/shm/...): contents
                     // saved (contents_owner); made again at its path, with its mode and owner
};

// One row per open file description (or shared memory object), however many fds refer to it.
struct FileRecord {
  int64_t id = 0;
  uint32_t kind = 0;   // FileKind
  std::string path;
  uint32_t flags = 0;  // open flags (O_ACCMODE | O_APPEND | O_NONBLOCK ...)
  uint64_t pos = 0;
  uint64_t dev = 0, ino = 0, rdev = 0;
  uint32_t mode = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t pipe_id = -1;         // row of the pipes table for pipes and FIFOs
  uint64_t contents_owner = 0;  // page-store owner of saved contents (memfd, unlinked, shmem)
  int32_t inherited_fd = -1;    // for inherited stdio: which descriptor of the restorer to use
  uint32_t seals = 0;           // F_GET_SEALS of memfds
  uint32_t uid = 0, gid = 0;    // owner of the file (files recreated at restore get it back)
  uint32_t deleted = 0;         // the path was removed while open: recreated, opened, removed
  int32_t owner_type = 0;       // F_GETOWN_EX: F_OWNER_TID / F_OWNER_PID / F_OWNER_PGRP
  int32_t owner_pid = 0;        // ... as the tree sees it (0: no owner)
  int32_t signum = 0;           // F_GETSIG
  int32_t proc_pid = 0;         // proc kind: the task whose /proc directory it is in; pidfd: its task
  // Event descriptors (see FileKind): a counter, a clock and times, a signal mask, flags.
  uint64_t count = 0;
  int32_t clock = 0;
  int64_t value_ns = 0, interval_ns = 0;
  uint64_t sigmask = 0;
  uint32_t kind_flags = 0;
  int64_t pty_id = -1;          // pty kinds: row of the ptys table
  // 1: no process holds it, only messages queued to Unix sockets (SCM_RIGHTS, socket_queues.fds):
  // made again and sent again with them, never handed to a task.
  uint32_t in_flight = 0;
};

// One row per pseudo-terminal pair of the tree (master and slave both held by its tasks).
struct PtyRecord {
  int64_t id = 0;
  uint32_t index = 0;           // TIOCGPTN: N of /dev/pts/N
  // termios2 of the pair (TCGETS2): flags, line discipline, control characters, speeds.
  uint32_t iflag = 0, oflag = 0, cflag = 0, lflag = 0;
  uint32_t line = 0;
  std::vector<uint8_t> cc;
  uint32_t ispeed = 0, ospeed = 0;
  uint32_t rows = 0, cols = 0, xpixel = 0, ypixel = 0;  // TIOCGWINSZ
  uint32_t packet = 0;          // TIOCGPKT
  uint32_t locked = 0;          // TIOCGPTLCK
  uint32_t master_excl = 0, slave_excl = 0;  // TIOCGEXCL of each side
  uint32_t slave_uid = 0, slave_gid = 0, slave_mode = 0;  // of /dev/pts/N
  std::vector<uint8_t> to_master;  // output written to the slave, not read from the master yet
  // Controlling terminal of a session of the tree: its session id and foreground process
  // group as the tree sees them (0: it is nobody's controlling terminal).
  int32_t sid = 0, pgrp = 0;
};
struct EpollRecord {
  int64_t file_id = 0;       // the epoll's description
  int32_t tfd = 0;           // the descriptor number it was registered with
  int64_t target_id = 0;     // the target's description
  uint32_t events = 0;       // with EPOLLET / EPOLLONESHOT / EPOLLEXCLUSIVE / EPOLLWAKEUP
  uint64_t data = 0;
};

// One row per watch of an inotify instance.
struct InotifyRecord {
  int64_t file_id = 0;
  int32_t wd = 0;
  uint32_t mask = 0;
  std::string path;          // where the watched inode was found (by its file handle)
  uint64_t dev = 0, ino = 0;
};

// One row per socket (its description is the files row).
struct SocketRecord {
  int64_t file_id = 0;
  int32_t family = 0, type = 0, protocol = 0;
  uint32_t state = 0;            // SocketState
  std::vector<uint8_t> name;     // bound address (sun_path bytes; abstract names start with 0)
  std::vector<uint8_t> peer_name;
  uint64_t ino = 0, peer_ino = 0;  // this socket's inode and its peer's (unix: sock_diag)
  int64_t peer_id = -1;          // the peer's files row, when the peer is in the tree
  uint32_t backlog = 0;          // listening: listen() backlog
  uint32_t shutdown = 0;         // SHUT_RD (1) | SHUT_WR (2) as bits (the kernel's sk_shutdown)
  std::vector<int64_t> options;  // (level, name, value) triples of socket options
  // SO_PEERCRED: who made the connection (socketpair, connect, listen); pid as the tree sees it
  // (0: none), effective uid and gid, SO_PEERGROUPS.
  int32_t cred_pid = 0;
  uint32_t cred_uid = 0, cred_gid = 0;
  std::vector<uint32_t> cred_groups;
  // A name on the file system: the socket file's inode when dumped, whether the path still led
  // to it then (else the name is kept, the file is not made again), and its mode and owner.
  uint64_t vfs_dev = 0, vfs_ino = 0;
  uint32_t reachable = 0;
  uint32_t path_mode = 0, path_uid = 0, path_gid = 0;
  // Listening: the connections waiting to be accepted, in order, as the files rows of their
  // clients (the listener's sock_diag names them).
  std::vector<int64_t> waiting;
  std::string congestion;        // TCP_CONGESTION
  std::vector<uint32_t> nl_groups;  // netlink: every multicast group it is in (1-based)
  // Unix, --ext-unix-sk: 1 if its peer is a socket outside the tree, reached again at restore
  // by its name (peer_name): a datagram socket connects to it again, a stream or seqpacket
  // socket makes a new connection to the listener (core/fds/unix_outside.h).
  uint32_t external = 0;
};

// One row per message of a POSIX message queue, in the order mq_receive gives them (highest
// priority first, oldest first within a priority).
struct MqMessageRecord {
  uint64_t ino = 0;      // the queue (files.ino of its descriptions)
  uint32_t seq = 0;
  uint32_t priority = 0;
  std::vector<uint8_t> data;
};

// One row per TCP connection: what TCP_REPAIR reads and sets again.
struct TcpRecord {
  int64_t file_id = 0;
  uint32_t tcp_state = 0;           // TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_CLOSE_WAIT ...
  uint32_t snd_seq = 0;             // TCP_QUEUE_SEQ of the send queue (write_seq, with a FIN)
  uint32_t rcv_seq = 0;             // TCP_QUEUE_SEQ of the receive queue (rcv_nxt, with a FIN)
  uint32_t fin_sent = 0, fin_received = 0;
  uint32_t mss = 0, snd_wscale = 0, rcv_wscale = 0;
  uint32_t options = 0;             // tcpi_options: TCPI_OPT_TIMESTAMPS, SACK, WSCALE
  uint32_t timestamp = 0;           // TCP_TIMESTAMP
  uint32_t snd_wl1 = 0, snd_wnd = 0, max_window = 0, rcv_wnd = 0, rcv_wup = 0;  // TCP_REPAIR_WINDOW
  uint32_t unsent = 0;              // bytes at the end of the send queue never sent
  std::vector<uint8_t> send_queue;  // sent but not acknowledged, then never sent
  std::vector<uint8_t> recv_queue;  // received, not read
  uint32_t external = 0;            // 1: its peer is outside the tree (--tcp-established)
};

// One row per message queued to a socket, in order (stream data: one row per run of bytes
// sent with the same credentials).
struct SocketQueueRecord {
  int64_t file_id = 0;           // the socket whose receive queue holds it
  uint32_t seq = 0;
  std::vector<uint8_t> data;
  std::vector<uint8_t> sender;   // datagram: the sender's address
  int32_t cred_pid = 0;          // SCM_CREDENTIALS it carries (pid as the tree sees it; 0: none)
  uint32_t cred_uid = 0, cred_gid = 0;
  // UDP: the address it was sent to, and its IP header's TOS / traffic class and TTL / hop
  // limit (-1: not known).
  std::vector<uint8_t> dest;
  int32_t tos = -1, ttl = -1;
  // Unix: the descriptors it carries (SCM_RIGHTS), in order, as files rows (one row however many
  // times the same open file description is carried).
  std::vector<int64_t> fds;
};

struct FdRecord {
  int32_t pid = 0, fd = 0;
  int64_t file_id = 0;
  uint32_t fd_flags = 0;  // FD_CLOEXEC
};

struct PipeRecord {
  int64_t id = 0;
  uint64_t ino = 0;
  uint32_t capacity = 0;      // F_GETPIPE_SZ
  std::vector<uint8_t> data;  // bytes buffered at dump time, in order
};

// System V IPC objects of the job (core/sysv_ipc.cpp), in its IPC namespace.
enum class SysvKind : uint32_t { shm = 0, sem = 1, msg = 2 };

// One row per System V shared memory segment, semaphore set or message queue.
struct SysvRecord {
  uint32_t kind = 0;   // SysvKind
  int32_t id = 0;      // shmid / semid / msqid: the same after restore
  int32_t key = 0;     // IPC key; a segment marked for destruction: the key it was made with
  uint32_t mode = 0;   // permission bits; segments also SHM_DEST (01000) and SHM_LOCKED (02000)
  uint32_t uid = 0, gid = 0, cuid = 0, cgid = 0;
  uint64_t size = 0;   // shm: bytes; sem: semaphores in the set; msg: qbytes (msg_qbytes)
  uint64_t owner = 0;  // shm: page-store owner of its contents (offsets in the segment)
  std::vector<int64_t> values;  // sem: every semval, in order
  std::vector<int64_t> pids;    // sem: sempid of each (pid as the tree sees it; 0: none)
};

// One row per message queued on a System V message queue, in queue order.
struct SysvMessageRecord {
  int32_t id = 0;      // the queue's msqid
  uint64_t seq = 0;    // position in the queue
  int64_t type = 0;    // mtype
  std::vector<uint8_t> data;
};

// The IPC namespace's limits (/proc/sys/kernel: shmmax, shmall, shmmni, shm_rmid_forced, msgmax,
// msgmnb, msgmni, sem), set again in the namespace made at restore.
struct SysvLimitRecord {
  std::string name;
  std::string value;
};

// Page-store owners: what each owner id's address space means.
enum class OwnerKind : uint32_t { process = 0, shared_memory = 1, file_contents = 2 };
struct OwnerRecord {
  uint64_t owner = 0;
  uint32_t kind = 0;  // OwnerKind
  int32_t pid = 0;    // for process owners
  int64_t file_id = -1;
};

// ---- Pages -----------------------------------------------------------------------------------

enum class PageKind : uint32_t {
  data = 0,        // bytes stored at row `pos` of /pages/data in the file `depth` steps up the chain
  zero = 1,        // a present page of zeros; recorded, not stored
  cow_parent = 2,  // shared copy-on-write with the parent process: restored by inheritance
};

// The page index: for every present page of every owner, where its bytes are. Sorted by
// (owner, addr); runs never overlap. A page absent from the newest index is absent, whatever an
// ancestor held.
struct PageRun {
  uint64_t owner = 0;
  uint64_t addr = 0;
  uint64_t npages = 0;
  uint32_t kind = 0;   // PageKind
  uint32_t depth = 0;  // 0 = this file, 1 = parent, ...
  uint64_t pos = 0;    // first row in /pages/data (data runs); rows are consecutive
};

// How a chunk's bytes are stored (ChunkRecord::compressed). The writer picks one per chunk.
enum class ChunkEncoding : uint32_t {
  raw = 0,       // as is: compression did not shrink it
  lz4 = 1,       // the LZ4 filter only
  shuffle_lz4 = 2,  // byte-shuffled (8-byte elements), then LZ4
};

// One row per 1 MiB chunk of /pages/data.
struct ChunkRecord {
  uint64_t checksum = 0;  // XXH3-64 of the uncompressed chunk
  uint32_t stored_bytes = 0;
  uint32_t npages = 0;      // rows in use; the rest of the chunk is zero padding
  uint32_t compressed = 0;  // a ChunkEncoding

  ChunkEncoding encoding() const { return static_cast<ChunkEncoding>(compressed); }
};

// One row per row of /pages/data: XXH3-128 of the page (zero for padding rows). The next
// checkpoint compares page contents with these to store only what changed.
struct PageHash {
  uint64_t lo = 0, hi = 0;
};

// Everything a checkpoint holds except the page bytes.
struct CheckpointMeta {
  ImageInfo info;
  Stats stats;
  std::vector<ProcessRecord> processes;
  std::vector<ThreadRecord> threads;
  std::vector<SigactionRecord> sigactions;
  std::vector<SignalRecord> signals;
  std::vector<VmaRecord> vmas;
  std::vector<FileRecord> files;
  std::vector<FdRecord> fds;
  std::vector<PipeRecord> pipes;
  std::vector<OwnerRecord> owners;
  std::vector<SeccompRecord> seccomp;
  std::vector<TimerRecord> timers;
  std::vector<LockRecord> locks;
  std::vector<AioRecord> aio;
  std::vector<GuardRecord> guards;
  std::vector<EpollRecord> epoll;
  std::vector<InotifyRecord> inotify;
  std::vector<SocketRecord> sockets;
  std::vector<SocketQueueRecord> socket_queues;
  std::vector<TcpRecord> tcp;
  std::vector<MqMessageRecord> mq_messages;
  std::vector<SysvRecord> sysv;
  std::vector<SysvMessageRecord> sysv_messages;
  std::vector<SysvLimitRecord> sysv_limits;
  std::vector<PtyRecord> ptys;
};

// ---- Field lists -----------------------------------------------------------------------------
// Table<T>::name is the dataset path; Table<T>::fields() lists (name, member pointer) pairs. The
// HDF5 container builds compound types from these, and the JSON writer of `crest show` uses them.

template <class T, class M>
struct Field {
  const char* name;
  M T::*member;
};
template <class T, class M>
constexpr Field<T, M> field(const char* name, M T::*member) {
  return {name, member};
}

template <class T>
struct Table;

#define CREST_F(T, m) ::crest::schema::field(#m, &T::m)

template <>
struct Table<ProcessRecord> {
  static constexpr const char* name = "processes";
  static constexpr auto fields() {
    using T = ProcessRecord;
    return std::make_tuple(
        CREST_F(T, pid), CREST_F(T, ppid), CREST_F(T, pgid), CREST_F(T, sid), CREST_F(T, flags),
        CREST_F(T, uid), CREST_F(T, euid), CREST_F(T, suid), CREST_F(T, fsuid), CREST_F(T, gid),
        CREST_F(T, egid), CREST_F(T, sgid), CREST_F(T, fsgid), CREST_F(T, groups),
        CREST_F(T, cap_inh), CREST_F(T, cap_prm), CREST_F(T, cap_eff), CREST_F(T, cap_bnd),
        CREST_F(T, cap_amb), CREST_F(T, umask), CREST_F(T, personality), CREST_F(T, exit_signal),
        CREST_F(T, pdeath_signal), CREST_F(T, comm), CREST_F(T, exe), CREST_F(T, cwd),
        CREST_F(T, root), CREST_F(T, start_code), CREST_F(T, end_code), CREST_F(T, start_data),
        CREST_F(T, end_data), CREST_F(T, start_brk), CREST_F(T, brk), CREST_F(T, start_stack),
        CREST_F(T, arg_start), CREST_F(T, arg_end), CREST_F(T, env_start), CREST_F(T, env_end),
        CREST_F(T, auxv), CREST_F(T, rlimits), CREST_F(T, itimers), CREST_F(T, mem_owner),
        CREST_F(T, exit_status), CREST_F(T, securebits), CREST_F(T, oom_score_adj),
        CREST_F(T, loginuid), CREST_F(T, thp_disable), CREST_F(T, memory_merge), CREST_F(T, mdwe),
        CREST_F(T, membarrier), CREST_F(T, mlock_future), CREST_F(T, stop_signal),
        CREST_F(T, timens_monotonic_ns), CREST_F(T, timens_boottime_ns), CREST_F(T, cwd_mode),
        CREST_F(T, cwd_uid), CREST_F(T, cwd_gid), CREST_F(T, root_mode), CREST_F(T, root_uid),
        CREST_F(T, root_gid), CREST_F(T, coredump_filter), CREST_F(T, autogroup_nice),
        CREST_F(T, futex_slots), CREST_F(T, tty), CREST_F(T, tty_fg));
  }
};

template <>
struct Table<ThreadRecord> {
  static constexpr const char* name = "threads";
  static constexpr auto fields() {
    using T = ThreadRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, tid), CREST_F(T, regs), CREST_F(T, restart),
                           CREST_F(T, xstate),
                           CREST_F(T, sigmask), CREST_F(T, rseq_ptr), CREST_F(T, rseq_len),
                           CREST_F(T, rseq_sig), CREST_F(T, clear_tid), CREST_F(T, altstack_sp),
                           CREST_F(T, altstack_size), CREST_F(T, altstack_flags),
                           CREST_F(T, comm), CREST_F(T, robust_list), CREST_F(T, robust_len),
                           CREST_F(T, sched_policy), CREST_F(T, sched_flags), CREST_F(T, sched_nice),
                           CREST_F(T, sched_priority), CREST_F(T, sched_runtime),
                           CREST_F(T, sched_deadline), CREST_F(T, sched_period),
                           CREST_F(T, sched_util_min), CREST_F(T, sched_util_max),
                           CREST_F(T, affinity), CREST_F(T, timerslack_ns), CREST_F(T, ioprio),
                           CREST_F(T, seccomp_mode), CREST_F(T, no_new_privs), CREST_F(T, tsc),
                           CREST_F(T, mce_kill), CREST_F(T, io_flusher),
                           CREST_F(T, spec_store_bypass), CREST_F(T, spec_indirect_branch),
                           CREST_F(T, spec_l1d_flush), CREST_F(T, mempolicy),
                           CREST_F(T, mempolicy_nodes), CREST_F(T, cpuid_faulting));
  }
};

template <>
struct Table<SigactionRecord> {
  static constexpr const char* name = "sigactions";
  static constexpr auto fields() {
    using T = SigactionRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, signo), CREST_F(T, handler),
                           CREST_F(T, flags), CREST_F(T, restorer), CREST_F(T, mask));
  }
};

template <>
struct Table<SignalRecord> {
  static constexpr const char* name = "signals";
  static constexpr auto fields() {
    using T = SignalRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, tid), CREST_F(T, siginfo));
  }
};

template <>
struct Table<VmaRecord> {
  static constexpr const char* name = "vmas";
  static constexpr auto fields() {
    using T = VmaRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, start), CREST_F(T, end), CREST_F(T, pgoff),
                           CREST_F(T, prot), CREST_F(T, flags), CREST_F(T, kind),
                           CREST_F(T, vmflags), CREST_F(T, file_id), CREST_F(T, owner),
                           CREST_F(T, name), CREST_F(T, mempolicy), CREST_F(T, mempolicy_nodes));
  }
};

template <>
struct Table<FileRecord> {
  static constexpr const char* name = "files";
  static constexpr auto fields() {
    using T = FileRecord;
    return std::make_tuple(CREST_F(T, id), CREST_F(T, kind), CREST_F(T, path), CREST_F(T, flags),
                           CREST_F(T, pos), CREST_F(T, dev), CREST_F(T, ino), CREST_F(T, rdev),
                           CREST_F(T, mode), CREST_F(T, size), CREST_F(T, mtime_ns),
                           CREST_F(T, pipe_id), CREST_F(T, contents_owner),
                           CREST_F(T, inherited_fd), CREST_F(T, seals), CREST_F(T, uid),
                           CREST_F(T, gid), CREST_F(T, deleted), CREST_F(T, owner_type),
                           CREST_F(T, owner_pid), CREST_F(T, signum), CREST_F(T, proc_pid),
                           CREST_F(T, count), CREST_F(T, clock), CREST_F(T, value_ns),
                           CREST_F(T, interval_ns), CREST_F(T, sigmask), CREST_F(T, kind_flags),
                           CREST_F(T, pty_id), CREST_F(T, in_flight));
  }
};

template <>
struct Table<FdRecord> {
  static constexpr const char* name = "fds";
  static constexpr auto fields() {
    using T = FdRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, fd), CREST_F(T, file_id),
                           CREST_F(T, fd_flags));
  }
};

template <>
struct Table<PipeRecord> {
  static constexpr const char* name = "pipes";
  static constexpr auto fields() {
    using T = PipeRecord;
    return std::make_tuple(CREST_F(T, id), CREST_F(T, ino), CREST_F(T, capacity),
                           CREST_F(T, data));
  }
};

template <>
struct Table<OwnerRecord> {
  static constexpr const char* name = "owners";
  static constexpr auto fields() {
    using T = OwnerRecord;
    return std::make_tuple(CREST_F(T, owner), CREST_F(T, kind), CREST_F(T, pid),
                           CREST_F(T, file_id));
  }
};

template <>
struct Table<SeccompRecord> {
  static constexpr const char* name = "seccomp";
  static constexpr auto fields() {
    using T = SeccompRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, tid), CREST_F(T, index), CREST_F(T, flags),
                           CREST_F(T, prog));
  }
};

template <>
struct Table<TimerRecord> {
  static constexpr const char* name = "timers";
  static constexpr auto fields() {
    using T = TimerRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, id), CREST_F(T, clock), CREST_F(T, notify),
                           CREST_F(T, signo), CREST_F(T, notify_tid), CREST_F(T, sigval),
                           CREST_F(T, interval_ns), CREST_F(T, value_ns), CREST_F(T, overrun));
  }
};

template <>
struct Table<LockRecord> {
  static constexpr const char* name = "locks";
  static constexpr auto fields() {
    using T = LockRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, fd), CREST_F(T, file_id), CREST_F(T, kind),
                           CREST_F(T, type), CREST_F(T, start), CREST_F(T, len),
                           CREST_F(T, breaking));
  }
};

template <>
struct Table<AioRecord> {
  static constexpr const char* name = "aio";
  static constexpr auto fields() {
    using T = AioRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, ring), CREST_F(T, size),
                           CREST_F(T, nr_events), CREST_F(T, head), CREST_F(T, tail));
  }
};

template <>
struct Table<GuardRecord> {
  static constexpr const char* name = "guards";
  static constexpr auto fields() {
    using T = GuardRecord;
    return std::make_tuple(CREST_F(T, pid), CREST_F(T, addr), CREST_F(T, npages));
  }
};

template <>
struct Table<EpollRecord> {
  static constexpr const char* name = "epoll";
  static constexpr auto fields() {
    using T = EpollRecord;
    return std::make_tuple(CREST_F(T, file_id), CREST_F(T, tfd), CREST_F(T, target_id),
                           CREST_F(T, events), CREST_F(T, data));
  }
};

template <>
struct Table<InotifyRecord> {
  static constexpr const char* name = "inotify";
  static constexpr auto fields() {
    using T = InotifyRecord;
    return std::make_tuple(CREST_F(T, file_id), CREST_F(T, wd), CREST_F(T, mask), CREST_F(T, path),
                           CREST_F(T, dev), CREST_F(T, ino));
  }
};

template <>
struct Table<SocketRecord> {
  static constexpr const char* name = "sockets";
  static constexpr auto fields() {
    using T = SocketRecord;
    return std::make_tuple(CREST_F(T, file_id), CREST_F(T, family), CREST_F(T, type),
                           CREST_F(T, protocol), CREST_F(T, state), CREST_F(T, name),
                           CREST_F(T, peer_name), CREST_F(T, ino), CREST_F(T, peer_ino),
                           CREST_F(T, peer_id), CREST_F(T, backlog), CREST_F(T, shutdown),
                           CREST_F(T, options), CREST_F(T, cred_pid), CREST_F(T, cred_uid),
                           CREST_F(T, cred_gid), CREST_F(T, cred_groups), CREST_F(T, vfs_dev),
                           CREST_F(T, vfs_ino), CREST_F(T, reachable), CREST_F(T, path_mode),
                           CREST_F(T, path_uid), CREST_F(T, path_gid), CREST_F(T, waiting),
                           CREST_F(T, congestion), CREST_F(T, nl_groups), CREST_F(T, external));
  }
};

template <>
struct Table<MqMessageRecord> {
  static constexpr const char* name = "mq_messages";
  static constexpr auto fields() {
    using T = MqMessageRecord;
    return std::make_tuple(CREST_F(T, ino), CREST_F(T, seq), CREST_F(T, priority), CREST_F(T, data));
  }
};

template <>
struct Table<SocketQueueRecord> {
  static constexpr const char* name = "socket_queues";
  static constexpr auto fields() {
    using T = SocketQueueRecord;
    return std::make_tuple(CREST_F(T, file_id), CREST_F(T, seq), CREST_F(T, data),
                           CREST_F(T, sender), CREST_F(T, cred_pid), CREST_F(T, cred_uid),
                           CREST_F(T, cred_gid), CREST_F(T, dest), CREST_F(T, tos),
                           CREST_F(T, ttl), CREST_F(T, fds));
  }
};

template <>
struct Table<TcpRecord> {
  static constexpr const char* name = "tcp";
  static constexpr auto fields() {
    using T = TcpRecord;
    return std::make_tuple(CREST_F(T, file_id), CREST_F(T, tcp_state), CREST_F(T, snd_seq),
                           CREST_F(T, rcv_seq), CREST_F(T, fin_sent), CREST_F(T, fin_received),
                           CREST_F(T, mss), CREST_F(T, snd_wscale), CREST_F(T, rcv_wscale),
                           CREST_F(T, options), CREST_F(T, timestamp), CREST_F(T, snd_wl1),
                           CREST_F(T, snd_wnd), CREST_F(T, max_window), CREST_F(T, rcv_wnd),
                           CREST_F(T, rcv_wup), CREST_F(T, unsent), CREST_F(T, send_queue),
                           CREST_F(T, recv_queue), CREST_F(T, external));
  }
};

template <>
struct Table<PtyRecord> {
  static constexpr const char* name = "ptys";
  static constexpr auto fields() {
    using T = PtyRecord;
    return std::make_tuple(CREST_F(T, id), CREST_F(T, index), CREST_F(T, iflag), CREST_F(T, oflag),
                           CREST_F(T, cflag), CREST_F(T, lflag), CREST_F(T, line), CREST_F(T, cc),
                           CREST_F(T, ispeed), CREST_F(T, ospeed), CREST_F(T, rows),
                           CREST_F(T, cols), CREST_F(T, xpixel), CREST_F(T, ypixel),
                           CREST_F(T, packet), CREST_F(T, locked), CREST_F(T, master_excl),
                           CREST_F(T, slave_excl), CREST_F(T, slave_uid), CREST_F(T, slave_gid),
                           CREST_F(T, slave_mode), CREST_F(T, sid), CREST_F(T, pgrp),
                           CREST_F(T, to_master));
  }
};

template <>
struct Table<PageRun> {
  static constexpr const char* name = "pages/index";
  static constexpr auto fields() {
    using T = PageRun;
    return std::make_tuple(CREST_F(T, owner), CREST_F(T, addr), CREST_F(T, npages),
                           CREST_F(T, kind), CREST_F(T, depth), CREST_F(T, pos));
  }
};

template <>
struct Table<ChunkRecord> {
  static constexpr const char* name = "pages/chunks";
  static constexpr auto fields() {
    using T = ChunkRecord;
    return std::make_tuple(CREST_F(T, checksum), CREST_F(T, stored_bytes), CREST_F(T, npages),
                           CREST_F(T, compressed));
  }
};

template <>
struct Table<PageHash> {
  static constexpr const char* name = "pages/hashes";
  static constexpr auto fields() {
    using T = PageHash;
    return std::make_tuple(CREST_F(T, lo), CREST_F(T, hi));
  }
};

template <>
struct Table<SysvRecord> {
  static constexpr const char* name = "sysv";
  static constexpr auto fields() {
    using T = SysvRecord;
    return std::make_tuple(CREST_F(T, kind), CREST_F(T, id), CREST_F(T, key), CREST_F(T, mode),
                           CREST_F(T, uid), CREST_F(T, gid), CREST_F(T, cuid), CREST_F(T, cgid),
                           CREST_F(T, size), CREST_F(T, owner), CREST_F(T, values),
                           CREST_F(T, pids));
  }
};

template <>
struct Table<SysvMessageRecord> {
  static constexpr const char* name = "sysv_messages";
  static constexpr auto fields() {
    using T = SysvMessageRecord;
    return std::make_tuple(CREST_F(T, id), CREST_F(T, seq), CREST_F(T, type), CREST_F(T, data));
  }
};

template <>
struct Table<SysvLimitRecord> {
  static constexpr const char* name = "sysv_limits";
  static constexpr auto fields() {
    using T = SysvLimitRecord;
    return std::make_tuple(CREST_F(T, name), CREST_F(T, value));
  }
};

template <>
struct Table<ImageInfo> {  // root attributes, not a table; `complete` is written separately
  static constexpr auto fields() {
    using T = ImageInfo;
    return std::make_tuple(
        CREST_F(T, format), CREST_F(T, format_version), CREST_F(T, uuid), CREST_F(T, parent_uuid),
        CREST_F(T, parent_file), CREST_F(T, sequence), CREST_F(T, created_ns), CREST_F(T, host),
        CREST_F(T, kernel_release), CREST_F(T, kernel_build), CREST_F(T, machine),
        CREST_F(T, xsave_mask), CREST_F(T, crest_version), CREST_F(T, job_id),
        CREST_F(T, scheduler_job_id), CREST_F(T, root_pid), CREST_F(T, pid_namespace),
        CREST_F(T, ipc_namespace), CREST_F(T, tracker), CREST_F(T, mode), CREST_F(T, net_lock),
        CREST_F(T, ext_unix_sk));
  }
};

#undef CREST_F

// Applies f(table_vector) to every table of a CheckpointMeta, in file order.
template <class Meta, class F>
void for_each_table(Meta& meta, F&& f) {
  f(meta.processes);
  f(meta.threads);
  f(meta.sigactions);
  f(meta.signals);
  f(meta.vmas);
  f(meta.files);
  f(meta.fds);
  f(meta.pipes);
  f(meta.owners);
  f(meta.seccomp);
  f(meta.timers);
  f(meta.locks);
  f(meta.aio);
  f(meta.guards);
  f(meta.epoll);
  f(meta.inotify);
  f(meta.sockets);
  f(meta.socket_queues);
  f(meta.tcp);
  f(meta.mq_messages);
  f(meta.sysv);
  f(meta.sysv_messages);
  f(meta.sysv_limits);
  f(meta.ptys);
}

}  // namespace crest::schema
