// System V IPC: shared memory segments, semaphore sets and message queues. Dump and restore
// side by side.
//
// Which objects are the job's:
//   - a tree in an IPC namespace of its own (every process of the tree in the same one, not
//     crest's): every object of that namespace;
//   - a tree in crest's IPC namespace: the segments attached by a process of the tree or
//     created by one (cpid), the queues a process of the tree last sent to or received from
//     (lspid, lrpid), the semaphore sets where a process of the tree was the last to change a
//     semaphore (sempid), and any object a thread of the tree is blocked on (semop, semtimedop,
//     msgsnd, msgrcv). The dump's report names every object taken. Objects a process of the tree
//     uses only by id, without ever having touched them, are not seen (README: limitations).
// The objects of crest's namespace stay where they are after a dump (crest never removes an
// object of a namespace the job does not own).
//
// Restore: a job with System V objects (or that had an IPC namespace of its own) is restored
// into a fresh IPC namespace, made by crest before the root is created, so that ids can never
// clash with objects left in the host: each object is made again with its own id
// (/proc/sys/kernel/{shm,sem,msg}_next_id), key, creator's ids (cuid/cgid: made by a thread
// with that effective uid and gid), owner, mode, contents, values and messages; the
// namespace's limits are set as they were. Processes attach their segments again by an
// injected shmat at the recorded address (memory.cpp), then mprotect what was changed since.
//
// Dump reads: /proc/sysvipc/{shm,sem,msg} and the namespace's sysctls from a thread in the
// tree's IPC namespace; segment contents through an attach of crest's own (SHM_RDONLY), the
// pages present there (mincore) read with the other pages; semaphores by semctl(GETALL,
// GETPID); messages by msgrcv(MSG_COPY), which leaves them queued.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <exception>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include <xxhash.h>

#include "core/checkpoint.h"
#include "core/context.h"
#include "core/inject.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

#ifndef MSG_COPY
#define MSG_COPY 040000
#endif
#ifndef SHM_DEST
#define SHM_DEST 01000
#endif
#ifndef SHM_LOCKED
#define SHM_LOCKED 02000
#endif

namespace crest {
namespace {

using schema::SysvKind;
using schema::SysvRecord;

constexpr const char* kLimits[] = {"shmmax", "shmall",  "shmmni", "shm_rmid_forced",
                                   "msgmax", "msgmnb", "msgmni", "sem"};

std::string ipc_ns_of(const std::string& proc_dir) {
  try {
    return proc::readlink(proc_dir + "/ns/ipc");
  } catch (const Error&) {
    return "";
  }
}

// Runs fn in a thread of ours that has joined the IPC namespace `ns_fd` (-1: crest's own), so
// that /proc/sysvipc, the sysctls and every IPC call see that namespace. The thread's
// credentials and namespace die with it.
void in_ipc_namespace(int ns_fd, const std::function<void()>& fn) {
  std::exception_ptr error;
  std::thread t([&] {
    try {
      if (ns_fd >= 0 && ::setns(ns_fd, CLONE_NEWIPC) != 0)
        throw_errno("setns into the job's IPC namespace", errno, Errc::kernel);
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  });
  t.join();
  if (error) std::rethrow_exception(error);
}

// The rows of /proc/sysvipc/NAME as columns of numbers (perms are octal there).
std::vector<std::vector<long long>> sysvipc_rows(const char* name) {
  std::istringstream in(fs::read_file(std::string("/proc/sysvipc/") + name));
  std::string line;
  std::getline(in, line);  // header
  std::vector<std::vector<long long>> rows;
  while (std::getline(in, line)) {
    std::istringstream cols(line);
    std::vector<long long> row;
    std::string c;
    for (int i = 0; cols >> c; ++i) row.push_back(std::stoll(c, nullptr, i == 2 ? 8 : 10));
    if (!row.empty()) rows.push_back(std::move(row));
  }
  return rows;
}

std::string hex_key(int32_t key) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", static_cast<uint32_t>(key));
  return buf;
}

std::string object_name(const SysvRecord& r) {
  static const char* kinds[] = {"shared memory segment", "semaphore set", "message queue"};
  return std::string("System V ") + (r.kind < 3 ? kinds[r.kind] : "object") + " " +
         std::to_string(r.id) + " (key " +
         hex_key(r.key) + ")";
}

// Crest's own attaches of the job's segments (dump: read through them; restore: filled through
// them and held until every process has attached, so that a segment marked for destruction
// lives on). Not inherited by anything crest forks (the restored root, a pid namespace's init:
// their attaches would count, and keep segments alive). Detached when the context ends.
struct Attaches {
  std::map<int32_t, std::pair<void*, uint64_t>> by_id;  // id -> (address, size)
  void add(int32_t id, void* at, uint64_t len) {
    by_id[id] = {at, len};
    if (::madvise(at, len, MADV_DONTFORK) != 0)
      throw_errno("madvise(MADV_DONTFORK) of crest's attach of System V segment " +
                  std::to_string(id), errno, Errc::kernel);
  }
  ~Attaches() {
    for (auto& [id, a] : by_id) ::shmdt(a.first);
  }
};

const char kAttachTag = 0;

Attaches& attaches(std::map<const void*, std::shared_ptr<void>>& state) {
  auto& s = state[&kAttachTag];
  if (!s) s = std::make_shared<Attaches>();
  return *static_cast<Attaches*>(s.get());
}

// The thread ids of the tree blocked in an IPC call, and the id each is blocked on.
void blocked_on(const ptrace::FrozenTree& tree, std::set<int32_t>& sem, std::set<int32_t>& msg) {
  for (auto& p : tree.processes()) {
    for (pid_t tid : p.threads) {
      std::string text;
      if (!fs::read_file_if_exists(proc::path(p.pid, "task/" + std::to_string(tid) + "/syscall"),
                                   text))
        continue;
      std::istringstream in(text);
      long nr = -1;
      std::string arg;
      if (!(in >> nr >> arg)) continue;
      auto id = static_cast<int32_t>(std::stoll(arg, nullptr, 16));
      if (nr == SYS_semop || nr == SYS_semtimedop) sem.insert(id);
      if (nr == SYS_msgsnd || nr == SYS_msgrcv) msg.insert(id);
    }
  }
}

}  // namespace

uint64_t sysv_owner(int32_t shmid) {
  uint64_t key[2] = {0x5359535653484dull, static_cast<uint32_t>(shmid)};
  return (1ull << 63) | (XXH3_64bits(key, sizeof key) >> 1);
}

// ---- dump -------------------------------------------------------------------------------------

void dump_sysv(DumpContext& ctx) {
  const pid_t root = ctx.tree.root();
  const std::string theirs = ipc_ns_of(proc::path(root, ""));
  const std::string mine = ipc_ns_of("/proc/self");
  for (auto& p : ctx.tree.processes())
    if (ipc_ns_of(proc::path(p.pid, "")) != theirs)
      ctx.refuse("process " + std::to_string(p.pid) + " runs in another IPC namespace than the "
                 "root of the tree; a tree is restored in one IPC namespace");
  const bool own = !mine.empty() && theirs != mine;
  ctx.meta.info.ipc_namespace = own ? 1 : 0;

  // A pid in /proc/sysvipc names a process of the tree only if that process was alive at the
  // time the kernel recorded it (an object's pid may be that of a dead process whose pid was
  // used again): its start, in seconds since the epoch, no later than the object's time.
  std::map<pid_t, long long> started;  // pid of the tree -> start time (epoch seconds)
  {
    long long btime = 0;
    std::istringstream st(fs::read_file("/proc/stat"));
    for (std::string word; st >> word;)
      if (word == "btime") st >> btime;
    const long hz = ::sysconf(_SC_CLK_TCK);
    auto add = [&](pid_t pid) {
      try {
        started[pid] = btime + static_cast<long long>(proc::stat(pid).starttime) / hz;
      } catch (const Error&) {
        started[pid] = 0;
      }
    };
    for (auto& p : ctx.tree.processes()) add(p.pid);
    for (auto& [z, parent] : ctx.tree.zombies()) add(z);
  }
  auto in_tree = [&](long long pid, long long at) {
    auto it = started.find(static_cast<pid_t>(pid));
    return it != started.end() && it->second <= at;
  };

  // Mappings found in the tree: segment owner -> (VMAs, key from the name).
  struct Seen {
    int attaches = 0;
    int32_t key = 0;
  };
  std::map<uint64_t, Seen> seen;
  std::map<uint64_t, std::vector<const schema::VmaRecord*>> vmas_of;
  for (auto& v : ctx.meta.vmas) {
    if (static_cast<schema::VmaKind>(v.kind) != schema::VmaKind::sysv_shm) continue;
    vmas_of[v.owner].push_back(&v);
    auto& s = seen[v.owner];
    ++s.attaches;  // the kernel counts every VMA (pieces of a split attach too)
    if (v.name.size() >= 13) s.key = static_cast<int32_t>(std::stoul(v.name.substr(5, 8), nullptr, 16));
  }
  std::set<int32_t> sem_waits, msg_waits;
  blocked_on(ctx.tree, sem_waits, msg_waits);


  UniqueFd ns_fd;
  if (own) {
    ns_fd.reset(::open(proc::path(root, "ns/ipc").c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns_fd) throw_errno("cannot open the IPC namespace of process " + std::to_string(root),
                            errno, Errc::kernel);
  }
  Attaches& ours = attaches(ctx.kind_state);
  std::vector<std::string> taken;
  const pid_t self = ::getpid();
  std::set<uint64_t> segment_owners;

  in_ipc_namespace(own ? ns_fd.get() : -1, [&] {
    for (const char* name : kLimits) {
      std::string v;
      if (!fs::read_file_if_exists(std::string("/proc/sys/kernel/") + name, v)) continue;
      while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
      ctx.meta.sysv_limits.push_back({name, v});
    }
    bool rmid_forced = false;
    for (auto& l : ctx.meta.sysv_limits)
      if (l.name == "shm_rmid_forced" && l.value != "0") rmid_forced = true;

    // key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime rss swap
    for (auto& c : sysvipc_rows("shm")) {
      if (c.size() < 11) continue;
      SysvRecord r;
      r.kind = static_cast<uint32_t>(SysvKind::shm);
      r.key = static_cast<int32_t>(c[0]);
      r.id = static_cast<int32_t>(c[1]);
      r.mode = static_cast<uint32_t>(c[2]);
      r.size = static_cast<uint64_t>(c[3]);
      r.uid = static_cast<uint32_t>(c[7]), r.gid = static_cast<uint32_t>(c[8]);
      r.cuid = static_cast<uint32_t>(c[9]), r.cgid = static_cast<uint32_t>(c[10]);
      r.owner = sysv_owner(r.id);
      const long long nattch = c[6];
      auto s = seen.find(r.owner);
      if (!own && s == seen.end() && !(c.size() >= 14 && in_tree(c[4], c[13]))) continue;
      const int attached = s == seen.end() ? 0 : s->second.attaches;
      const std::string what = object_name(r);
      if (nattch != attached)
        ctx.refuse(what + " is attached " + std::to_string(nattch) + " times, " +
                   std::to_string(attached) + " of them by the tree: a process outside the tree "
                   "shares it");
      if (r.mode & SHM_DEST) {
        if (s == seen.end()) continue;  // cannot be: a destroyed segment lives by its attaches
        r.key = s->second.key;
      }
      if (rmid_forced && attached == 0)
        ctx.refuse(what + " has no attach while kernel.shm_rmid_forced is set: its life depends on "
                   "its creator's, which a restore cannot give it");
      // Every attach must be whole: its VMAs cover the segment from offset 0, in order.
      if (s != seen.end()) {
        const uint64_t len = (r.size + 4095) / 4096 * 4096;
        auto vs = vmas_of[r.owner];
        std::sort(vs.begin(), vs.end(), [](auto* a, auto* b) {
          return a->pid != b->pid ? a->pid < b->pid : a->start < b->start;
        });
        for (size_t i = 0; i < vs.size(); ++i) {
          const auto* v = vs[i];
          bool ok;
          if (v->pgoff == 0) {
            uint64_t end = v->end;
            size_t j = i + 1;
            while (j < vs.size() && vs[j]->pid == v->pid && vs[j]->start == end &&
                   vs[j]->pgoff == end - v->start)
              end = vs[j++]->end;
            ok = end - v->start == len;
          } else {
            ok = i > 0 && vs[i - 1]->pid == v->pid && vs[i - 1]->end == v->start &&
                 vs[i - 1]->pgoff + (vs[i - 1]->end - vs[i - 1]->start) == v->pgoff;
          }
          if (!ok)
            ctx.refuse("process " + std::to_string(v->pid) + ": mapping " + v->name +
                       " is part of an attach of " + what + " that was partly unmapped; not "
                       "supported");
        }
      }
      // Contents: through an attach of ours, the pages the segment holds (resident; a segment
      // with pages in swap is read whole).
      void* at = ::shmat(r.id, nullptr, SHM_RDONLY);
      if (at == reinterpret_cast<void*>(-1)) {
        ctx.refuse("cannot attach " + what + " to read it: " + std::strerror(errno));
        continue;
      }
      const uint64_t len = (r.size + 4095) / 4096 * 4096;
      ours.add(r.id, at, len);
      const bool swapped = c.size() >= 16 && c[15] > 0;
      std::vector<unsigned char> vec(len / 4096);
      if (!swapped && ::mincore(at, len, vec.data()) != 0)
        throw_errno("mincore of " + what, errno, Errc::kernel);
      for (uint64_t i = 0; i < vec.size();) {
        if (!swapped && !(vec[i] & 1)) {
          ++i;
          continue;
        }
        uint64_t j = i;
        while (j < vec.size() && (swapped || (vec[j] & 1))) ++j;
        PageRead rd;
        rd.owner = r.owner;
        rd.addr = i * 4096;
        rd.npages = j - i;
        rd.pid = self;
        rd.bias = reinterpret_cast<uint64_t>(at);
        rd.no_fork = true;  // read while frozen, from crest itself
        ctx.page_reads.push_back(rd);
        i = j;
      }
      segment_owners.insert(r.owner);
      taken.push_back("shm " + std::to_string(r.id) + " key " + hex_key(r.key) +
                      ((r.mode & SHM_DEST) ? " (marked for destruction)" : ""));
      ctx.meta.sysv.push_back(std::move(r));
    }

    // key semid perms nsems uid gid cuid cgid otime ctime
    for (auto& c : sysvipc_rows("sem")) {
      if (c.size() < 8) continue;
      SysvRecord r;
      r.kind = static_cast<uint32_t>(SysvKind::sem);
      r.key = static_cast<int32_t>(c[0]);
      r.id = static_cast<int32_t>(c[1]);
      r.mode = static_cast<uint32_t>(c[2]);
      r.size = static_cast<uint64_t>(c[3]);
      r.uid = static_cast<uint32_t>(c[4]), r.gid = static_cast<uint32_t>(c[5]);
      r.cuid = static_cast<uint32_t>(c[6]), r.cgid = static_cast<uint32_t>(c[7]);
      std::vector<unsigned short> vals(r.size);
      if (::semctl(r.id, 0, GETALL, vals.data()) != 0) {
        if (own || sem_waits.count(r.id))
          ctx.refuse("cannot read the values of " + object_name(r) + ": " + std::strerror(errno));
        continue;
      }
      bool mine_too = own || sem_waits.count(r.id);
      std::vector<int64_t> pids;
      for (uint64_t i = 0; i < r.size; ++i) {
        int pid = ::semctl(r.id, static_cast<int>(i), GETPID);
        if (pid > 0 && in_tree(pid, std::max(c[8], c.size() >= 10 ? c[9] : 0))) mine_too = true;
        pids.push_back(pid < 0 ? 0 : pid);
      }
      if (!mine_too) continue;
      for (auto& pid : pids) pid = pid > 0 ? ctx.recorded(static_cast<pid_t>(pid)) : 0;
      r.values.assign(vals.begin(), vals.end());
      r.pids = std::move(pids);
      taken.push_back("sem " + std::to_string(r.id) + " key " + hex_key(r.key));
      ctx.meta.sysv.push_back(std::move(r));
    }

    // key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime
    for (auto& c : sysvipc_rows("msg")) {
      if (c.size() < 11) continue;
      SysvRecord r;
      r.kind = static_cast<uint32_t>(SysvKind::msg);
      r.key = static_cast<int32_t>(c[0]);
      r.id = static_cast<int32_t>(c[1]);
      r.mode = static_cast<uint32_t>(c[2]);
      const auto cbytes = static_cast<uint64_t>(c[3]);
      const auto qnum = static_cast<uint64_t>(c[4]);
      r.uid = static_cast<uint32_t>(c[7]), r.gid = static_cast<uint32_t>(c[8]);
      r.cuid = static_cast<uint32_t>(c[9]), r.cgid = static_cast<uint32_t>(c[10]);
      if (!own && !(c.size() >= 14 && (in_tree(c[5], c[11]) || in_tree(c[6], c[12]))) &&
          !msg_waits.count(r.id))
        continue;
      const std::string what = object_name(r);
      msqid_ds ds{};
      if (::msgctl(r.id, IPC_STAT, &ds) != 0) {
        ctx.refuse("cannot read " + what + ": " + std::strerror(errno));
        continue;
      }
      r.size = ds.msg_qbytes;
      // Each message by its position; MSG_COPY leaves the queue as it is.
      std::vector<unsigned char> buf(sizeof(long) + cbytes + 1);
      for (uint64_t i = 0; i < qnum; ++i) {
        ssize_t n = ::msgrcv(r.id, buf.data(), cbytes + 1, static_cast<long>(i),
                             IPC_NOWAIT | MSG_COPY);
        if (n < 0) {
          ctx.refuse("cannot read message " + std::to_string(i) + " of " + what +
                     " (msgrcv MSG_COPY): " + std::strerror(errno));
          break;
        }
        schema::SysvMessageRecord m;
        m.id = r.id;
        m.seq = i;
        long type;
        std::memcpy(&type, buf.data(), sizeof type);
        m.type = type;
        m.data.assign(buf.data() + sizeof(long), buf.data() + sizeof(long) + n);
        ctx.meta.sysv_messages.push_back(std::move(m));
      }
      taken.push_back("msg " + std::to_string(r.id) + " key " + hex_key(r.key) + " (" +
                      std::to_string(qnum) + " messages)");
      ctx.meta.sysv.push_back(std::move(r));
    }
  });

  // SEM_UNDO: the kernel keeps each task's adjustments in an undo list that no interface shows.
  // kcmp(KCMP_SYSVSEM) tells whether a task has a list at all, against a process known to have
  // none (a fresh fork of crest; crest's own threads share one). A task gets an (empty) list by
  // its first semop with SEM_UNDO, or by making a thread (CLONE_SYSVSEM): with the job's
  // semaphore sets taken, any list may hold adjustments a restore would lose.
  bool any_sem = false;
  for (auto& r : ctx.meta.sysv) any_sem |= r.kind == static_cast<uint32_t>(SysvKind::sem);
  if (any_sem) {
    pid_t ref = ::fork();
    if (ref == 0) {
      for (;;) ::pause();
    }
    if (ref < 0) throw_errno("fork of a process without a semaphore undo list", errno, Errc::kernel);
    for (auto& p : ctx.tree.processes()) {
      for (pid_t tid : p.threads) {
        if (::syscall(SYS_kcmp, ref, tid, KCMP_SYSVSEM, 0, 0) > 0) {
          ctx.refuse("process " + std::to_string(p.pid) + " has a System V semaphore undo list "
                     "(SEM_UNDO, or threads it made): the adjustments in it cannot be read, and "
                     "the job has semaphore sets a restore would give back without them");
          break;
        }
      }
    }
    ::kill(ref, SIGKILL);
    ::waitpid(ref, nullptr, 0);
  }

  // A mapping of a segment that was not taken cannot be: every attached segment is taken.
  for (auto& [owner, s] : seen)
    if (!segment_owners.count(owner))
      ctx.refuse("a System V shared memory segment mapped by the tree (key " + hex_key(s.key) +
                 ") is not listed in /proc/sysvipc/shm");
  if (!taken.empty()) {
    std::string line = std::string("System V IPC objects saved from ") +
                       (own ? "the job's own IPC namespace" : "the host's IPC namespace (they stay there)") + ":";
    for (auto& t : taken) line += " " + t + ";";
    line.pop_back();
    ctx.warnings.push_back(line);
  }
}

// ---- restore ----------------------------------------------------------------------------------

namespace {

struct SysvRestoreState {
  UniqueFd own_ns;  // crest's IPC namespace
  UniqueFd job_ns;  // the namespace made for the job
};

const char kRestoreTag = 0;

SysvRestoreState* restore_state(RestoreContext& ctx) {
  auto it = ctx.kind_state.find(&kRestoreTag);
  return it == ctx.kind_state.end() ? nullptr : static_cast<SysvRestoreState*>(it->second.get());
}

void write_sysctl(const std::string& name, const std::string& value) {
  const std::string path = "/proc/sys/kernel/" + name;
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd || ::write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size()))
    throw_errno("cannot set " + path + " to " + value + " in the job's IPC namespace", errno,
                Errc::kernel);
}

std::string read_sysctl(const std::string& name) {
  std::string v = fs::read_file("/proc/sys/kernel/" + name);
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v;
}

// Makes one object with the creator's effective ids (cuid/cgid are those of the caller), the
// next id set to its own just before. Runs in the job's namespace, in a thread of its own whose
// credentials change (per-thread, raw syscalls) only around the call.
int make_object(const SysvRecord& r, const std::function<int()>& create) {
  static const char* next[] = {"shm_next_id", "sem_next_id", "msg_next_id"};
  write_sysctl(next[r.kind], std::to_string(r.id));
  if (::syscall(SYS_setresgid, -1, r.cgid, -1) != 0)
    throw_errno("setresgid(-1, " + std::to_string(r.cgid) + ", -1)", errno, Errc::kernel);
  if (::syscall(SYS_setresuid, -1, r.cuid, -1) != 0)
    throw_errno("setresuid(-1, " + std::to_string(r.cuid) + ", -1)", errno, Errc::kernel);
  int id = create();
  int err = errno;
  if (::syscall(SYS_setresuid, -1, 0, -1) != 0 || ::syscall(SYS_setresgid, -1, 0, -1) != 0)
    throw_errno("cannot become root again after making " + object_name(r), errno, Errc::kernel);
  if (id < 0) throw_errno("cannot make " + object_name(r) + " again", err, Errc::kernel);
  if (id != r.id)
    fail(Errc::kernel, object_name(r) + " was made again with id " + std::to_string(id));
  return id;
}

void set_owner_mode(const SysvRecord& r, shmid_ds& ds) {
  ds.shm_perm.uid = r.uid;
  ds.shm_perm.gid = r.gid;
  ds.shm_perm.mode = static_cast<unsigned short>(r.mode & 0777);
}

class SegmentFiller : public storage::PageSink {
 public:
  SegmentFiller(std::byte* base, uint64_t len) : base_(base), len_(len) {}
  void on_pages(const storage::PageExtent& run, schema::PageKind kind, const std::byte* data) override {
    if (kind != schema::PageKind::data || !data) return;  // zero pages: already zero
    if (run.addr + run.npages * 4096 > len_)
      fail(Errc::corrupt, "pages of a System V segment beyond its size");
    std::memcpy(base_ + run.addr, data, run.npages * 4096);
  }
  bool concurrent() const override { return true; }

 private:
  std::byte* base_;
  uint64_t len_;
};

}  // namespace

void prepare_sysv(RestoreContext& ctx) {
  const auto& meta = ctx.meta;
  if (meta.sysv.empty() && !meta.info.ipc_namespace) return;
  auto state = std::make_shared<SysvRestoreState>();
  state->own_ns.reset(::open("/proc/self/ns/ipc", O_RDONLY | O_CLOEXEC));
  if (!state->own_ns) throw_errno("cannot open /proc/self/ns/ipc", errno, Errc::kernel);
  Attaches& ours = attaches(ctx.kind_state);

  std::map<int32_t, std::vector<const schema::SysvMessageRecord*>> messages;
  for (auto& m : meta.sysv_messages) messages[m.id].push_back(&m);
  for (auto& [id, ms] : messages)
    std::sort(ms.begin(), ms.end(), [](auto* a, auto* b) { return a->seq < b->seq; });

  std::exception_ptr error;
  std::thread maker([&] {
    try {
      if (::unshare(CLONE_NEWIPC) != 0)
        throw_errno("unshare(CLONE_NEWIPC) for the job's System V objects", errno, Errc::kernel);
      state->job_ns.reset(::open("/proc/thread-self/ns/ipc", O_RDONLY | O_CLOEXEC));
      if (!state->job_ns) throw_errno("cannot open the new IPC namespace", errno, Errc::kernel);
      for (auto& l : meta.sysv_limits) write_sysctl(l.name, l.value);
      // Messages larger than msgmax, and queues larger than msgmnb, are put back while these
      // limits allow them (a queue's qbytes above msgmnb needs CAP_SYS_RESOURCE otherwise).
      uint64_t need_max = 0, need_mnb = 0;
      for (auto& m : meta.sysv_messages) need_max = std::max<uint64_t>(need_max, m.data.size());
      std::map<int32_t, uint64_t> bytes;
      for (auto& m : meta.sysv_messages) bytes[m.id] += m.data.size();
      for (auto& r : meta.sysv)
        if (r.kind == static_cast<uint32_t>(SysvKind::msg))
          need_mnb = std::max({need_mnb, r.size, bytes[r.id]});
      const std::string msgmax = read_sysctl("msgmax"), msgmnb = read_sysctl("msgmnb");
      if (need_max > std::stoull(msgmax)) write_sysctl("msgmax", std::to_string(need_max));
      if (need_mnb > std::stoull(msgmnb)) write_sysctl("msgmnb", std::to_string(need_mnb));

      // Segments marked for destruction first: their keys are given up at once, and a live
      // object may have been made with the same key since.
      std::vector<const SysvRecord*> order;
      for (auto& r : meta.sysv)
        if (r.kind == static_cast<uint32_t>(SysvKind::shm) && (r.mode & SHM_DEST)) order.push_back(&r);
      for (auto& r : meta.sysv)
        if (!(r.kind == static_cast<uint32_t>(SysvKind::shm) && (r.mode & SHM_DEST))) order.push_back(&r);
      for (const SysvRecord* rp : order) {
        const SysvRecord& r = *rp;
        const std::string what = object_name(r);
        const int perms = static_cast<int>(r.mode & 0777) | IPC_CREAT | IPC_EXCL;
        switch (static_cast<SysvKind>(r.kind)) {
          case SysvKind::shm: {
            bool noreserve = false;
            for (auto& v : meta.vmas)
              if (v.owner == r.owner && (v.vmflags & schema::vmflag("nr"))) noreserve = true;
            make_object(r, [&] {
              return ::shmget(r.key, r.size, perms | (noreserve ? SHM_NORESERVE : 0));
            });
            shmid_ds ds{};
            if (::shmctl(r.id, IPC_STAT, &ds) != 0) throw_errno("IPC_STAT of " + what, errno, Errc::kernel);
            set_owner_mode(r, ds);
            if (::shmctl(r.id, IPC_SET, &ds) != 0) throw_errno("IPC_SET of " + what, errno, Errc::kernel);
            void* at = ::shmat(r.id, nullptr, 0);
            if (at == reinterpret_cast<void*>(-1))
              throw_errno("cannot attach " + what + " to fill it", errno, Errc::kernel);
            ours.add(r.id, at, (r.size + 4095) / 4096 * 4096);
            if ((r.mode & SHM_LOCKED) && ::shmctl(r.id, SHM_LOCK, nullptr) != 0)
              throw_errno("SHM_LOCK of " + what, errno, Errc::kernel);
            // Marked for destruction: its key goes now (another object may use it); our attach
            // keeps it alive until the processes have theirs.
            if ((r.mode & SHM_DEST) && ::shmctl(r.id, IPC_RMID, nullptr) != 0)
              throw_errno("IPC_RMID of " + what, errno, Errc::kernel);
            break;
          }
          case SysvKind::sem: {
            make_object(r, [&] { return ::semget(r.key, static_cast<int>(r.size), perms); });
            semid_ds ds{};
            if (::semctl(r.id, 0, IPC_STAT, &ds) != 0) throw_errno("IPC_STAT of " + what, errno, Errc::kernel);
            ds.sem_perm.uid = r.uid, ds.sem_perm.gid = r.gid, ds.sem_perm.mode = r.mode & 0777;
            if (::semctl(r.id, 0, IPC_SET, &ds) != 0) throw_errno("IPC_SET of " + what, errno, Errc::kernel);
            if (r.values.size() != r.size) fail(Errc::corrupt, what + ": values do not match its size");
            std::vector<unsigned short> vals(r.values.begin(), r.values.end());
            if (r.size && ::semctl(r.id, 0, SETALL, vals.data()) != 0)
              throw_errno("SETALL of " + what, errno, Errc::kernel);
            break;
          }
          case SysvKind::msg: {
            make_object(r, [&] { return ::msgget(r.key, perms); });
            std::vector<unsigned char> buf;
            for (auto* m : messages[r.id]) {
              buf.resize(sizeof(long) + m->data.size());
              long type = m->type;
              std::memcpy(buf.data(), &type, sizeof type);
              if (!m->data.empty()) std::memcpy(buf.data() + sizeof(long), m->data.data(), m->data.size());
              if (::msgsnd(r.id, buf.data(), m->data.size(), IPC_NOWAIT) != 0)
                throw_errno("cannot queue message " + std::to_string(m->seq) + " on " + what,
                            errno, Errc::kernel);
            }
            msqid_ds ds{};
            if (::msgctl(r.id, IPC_STAT, &ds) != 0) throw_errno("IPC_STAT of " + what, errno, Errc::kernel);
            ds.msg_perm.uid = r.uid, ds.msg_perm.gid = r.gid, ds.msg_perm.mode = r.mode & 0777;
            ds.msg_qbytes = r.size;
            if (::msgctl(r.id, IPC_SET, &ds) != 0) throw_errno("IPC_SET of " + what, errno, Errc::kernel);
            break;
          }
          default:
            fail(Errc::corrupt, "a System V object of unknown kind " + std::to_string(r.kind));
        }
      }
      write_sysctl("msgmax", msgmax);
      write_sysctl("msgmnb", msgmnb);
    } catch (...) {
      error = std::current_exception();
    }
  });
  maker.join();
  if (error) std::rethrow_exception(error);

  // Contents, straight from the image into our attaches.
  for (auto& r : meta.sysv) {
    if (r.kind != static_cast<uint32_t>(SysvKind::shm)) continue;
    auto& a = ours.by_id.at(r.id);
    SegmentFiller filler(static_cast<std::byte*>(a.first), a.second);
    ctx.reader.read_pages({r.owner}, filler);
  }
  ctx.kind_state[&kRestoreTag] = state;
}

// The thread that creates the root joins the job's namespace just before (every process is
// then born in it), and leaves it right after.
void enter_sysv_namespace(RestoreContext& ctx) {
  if (auto* st = restore_state(ctx); st && ::setns(st->job_ns.get(), CLONE_NEWIPC) != 0)
    throw_errno("setns into the job's IPC namespace", errno, Errc::kernel);
}

void leave_sysv_namespace(RestoreContext& ctx) {
  if (auto* st = restore_state(ctx); st && ::setns(st->own_ns.get(), CLONE_NEWIPC) != 0)
    throw_errno("setns back to crest's IPC namespace", errno, Errc::kernel);
}

const SysvRecord* sysv_segment(const RestoreContext& ctx, uint64_t owner) {
  for (auto& r : ctx.meta.sysv)
    if (r.kind == static_cast<uint32_t>(SysvKind::shm) && r.owner == owner) return &r;
  return nullptr;
}

// An attach of a segment, made again by the process: shmat at its address with the access its
// mapping may have (VmFlags mw, me), then each of its VMAs given the protection it had.
void restore_sysv_attach(RestoreContext& ctx, RestoredProcess& p, const schema::VmaRecord& v) {
  const SysvRecord* r = sysv_segment(ctx, v.owner);
  if (!r) fail(Errc::corrupt, "mapping " + v.name + " refers to a segment the image lacks");
  if (v.pgoff == 0) {
    // Execute access comes from mprotect below (a segment's mappings may always exec: "me").
    uint64_t flags = 0, prot = PROT_READ | PROT_WRITE;
    if (!(v.vmflags & schema::vmflag("mw"))) flags |= SHM_RDONLY, prot = PROT_READ;
    uint64_t at = p.inj->call("shmat", SYS_shmat, static_cast<uint64_t>(r->id), v.start, flags);
    if (at != v.start)
      fail(Errc::kernel, "shmat of " + object_name(*r) + " landed at the wrong address");
    // Pieces of the same attach made by the same call: protection of each below.
    for (auto& o : ctx.meta.vmas) {
      if (o.pid != v.pid || o.owner != v.owner || o.start < v.start ||
          o.start >= v.start + (r->size + 4095) / 4096 * 4096 || o.prot == prot)
        continue;
      p.inj->call("mprotect", SYS_mprotect, o.start, o.end - o.start, o.prot);
    }
  }
  (void)ctx;
}

namespace {

// --verify-restore: every object read back from the job's namespace, as the program will see it.
void verify_sysv(RestoreContext& ctx) {
  std::vector<std::string> diffs;
  std::map<int32_t, int> vmas;  // shmid -> VMAs of the tree
  for (auto& v : ctx.meta.vmas)
    if (static_cast<schema::VmaKind>(v.kind) == schema::VmaKind::sysv_shm)
      if (auto* r = sysv_segment(ctx, v.owner)) ++vmas[r->id];
  std::map<int32_t, uint64_t> qnum;
  for (auto& m : ctx.meta.sysv_messages) ++qnum[m.id];
  in_ipc_namespace(restore_state(ctx)->job_ns.get(), [&] {
    for (auto& r : ctx.meta.sysv) {
      const std::string what = object_name(r);
      auto differ = [&](const std::string& field, uint64_t got, uint64_t want) {
        if (got != want)
          diffs.push_back(what + ": " + field + " " + std::to_string(got) + ", saved " +
                          std::to_string(want));
      };
      auto perm = [&](const ipc_perm& p, uint32_t mode_mask) {
        differ("key", static_cast<uint32_t>(p.__key),
               static_cast<uint32_t>((r.mode & SHM_DEST) ? IPC_PRIVATE : r.key));
        differ("mode", p.mode & mode_mask, r.mode & mode_mask);
        differ("uid", p.uid, r.uid), differ("gid", p.gid, r.gid);
        differ("cuid", p.cuid, r.cuid), differ("cgid", p.cgid, r.cgid);
      };
      switch (static_cast<SysvKind>(r.kind)) {
        case SysvKind::shm: {
          shmid_ds ds{};
          if (::shmctl(r.id, IPC_STAT, &ds) != 0) {
            diffs.push_back(what + " is gone: " + std::strerror(errno));
            break;
          }
          perm(ds.shm_perm, 0777 | SHM_DEST | SHM_LOCKED);
          differ("size", ds.shm_segsz, r.size);
          differ("nattch", ds.shm_nattch, static_cast<uint64_t>(vmas[r.id]));
          break;
        }
        case SysvKind::sem: {
          semid_ds ds{};
          if (::semctl(r.id, 0, IPC_STAT, &ds) != 0) {
            diffs.push_back(what + " is gone: " + std::strerror(errno));
            break;
          }
          perm(ds.sem_perm, 0777);
          differ("nsems", ds.sem_nsems, r.size);
          std::vector<unsigned short> vals(r.size);
          if (r.size && ::semctl(r.id, 0, GETALL, vals.data()) == 0)
            for (size_t i = 0; i < vals.size() && i < r.values.size(); ++i)
              differ("semaphore " + std::to_string(i), vals[i], static_cast<uint64_t>(r.values[i]));
          break;
        }
        case SysvKind::msg: {
          msqid_ds ds{};
          if (::msgctl(r.id, IPC_STAT, &ds) != 0) {
            diffs.push_back(what + " is gone: " + std::strerror(errno));
            break;
          }
          perm(ds.msg_perm, 0777);
          differ("qbytes", ds.msg_qbytes, r.size);
          differ("messages", ds.msg_qnum, qnum[r.id]);
          break;
        }
      }
    }
  });
  if (diffs.empty()) return;
  std::string msg = "--verify-restore: the System V objects differ from the checkpoint:";
  for (auto& d : diffs) msg += "\n  " + d;
  fail(Errc::mismatch, msg);
}

}  // namespace

// Once every process exists (before credentials): the last process to change each semaphore
// sets its value again (its sempid), and crest lets go of its own attaches.
void finish_sysv(RestoreContext& ctx) {
  if (!restore_state(ctx)) return;
  for (auto& r : ctx.meta.sysv) {
    if (r.kind != static_cast<uint32_t>(SysvKind::sem)) continue;
    for (size_t i = 0; i < r.pids.size() && i < r.values.size(); ++i) {
      auto it = ctx.by_pid.find(static_cast<pid_t>(r.pids[i]));
      if (r.pids[i] <= 0 || it == ctx.by_pid.end() ||
          it->second->role != RestoredProcess::Role::process)
        continue;
      it->second->inj->call("semctl(SETVAL)", SYS_semctl, static_cast<uint64_t>(r.id), i, SETVAL,
                            static_cast<uint64_t>(r.values[i]));
    }
  }
  ctx.kind_state.erase(&kAttachTag);  // detaches
  if (ctx.opts.verify_restore) verify_sysv(ctx);
}

}  // namespace crest
