// --verify-restore: once a process is rebuilt and before it runs, read back what the kernel
// shows of it and compare with what was saved. A restore that would hand the program different
// state fails, naming each difference, instead of letting it run.
//
// Compared: every mapping's range, protection and VmFlags (smaps; crest's own tracking flags
// aside), credentials, capabilities, securebits-visible status fields, seccomp mode and filter
// count, blocked, ignored, caught and pending signals per thread, CPU affinity, scheduling,
// limits, oom_score_adj, loginuid, cwd and root, every descriptor's flags, offset and
// close-on-exec, the locks seen through each description, and the POSIX timers.
#include <fcntl.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <tuple>

#include "core/context.h"
#include "core/fds/fd_kind.h"
#include "core/fds/unix_diag.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest {
namespace {

constexpr uint64_t kIgnoredFlags =
    schema::vmflag("um") | schema::vmflag("uw") | schema::vmflag("ui") | schema::vmflag("sd");

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string flag_names(uint64_t flags) {
  std::string out;
  for (int i = 0; i < schema::kVmFlagCount; ++i)
    if (flags & (1ull << i)) out += (out.empty() ? "" : " ") + std::string(schema::kVmFlagNames[i]);
  return out.empty() ? "-" : out;
}

class Checker {
 public:
  Checker(RestoreContext& ctx, RestoredProcess& p)
      : ctx_(ctx), p_(p), who_("process " + std::to_string(p.rec->pid)) {}

  std::vector<std::string> run() {
    mappings();
    status();
    files();
    timers();
    misc();
    return std::move(diffs_);
  }

 private:
  void differ(const std::string& what) { diffs_.push_back(who_ + ": " + what); }

  void mappings() {
    auto now = proc::maps(p_.pid, true);
    for (auto* vp : ctx_.rows_of(ctx_.meta.vmas, p_.rec->pid)) {
      const schema::VmaRecord& v = *vp;
      auto kind = static_cast<schema::VmaKind>(v.kind);
      if (kind == schema::VmaKind::vsyscall) continue;
      // The restored mappings covering [start, end) (adjacent ones the kernel merged or kept
      // apart alike) must each have the saved protection and flags.
      // (/proc lists mappings in address order: bisect for the first that ends past start.)
      uint64_t covered = v.start;
      auto first = std::partition_point(now.begin(), now.end(),
                                        [&](const proc::Mapping& m) { return m.end <= v.start; });
      for (auto it = first; it != now.end() && it->start < v.end; ++it) {
        const proc::Mapping& m = *it;
        if (m.start > covered) break;
        uint64_t flags = 0;
        for (auto& f : m.vmflags)
          if (int b = schema::vmflag_bit(f); b >= 0) flags |= 1ull << b;
        const uint64_t want = v.vmflags & ~kIgnoredFlags, got = flags & ~kIgnoredFlags;
        if (want != got)
          differ("mapping " + hex(v.start) + "-" + hex(v.end) + " " + v.name + " has VmFlags \"" +
                 flag_names(got) + "\", saved \"" + flag_names(want) + "\"");
        covered = std::max(covered, m.end);
      }
      if (covered < v.end)
        differ("mapping " + hex(v.start) + "-" + hex(v.end) + " " + v.name +
               " is not all mapped again (from " + hex(covered) + ")");
    }
  }

  // Signals the process's armed timers may have raised since the release armed them: time passes
  // while the rest of the tree is released, as it would have for the program.
  uint64_t timer_signals(int32_t tid) const {
    uint64_t mask = 0;
    for (auto* tp : ctx_.rows_of(ctx_.meta.timers, p_.rec->pid))
      if (const auto& t = *tp; t.value_ns != 0 && t.signo > 0 && (t.notify & 3) == SIGEV_SIGNAL &&
          (tid == 0 ? !(t.notify & SIGEV_THREAD_ID) : t.notify_tid == tid))
        mask |= 1ull << (t.signo - 1);
    const auto& it = p_.rec->itimers;
    // (A periodic ITIMER_REAL whose signal was pending reads as value 0: timers.cpp fires it.)
    if (tid == 0 && it.size() >= 12 && (it[0] || it[1] || it[2] || it[3])) mask |= 1ull << (SIGALRM - 1);
    return mask;
  }

  void status() {
    const auto& r = *p_.rec;
    auto st = proc::status(p_.pid);
    auto expect_hex = [&](const char* key, uint64_t want) {
      uint64_t got = proc::status_hex(st, key);
      if (got != want) differ(std::string(key) + " " + hex(got) + ", saved " + hex(want));
    };
    expect_hex("CapInh", r.cap_inh);
    expect_hex("CapPrm", r.cap_prm);
    expect_hex("CapEff", r.cap_eff);
    expect_hex("CapBnd", r.cap_bnd);
    expect_hex("CapAmb", r.cap_amb);
    auto ids = [&](const char* key, std::vector<uint32_t> want) {
      auto got = proc::status_numbers(st, key);
      std::vector<uint32_t> g(got.begin(), got.end());
      if (g != want) differ(std::string(key) + " differ from the saved ones");
    };
    ids("Uid", {r.uid, r.euid, r.suid, r.fsuid});
    ids("Gid", {r.gid, r.egid, r.sgid, r.fsgid});
    ids("Groups", r.groups);
    // Per thread: signal masks, pending signals, seccomp, affinity.
    std::map<int, uint64_t> caught_ign;
    for (auto* sa : ctx_.rows_of(ctx_.meta.sigactions, r.pid)) caught_ign[sa->signo] = sa->handler;
    uint64_t want_ign = 0, want_cgt = 0;
    for (auto& [sig, handler] : caught_ign) {
      if (handler == reinterpret_cast<uint64_t>(SIG_IGN)) want_ign |= 1ull << (sig - 1);
      else if (handler != reinterpret_cast<uint64_t>(SIG_DFL)) want_cgt |= 1ull << (sig - 1);
    }
    expect_hex("SigIgn", want_ign);
    expect_hex("SigCgt", want_cgt);
    uint64_t shared = 0;
    for (auto* s : ctx_.rows_of(ctx_.meta.signals, r.pid))
      if (s->tid == 0 && s->siginfo.size() >= sizeof(siginfo_t))
        shared |= 1ull << (reinterpret_cast<const siginfo_t*>(s->siginfo.data())->si_signo - 1);
    {
      const uint64_t loose = timer_signals(0), got = proc::status_hex(st, "ShdPnd");
      if ((got & ~loose) != (shared & ~loose) || (shared & ~got))
        differ("ShdPnd " + hex(got) + ", saved " + hex(shared));
    }
    for (size_t i = 0; i < p_.threads.size(); ++i) {
      const auto& t = *p_.thread_recs[i];
      auto ts = proc::status(p_.pid, p_.threads[i]);
      const std::string thread = "thread " + std::to_string(t.tid) + ": ";
      uint64_t pending = 0;
      for (auto* s : ctx_.rows_of(ctx_.meta.signals, r.pid))
        if (s->tid == t.tid && s->siginfo.size() >= sizeof(siginfo_t))
          pending |= 1ull << (reinterpret_cast<const siginfo_t*>(s->siginfo.data())->si_signo - 1);
      const uint64_t loose = timer_signals(t.tid), got = proc::status_hex(ts, "SigPnd");
      if ((got & ~loose) != (pending & ~loose) || (pending & ~got))
        differ(thread + "SigPnd " + hex(got) + ", saved " + hex(pending));
      if (ptrace::get_sigmask(p_.threads[i]) != t.sigmask)
        differ(thread + "signal mask " + hex(ptrace::get_sigmask(p_.threads[i])) + ", saved " +
               hex(t.sigmask));
      if (std::to_string(t.seccomp_mode) != ts["Seccomp"])
        differ(thread + "seccomp mode " + ts["Seccomp"] + ", saved " + std::to_string(t.seccomp_mode));
      size_t filters = 0;
      for (auto* f : ctx_.rows_of(ctx_.meta.seccomp, r.pid))
        if (f->tid == t.tid) ++filters;
      if (ts.count("Seccomp_filters") && ts["Seccomp_filters"] != std::to_string(filters))
        differ(thread + ts["Seccomp_filters"] + " seccomp filters, saved " + std::to_string(filters));
      if (ts["NoNewPrivs"] != std::to_string(t.no_new_privs))
        differ(thread + "no_new_privs " + ts["NoNewPrivs"] + ", saved " + std::to_string(t.no_new_privs));
      cpu_set_t set;
      CPU_ZERO(&set);
      if (!t.affinity.empty() && ::sched_getaffinity(p_.threads[i], sizeof set, &set) == 0) {
        std::vector<uint64_t> got(sizeof set / 8);
        std::memcpy(got.data(), &set, sizeof set);
        while (!got.empty() && got.back() == 0) got.pop_back();
        if (got != t.affinity) differ(thread + "CPU affinity differs from the saved one");
      }
      struct {
        uint32_t size, policy;
        uint64_t flags;
        int32_t nice;
        uint32_t priority;
        uint64_t runtime, deadline, period;
        uint32_t util_min, util_max;
      } a{};
      if (::syscall(SYS_sched_getattr, p_.threads[i], &a, sizeof a, 0) == 0 &&
          (a.policy != t.sched_policy || a.nice != t.sched_nice || a.priority != t.sched_priority))
        differ(thread + "scheduling policy " + std::to_string(a.policy) + " nice " +
               std::to_string(a.nice) + " priority " + std::to_string(a.priority) + ", saved " +
               std::to_string(t.sched_policy) + "/" + std::to_string(t.sched_nice) + "/" +
               std::to_string(t.sched_priority));
    }
  }

  // The lock tuples fdinfo shows through one descriptor.
  static std::multiset<std::string> lock_lines(const std::string& fdinfo) {
    std::multiset<std::string> out;
    std::istringstream in(fdinfo);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("lock:", 0) != 0) continue;
      std::istringstream f(line.substr(5));
      std::string id, kind, mode, type, pid, inode, start, end;
      f >> id >> kind >> mode >> type >> pid >> inode >> start >> end;
      out.insert(kind + " " + mode + " " + type + " " + start + " " + end);
    }
    return out;
  }

  // The image's rows by the description they belong to (built once per restore and kept in the
  // context: the checks below look them up per descriptor of every process).
  struct ByFile {
    std::map<int64_t, std::vector<const schema::FdRecord*>> fds;
    std::map<int64_t, std::vector<const schema::LockRecord*>> locks;
    std::map<int64_t, std::vector<const schema::EpollRecord*>> epoll;
    std::map<int64_t, const schema::SocketRecord*> sockets;
    std::map<int64_t, uint64_t> queued;  // bytes queued to a socket
  };

  const ByFile& by_file() {
    if (by_file_) return *by_file_;
    static const char kTag = 0;
    std::shared_ptr<void>& slot = ctx_.kind_state[&kTag];
    if (slot) return *(by_file_ = static_cast<const ByFile*>(slot.get()));
    auto made = std::make_shared<ByFile>();
    slot = made;
    by_file_ = made.get();
    ByFile& b = *made;
    for (auto& fd : ctx_.meta.fds) b.fds[fd.file_id].push_back(&fd);
    for (auto& l : ctx_.meta.locks) b.locks[l.file_id].push_back(&l);
    for (auto& e : ctx_.meta.epoll) b.epoll[e.file_id].push_back(&e);
    for (auto& s : ctx_.meta.sockets) b.sockets[s.file_id] = &s;
    for (auto& q : ctx_.meta.socket_queues) b.queued[q.file_id] += q.data.size();
    return b;
  }

  template <typename T>
  static const std::vector<const T*>& rows(const std::map<int64_t, std::vector<const T*>>& m, int64_t id) {
    static const std::vector<const T*> none;
    auto it = m.find(id);
    return it == m.end() ? none : it->second;
  }

  void files() {
    const auto& r = *p_.rec;
    if (r.flags & schema::kProcessSharesFiles) return;  // its parent's table, checked there
    std::set<std::pair<int64_t, pid_t>> locks_seen;
    for (auto* fdp : ctx_.rows_of(ctx_.meta.fds, r.pid)) {
      const schema::FdRecord& fd = *fdp;
      const auto& f = ctx_.file(fd.file_id);
      const std::string what = "fd " + std::to_string(fd.fd) + " (" + f.path + ")";
      std::string text;
      if (!fs::read_file_if_exists(proc::path(p_.pid, "fdinfo/" + std::to_string(fd.fd)), text)) {
        differ(what + " is not open");
        continue;
      }
      auto info = [&](const std::string& key) {
        auto at = text.find(key + ":");
        if (at == std::string::npos) return std::string();
        auto from = text.find_first_not_of(" \t", at + key.size() + 1);
        return text.substr(from, text.find('\n', from) - from);
      };
      const uint32_t flags = static_cast<uint32_t>(std::stoul(info("flags"), nullptr, 8));
      if (((flags & O_CLOEXEC) != 0) != ((fd.fd_flags & FD_CLOEXEC) != 0))
        differ(what + ": close-on-exec differs");
      if (static_cast<schema::FileKind>(f.kind) == schema::FileKind::inherited) continue;
      if ((flags & ~static_cast<uint32_t>(O_CLOEXEC)) != f.flags)
        differ(what + ": flags 0" + std::to_string(flags) + " differ from the saved ones");
      const auto kind = static_cast<schema::FileKind>(f.kind);
      const bool positioned = kind == schema::FileKind::regular || kind == schema::FileKind::memfd ||
                              kind == schema::FileKind::unlinked || kind == schema::FileKind::proc ||
                              kind == schema::FileKind::shm_file;
      if (positioned && std::stoull(info("pos")) != f.pos)
        differ(what + ": offset " + info("pos") + ", saved " + std::to_string(f.pos));
      // Locks through this description, as this process sees them: once per description.
      if (!locks_seen.insert({fd.file_id, fd.pid}).second) continue;
      event_state(what, f, text, info);
      if (static_cast<schema::FileKind>(f.kind) == schema::FileKind::unix_socket)
        unix_socket_state(what, f, fd.fd);
      std::multiset<std::string> want;
      for (const schema::LockRecord* lp : rows(by_file().locks, fd.file_id)) {
        const schema::LockRecord& l = *lp;
        if (l.kind == static_cast<uint32_t>(schema::LockKind::posix) && l.pid != r.pid) continue;
        static const char* kinds[] = {"FLOCK", "POSIX", "OFDLCK", "LEASE"};
        const char* mode = l.kind == static_cast<uint32_t>(schema::LockKind::lease)
                               ? (l.breaking ? "BREAKING" : "ACTIVE")
                               : "ADVISORY";
        const char* type = l.type == F_WRLCK ? "WRITE" : l.type == F_RDLCK ? "READ" : "UNLCK";
        want.insert(std::string(kinds[l.kind]) + " " + mode + " " + type + " " +
                    std::to_string(l.start) + " " +
                    (l.len == 0 ? std::string("EOF") : std::to_string(l.start + l.len - 1)));
      }
      auto got = lock_lines(text);
      if (got != want) differ(what + ": its locks differ from the saved ones");
    }
  }

  // The inode of the restored socket a saved description became (0: none).
  uint64_t restored_ino(int64_t file_id) {
    for (const schema::FdRecord* fdp : rows(by_file().fds, file_id)) {
      const schema::FdRecord& fd = *fdp;
      auto p = ctx_.by_pid.find(fd.pid);
      if (p == ctx_.by_pid.end()) continue;
      struct stat st {};
      if (::stat(proc::path(p->second->pid, "fd/" + std::to_string(fd.fd)).c_str(), &st) == 0)
        return st.st_ino;
    }
    return 0;
  }

  // What the kernel's socket diagnostics show of a Unix socket: its type, name, state,
  // shutdowns, peer, the bytes queued to it, a listener's backlog and waiting connections.
  void unix_socket_state(const std::string& what, const schema::FileRecord& f, int fd) {
    auto sock = by_file().sockets.find(f.id);
    const schema::SocketRecord* r = sock == by_file().sockets.end() ? nullptr : sock->second;
    struct stat st {};
    if (!r || ::stat(proc::path(p_.pid, "fd/" + std::to_string(fd)).c_str(), &st) != 0) {
      differ(what + ": its socket is missing");
      return;
    }
    if (!unix_read_) {
      unix_ = fds::unix_sockets();
      unix_read_ = true;
    }
    auto it = unix_.find(static_cast<uint32_t>(st.st_ino));
    if (it == unix_.end()) {
      differ(what + ": the kernel does not list it as a Unix socket");
      return;
    }
    if (st.st_uid != f.uid || st.st_gid != f.gid || (st.st_mode & 07777) != (f.mode & 07777))
      differ(what + ": the socket's owner or mode differs from the saved one");
    const fds::UnixDiag& d = it->second;
    const auto state = static_cast<schema::SocketState>(r->state);
    const bool listening = state == schema::SocketState::listening;
    const bool stream_like = r->type != SOCK_DGRAM;
    auto q = by_file().queued.find(f.id);
    const uint64_t queued = q == by_file().queued.end() ? 0 : q->second;
    if (d.type != r->type || std::vector<uint8_t>(d.name.begin(), d.name.end()) != r->name)
      differ(what + ": its type or name differs from the saved one");
    if (listening != (d.state == 10) ||
        (stream_like && (state == schema::SocketState::connected ||
                         state == schema::SocketState::closed_peer) && d.state != 1))
      differ(what + ": its state (" + std::to_string(d.state) + ") differs from the saved one");
    // A new connection to a listener outside the tree (--ext-unix-sk) is the listener's to
    // use at once: what it sends or shuts down on it is not the image's.
    const bool outside_stream = r->external && stream_like;
    if (d.shutdown != r->shutdown && state != schema::SocketState::closed_peer && !outside_stream)
      differ(what + ": shut down " + std::to_string(d.shutdown) + ", saved " + std::to_string(r->shutdown));
    if (listening && (d.wqueue != r->backlog || d.waiting.size() != r->waiting.size()))
      differ(what + ": a listener with backlog " + std::to_string(d.wqueue) + " and " +
             std::to_string(d.waiting.size()) + " waiting connections, saved " +
             std::to_string(r->backlog) + " and " + std::to_string(r->waiting.size()));
    if (!listening && stream_like && !outside_stream && d.rqueue != queued)
      differ(what + ": " + std::to_string(d.rqueue) + " bytes queued, saved " + std::to_string(queued));
    if (stream_like && r->peer_id >= 0 && d.peer != restored_ino(r->peer_id))
      differ(what + ": connected to another socket than the saved peer");
    // A peer outside the tree (--ext-unix-sk): whatever socket has its name now (a connection
    // still waiting in the listener's backlog has no peer to list).
    if (r->external && d.peer != 0) {
      auto peer = unix_.find(d.peer);
      if (peer == unix_.end() || std::vector<uint8_t>(peer->second.name.begin(), peer->second.name.end()) != r->peer_name)
        differ(what + ": not connected to its peer's name outside the tree");
    }
  }

  // What an event descriptor's fdinfo shows that can be compared exactly with the image (its
  // times move on, its counters are compared before the job runs).
  void event_state(const std::string& what, const schema::FileRecord& f, const std::string& text,
                   const std::function<std::string(const std::string&)>& info) {
    switch (static_cast<schema::FileKind>(f.kind)) {
      case schema::FileKind::eventfd:
        if (std::stoull(info("eventfd-count"), nullptr, 16) != f.count ||
            (info("eventfd-semaphore") == "1") != ((f.kind_flags & EFD_SEMAPHORE) != 0))
          differ(what + ": counter 0x" + info("eventfd-count") + ", saved " + std::to_string(f.count));
        break;
      case schema::FileKind::timerfd: {
        // An armed timer may have fired since it was armed again: more expirations, not fewer.
        const uint64_t ticks = std::stoull(info("ticks"));
        if (std::stoi(info("clockid")) != f.clock || ticks < f.count ||
            (f.value_ns == 0 && ticks != f.count) ||
            std::stoul(info("settime flags"), nullptr, 8) != f.kind_flags)
          differ(what + ": clock, expirations or settime flags differ from the saved ones");
        break;
      }
      case schema::FileKind::signalfd:
        if (std::stoull(info("sigmask"), nullptr, 16) != f.sigmask)
          differ(what + ": signal mask " + info("sigmask") + " differs from the saved one");
        break;
      case schema::FileKind::epoll: {
        std::multiset<std::tuple<int, uint32_t, uint64_t>> want, got;
        for (const schema::EpollRecord* e : rows(by_file().epoll, f.id))
          want.insert({e->tfd, e->events, e->data});
        std::istringstream in(text);
        std::string line, k1, k2, k3, events, data;
        int tfd = -1;
        while (std::getline(in, line)) {
          if (line.rfind("tfd:", 0) != 0) continue;
          std::istringstream l(line);
          l >> k1 >> tfd >> k2 >> events >> k3 >> data;
          got.insert({tfd, static_cast<uint32_t>(std::stoul(events, nullptr, 16)),
                      std::stoull(data, nullptr, 16)});
        }
        if (got != want) {
          auto list = [](const auto& set) {
            std::string out;
            for (auto& [t, ev, d] : set)
              out += " " + std::to_string(t) + "/" + std::to_string(ev) + "/" + std::to_string(d);
            return out.empty() ? std::string(" none") : out;
          };
          differ(what + ": its epoll targets (fd/events/data:" + list(got) + ") differ from the saved"
                 " ones (" + list(want).substr(1) + ")");
        }
        break;
      }
      case schema::FileKind::inotify: {
        std::set<std::pair<int, uint32_t>> want, got;
        for (auto& w : ctx_.meta.inotify)
          if (w.file_id == f.id) want.insert({w.wd, w.mask});
        std::istringstream in(text);
        std::string line;
        while (std::getline(in, line)) {
          if (line.rfind("inotify wd:", 0) != 0) continue;
          int wd = std::stoi(line.substr(11));
          auto m = line.find(" mask:");
          got.insert({wd, static_cast<uint32_t>(std::stoul(line.substr(m + 6), nullptr, 16))});
        }
        if (got != want) differ(what + ": its inotify watches differ from the saved ones");
        break;
      }
      default:
        break;
    }
  }

  void timers() {
    std::set<int32_t> want, got;
    for (auto* t : ctx_.rows_of(ctx_.meta.timers, p_.rec->pid)) want.insert(t->id);
    std::istringstream in(fs::read_file(proc::path(p_.pid, "timers")));
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("ID: ", 0) == 0) got.insert(std::stoi(line.substr(4)));
    if (got != want) differ("its POSIX timers differ from the saved ones");
  }

  void misc() {
    const auto& r = *p_.rec;
    auto read = [&](const char* leaf) {
      std::string s = fs::read_file(proc::path(p_.pid, leaf));
      while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
      return s;
    };
    if (read("oom_score_adj") != std::to_string(r.oom_score_adj))
      differ("oom_score_adj " + read("oom_score_adj") + ", saved " + std::to_string(r.oom_score_adj));
    std::string login;
    if (fs::read_file_if_exists(proc::path(p_.pid, "loginuid"), login) &&
        static_cast<uint32_t>(std::stoul(login)) != r.loginuid)
      differ("loginuid " + login + ", saved " + std::to_string(r.loginuid));
    if (!(r.flags & schema::kProcessCwdDeleted)) {
      std::string cwd = proc::readlink(proc::path(p_.pid, "cwd"));
      if (cwd != r.cwd) differ("working directory " + cwd + ", saved " + r.cwd);
    }
  }

  RestoreContext& ctx_;
  RestoredProcess& p_;
  std::string who_;
  std::vector<std::string> diffs_;
  std::map<uint32_t, fds::UnixDiag> unix_;
  bool unix_read_ = false;
  const ByFile* by_file_ = nullptr;
};

}  // namespace

void verify_restored(RestoreContext& ctx, RestoredProcess& p) {
  auto diffs = Checker(ctx, p).run();
  if (diffs.empty()) return;
  std::string msg = "the restored process would differ from the checkpoint (" +
                    std::to_string(diffs.size()) + (diffs.size() == 1 ? " difference" : " differences") +
                    "); it was not let run:";
  for (size_t i = 0; i < diffs.size() && i < 50; ++i) msg += "\n  " + diffs[i];
  fail(Errc::mismatch, msg);
}

}  // namespace crest
