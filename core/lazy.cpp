// Lazy restore's page server and its guardian. See lazy.h.
#include "core/lazy.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest {
namespace {

constexpr uint64_t kPage = schema::kPageSize;
constexpr uint64_t kFaultAround = 16;  // pages served per fault, when the image has them
constexpr size_t kCachedChunks = 8;

int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// ---- the guardian ------------------------------------------------------------------------------
// A fork of a process that may have threads: raw system calls only, no allocation.

enum GuardOp : int { kHold = 1, kWatch = 2, kDone = 3, kKill = 4 };
struct GuardMsg {
  int op;
  pid_t pid;
};

void put_str(const char* s) { (void)!::write(2, s, ::strlen(s)); }
void put_num(long v) {
  char buf[24];
  int i = sizeof buf;
  bool neg = v < 0;
  unsigned long u = neg ? static_cast<unsigned long>(-v) : static_cast<unsigned long>(v);
  do {
    buf[--i] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u && i > 1);
  if (neg) buf[--i] = '-';
  (void)!::write(2, buf + i, sizeof buf - static_cast<size_t>(i));
}

constexpr int kMaxPids = 8192;

// Adds the children of every thread of `pid` to pids[] (stopping each), once each.
void add_children(pid_t pid, pid_t* pids, int& n) {
  char path[64] = "/proc/";
  auto append_num = [](char* p, long v) {
    char tmp[24];
    int i = 0;
    do {
      tmp[i++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v);
    while (i) *p++ = tmp[--i];
    *p = 0;
    return p;
  };
  char* e = append_num(path + 6, pid);
  ::memcpy(e, "/task", 6);
  int dir = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  alignas(8) char ents[4096];
  for (;;) {
    long got = ::syscall(SYS_getdents64, dir, ents, sizeof ents);
    if (got <= 0) break;
    for (long off = 0; off < got;) {
      auto* d = reinterpret_cast<struct dirent64*>(ents + off);
      off += d->d_reclen;
      if (d->d_name[0] < '0' || d->d_name[0] > '9') continue;
      char cpath[96];
      ::memcpy(cpath, path, static_cast<size_t>(e - path) + 5);
      char* q = cpath + (e - path) + 5;
      *q++ = '/';
      size_t l = ::strlen(d->d_name);
      ::memcpy(q, d->d_name, l);
      ::memcpy(q + l, "/children", 10);
      int cf = ::open(cpath, O_RDONLY | O_CLOEXEC);
      if (cf < 0) continue;
      char buf[4096];
      long r = ::read(cf, buf, sizeof buf - 1);
      ::close(cf);
      if (r <= 0) continue;
      long v = 0;
      bool in = false;
      for (long i = 0; i <= r; ++i) {
        char c = i < r ? buf[i] : ' ';
        if (c >= '0' && c <= '9') {
          v = v * 10 + (c - '0');
          in = true;
        } else if (in) {
          bool seen = false;
          for (int k = 0; k < n; ++k) seen |= pids[k] == v;
          if (!seen && n < kMaxPids) {
            ::kill(static_cast<pid_t>(v), SIGSTOP);
            pids[n++] = static_cast<pid_t>(v);
          }
          v = 0;
          in = false;
        }
      }
    }
  }
  ::close(dir);
}

// Stops every watched process, finds all their descendants (stopped too, so none forks in
// between), then kills them all.
void kill_tree(pid_t* pids, int* pidfds, int nwatched) {
  for (int i = 0; i < nwatched; ++i) ::syscall(SYS_pidfd_send_signal, pidfds[i], SIGSTOP, nullptr, 0);
  int n = nwatched;
  for (int i = 0; i < n; ++i) add_children(pids[i], pids, n);
  for (int i = 0; i < nwatched; ++i) ::syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, nullptr, 0);
  for (int i = nwatched; i < n; ++i) ::kill(pids[i], SIGKILL);
}

[[noreturn]] void run_guardian(int sock, int server_pidfd) {
  ::setsid();  // not in the terminal's process group: a ^C for crest is not one for us
  static pid_t pids[kMaxPids];
  static int pidfds[kMaxPids];
  int nwatched = 0;
  for (;;) {
    pollfd pf[2] = {{sock, POLLIN, 0}, {server_pidfd, POLLIN, 0}};
    int r = ::poll(pf, 2, -1);
    if (r < 0) continue;
    if (pf[0].revents & POLLIN) {
      GuardMsg m{};
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
      iovec iov{&m, sizeof m};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = cbuf;
      mh.msg_controllen = sizeof cbuf;
      ssize_t got = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
      if (got == static_cast<ssize_t>(sizeof m)) {
        int fd = -1;
        for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
          if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            ::memcpy(&fd, CMSG_DATA(c), sizeof fd);
        if (m.op == kDone) ::_exit(0);
        if (m.op == kWatch && fd >= 0 && nwatched < kMaxPids / 2) {
          pids[nwatched] = m.pid;
          pidfds[nwatched++] = fd;
        }
        // kHold: keeping the descriptor open is all.
        if (m.op == kKill) {
          kill_tree(pids, pidfds, nwatched);
          ::_exit(0);
        }
        continue;
      }
      if (got > 0) continue;
      // End of the socket: the server closed it or is gone; its pidfd tells which.
      pf[0].fd = -1;
      sock = -1;
    }
    if ((pf[1].revents & (POLLIN | POLLHUP)) || sock < 0) {
      if (sock < 0) {
        // Wait for the server's end proper (an exec'd or exiting server closes the socket).
        pollfd p{server_pidfd, POLLIN, 0};
        ::poll(&p, 1, -1);
      }
      if (nwatched > 0) {
        put_str("crest: the lazy restore's page server died with pages of the job still to "
                "serve; killing the job (");
        put_num(nwatched);
        put_str(" processes and their children)\n");
        kill_tree(pids, pidfds, nwatched);
      }
      ::_exit(1);
    }
  }
}

// ---- the server --------------------------------------------------------------------------------

// Pages still to fill of one mm: address range -> where their bytes are in the image.
struct Seg {
  uint64_t end;
  uint32_t depth;
  uint64_t row;  // the row in /pages/data of the file at `depth` of the first page
};

struct Space {
  pid_t pid = 0;
  UniqueFd uffd;
  std::map<uint64_t, Seg> pending;
  // Pages an UNMAP event took away: an mremap reports the unmapping of its old range too, and
  // the kernel does not promise which of the two events comes first; the REMAP takes them back.
  std::map<uint64_t, Seg> unmapped;
  bool gone = false;
  // Pages a copy set aside since the last REMAP or UNMAP event was read (fill(), ENOENT): an
  // mremap's event may be on its way, and must be read before the server may end.
  bool awaiting_event = false;
};

// Removes [s, e) from `m`, splitting segments.
void erase_range(std::map<uint64_t, Seg>& m, uint64_t s, uint64_t e) {
  auto it = m.lower_bound(s);
  if (it != m.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > s) it = prev;
  }
  while (it != m.end() && it->first < e) {
    uint64_t a = it->first;
    Seg seg = it->second;
    it = m.erase(it);
    if (a < s) m[a] = {s, seg.depth, seg.row};
    if (seg.end > e) m[e] = {seg.end, seg.depth, seg.row + (e - a) / kPage};
  }
}

// The pending segment holding addr, or end().
std::map<uint64_t, Seg>::iterator find_seg(std::map<uint64_t, Seg>& m, uint64_t addr) {
  auto it = m.upper_bound(addr);
  if (it == m.begin()) return m.end();
  --it;
  return addr < it->second.end ? it : m.end();
}

// Moves the pending pages of [a0, e0) to s.unmapped: what an UNMAP event took away, or what a
// copy found no registered mapping for (see fill()). A REMAP over them takes them back.
void set_aside(Space& s, uint64_t a0, uint64_t e0) {
  auto it = s.pending.lower_bound(a0);
  if (it != s.pending.begin() && std::prev(it)->second.end > a0) it = std::prev(it);
  for (; it != s.pending.end() && it->first < e0; ++it) {
    uint64_t a = std::max(it->first, a0), e = std::min(it->second.end, e0);
    erase_range(s.unmapped, a, e);
    s.unmapped[a] = {e, it->second.depth, it->second.row + (a - it->first) / kPage};
  }
  erase_range(s.pending, a0, e0);
}

}  // namespace

struct LazyPages::Impl {
  storage::CheckpointReader& reader;
  UniqueFd guard_sock;
  pid_t guardian = -1;
  UniqueFd wake;  // eventfd: new spaces, release, stop

  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Space>> incoming;  // added, not yet taken by the thread
  bool is_released = false;
  bool stop = false;
  bool finished = false;
  std::string error;
  Stats st;

  std::thread thread;
  // Thread-only state.
  std::vector<std::unique_ptr<Space>> spaces;
  struct Cached {
    uint32_t depth;
    uint64_t chunk;
    uint64_t used;
    std::vector<std::byte> data;
  };
  std::vector<Cached> cache;
  uint64_t clock = 0;
  struct Work {
    Space* space;
    uint64_t start, end;
  };
  std::deque<Work> work;
  struct Fault {
    Space* space;
    uint64_t addr;
  };
  std::deque<Fault> faults;
  int64_t grace_until_ns = 0;  // loop(): until when an awaited event may still come

  explicit Impl(storage::CheckpointReader& r) : reader(r) {}

  void send(GuardOp op, pid_t pid, int fd) {
    if (!guard_sock) return;
    GuardMsg m{op, pid};
    iovec iov{&m, sizeof m};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
    if (fd >= 0) {
      mh.msg_control = cbuf;
      mh.msg_controllen = sizeof cbuf;
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      ::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    if (::sendmsg(guard_sock.get(), &mh, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof m))
      throw_errno("cannot reach the lazy restore's guardian", errno, Errc::kernel);
  }

  // Everything is resident: the guardian lets go of its copies and leaves.
  void dismiss_guardian() {
    if (guardian <= 0) return;
    try {
      send(kDone, 0, -1);
    } catch (...) {
    }
    int status;
    ::waitpid(guardian, &status, 0);
    guardian = -1;
    guard_sock.reset();
  }

  void poke() {
    uint64_t one = 1;
    (void)!::write(wake.get(), &one, sizeof one);
  }

  const std::byte* chunk_data(uint32_t depth, uint64_t chunk) {
    ++clock;
    for (auto& c : cache)
      if (c.depth == depth && c.chunk == chunk) {
        c.used = clock;
        return c.data.data();
      }
    Cached* slot;
    if (cache.size() < kCachedChunks) {
      cache.push_back({depth, chunk, clock, std::vector<std::byte>(schema::kChunkBytes)});
      slot = &cache.back();
    } else {
      slot = &*std::min_element(cache.begin(), cache.end(),
                                [](const Cached& a, const Cached& b) { return a.used < b.used; });
    }
    slot->depth = depth;
    slot->chunk = ~uint64_t{0};  // invalid until read
    reader.read_chunk(depth, chunk, slot->data.data());
    slot->chunk = chunk;
    slot->used = clock;
    return slot->data.data();
  }

  enum class Fill { done, again, gone };

  // Fills up to `max` pages from `addr` (pending) in one ioctl; `filled` says how many.
  Fill fill(Space& s, uint64_t addr, uint64_t max, uint64_t& filled) {
    filled = 0;
    auto it = find_seg(s.pending, addr);
    if (it == s.pending.end()) return Fill::done;
    const Seg seg = it->second;
    uint64_t row = seg.row + (addr - it->first) / kPage;
    uint64_t slot = row % schema::kChunkPages;
    uint64_t n = std::min({max, (seg.end - addr) / kPage, schema::kChunkPages - slot});
    const std::byte* data = chunk_data(seg.depth, row / schema::kChunkPages) + slot * kPage;
    uffdio_copy c{};
    c.dst = addr;
    c.src = reinterpret_cast<uint64_t>(data);
    c.len = n * kPage;
    int rc = ::ioctl(s.uffd.get(), UFFDIO_COPY, &c);
    int err = errno;
    uint64_t done = c.copy > 0 ? static_cast<uint64_t>(c.copy) / kPage : 0;
    if (rc == 0) done = n;
    if (done) erase_range(s.pending, addr, addr + done * kPage);
    filled = done;
    if (rc == 0 || done) return Fill::done;
    if (err == EAGAIN) return Fill::again;  // an event (fork, remap, remove) to read first
    if (err == ENOENT && n > 1) {
      // The pages run on across two mappings (a VMA split or moved since the image's run was
      // one): one ioctl may not cross, so one page at a time there.
      return fill(s, addr, 1, filled);
    }
    if (err == EEXIST) {
      // There already (a racing fault): nothing of ours to put there.
      erase_range(s.pending, addr, addr + kPage);
      filled = 1;
      return Fill::done;
    }
    if (err == ENOENT) {
      // No registered mapping there now: unmapped, or moved by an mremap whose REMAP event is
      // still to be read (the kernel looks the mapping up before it checks for such events, so
      // this is not EAGAIN). Dropping the page would lose it when the event moves the range
      // elsewhere: it is set aside like an unmapped page, and the REMAP takes it back.
      set_aside(s, addr, addr + kPage);
      s.awaiting_event = true;
      filled = 1;
      return Fill::done;
    }
    if (err == ESRCH) return Fill::gone;  // the mm is gone (exit, exec)
    throw_errno("UFFDIO_COPY of " + std::to_string(n) + " pages at " + std::to_string(addr) +
                    " in process " + std::to_string(s.pid),
                err, Errc::kernel);
  }

  void drop(Space& s) {
    s.gone = true;
    s.pending.clear();
  }

  // Reads every message of one userfaultfd; events first change what is pending.
  void read_messages(Space& s) {
    uffd_msg msgs[64];
    for (;;) {
      ssize_t got = ::read(s.uffd.get(), msgs, sizeof msgs);
      if (got < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        throw_errno("reading the userfaultfd of process " + std::to_string(s.pid), errno,
                    Errc::kernel);
      }
      if (got == 0) return;
      for (ssize_t i = 0; i < got / static_cast<ssize_t>(sizeof(uffd_msg)); ++i) {
        const uffd_msg& m = msgs[i];
        switch (m.event) {
          case UFFD_EVENT_PAGEFAULT:
            faults.push_back({&s, m.arg.pagefault.address & ~(kPage - 1)});
            break;
          case UFFD_EVENT_FORK: {
            // The child has the parent's memory; what the parent had not got yet the child has
            // not either, and gets from the image like it.
            auto child = std::make_unique<Space>();
            child->uffd.reset(static_cast<int>(m.arg.fork.ufd));
            int fl = ::fcntl(child->uffd.get(), F_GETFL);
            ::fcntl(child->uffd.get(), F_SETFL, fl | O_NONBLOCK);
            child->pid = s.pid;  // for messages: the parent's
            child->pending = s.pending;
            send(kHold, 0, child->uffd.get());
            for (auto& [a, seg] : child->pending) work.push_back({child.get(), a, seg.end});
            log::get("core.lazy")->debug("process {} forked while pages were still missing",
                                         s.pid);
            spaces.push_back(std::move(child));
            break;
          }
          case UFFD_EVENT_REMAP: {
            s.awaiting_event = false;
            uint64_t from = m.arg.remap.from, to = m.arg.remap.to, len = m.arg.remap.len;
            std::vector<std::pair<uint64_t, Seg>> moved;
            for (auto* src : {&s.pending, &s.unmapped}) {
              for (auto it = src->begin(); it != src->end(); ++it) {
                if (it->second.end <= from) continue;
                if (it->first >= from + len) break;
                uint64_t a = std::max(it->first, from), e = std::min(it->second.end, from + len);
                moved.push_back({a - from + to, {e - from + to, it->second.depth,
                                                 it->second.row + (a - it->first) / kPage}});
              }
              erase_range(*src, from, from + len);
            }
            erase_range(s.pending, to, to + len);
            erase_range(s.unmapped, to, to + len);
            for (auto& [a, seg] : moved) {
              s.pending[a] = seg;
              work.push_back({&s, a, seg.end});
            }
            break;
          }
          case UFFD_EVENT_UNMAP:
            s.awaiting_event = false;
            set_aside(s, m.arg.remove.start, m.arg.remove.end);
            break;
          case UFFD_EVENT_REMOVE:
            // Freed (MADV_DONTNEED / MADV_REMOVE) pages read as zeros from now on.
            erase_range(s.pending, m.arg.remove.start, m.arg.remove.end);
            erase_range(s.unmapped, m.arg.remove.start, m.arg.remove.end);
            break;
          default:
            break;
        }
      }
    }
  }

  // Serves queued faults; false if one must wait for an event to be read first.
  bool serve_faults() {
    while (!faults.empty()) {
      Fault f = faults.front();
      Space& s = *f.space;
      if (s.gone) {
        faults.pop_front();
        continue;
      }
      if (find_seg(s.pending, f.addr) != s.pending.end()) {
        uint64_t n;
        Fill r = fill(s, f.addr, kFaultAround, n);
        if (r == Fill::again) return false;
        if (r == Fill::gone) drop(s);
        std::lock_guard lock(mu);
        st.pages_faulted += n;
      } else {
        // A page the image does not hold (never touched, or zero) or one the program freed:
        // zeros, as in fresh anonymous memory.
        uffdio_zeropage z{};
        z.range = {f.addr, kPage};
        if (::ioctl(s.uffd.get(), UFFDIO_ZEROPAGE, &z) != 0) {
          if (errno == EAGAIN) return false;
          if (errno == ESRCH) drop(s);
          else if (errno != EEXIST && errno != ENOENT)
            throw_errno("UFFDIO_ZEROPAGE at " + std::to_string(f.addr) + " in process " +
                            std::to_string(s.pid),
                        errno, Errc::kernel);
        }
      }
      if (!s.gone) {
        // Whatever happened, the faulting thread looks again (a page filled by someone else
        // meanwhile, or one that EEXIST said is there, wakes nobody by itself).
        uffdio_range w{f.addr, kPage};
        ::ioctl(s.uffd.get(), UFFDIO_WAKE, &w);
      }
      faults.pop_front();
      std::lock_guard lock(mu);
      st.faults++;
    }
    return true;
  }

  // One chunk's worth of prefetch; false if it must wait for an event.
  bool prefetch_step() {
    while (!work.empty()) {
      Work& w = work.front();
      Space& s = *w.space;
      if (s.gone || w.start >= w.end) {
        work.pop_front();
        continue;
      }
      auto it = s.pending.lower_bound(w.start);
      if (it != s.pending.begin() && std::prev(it)->second.end > w.start) --it;
      if (it == s.pending.end() || it->first >= w.end) {
        work.pop_front();
        continue;
      }
      uint64_t a = std::max(it->first, w.start);
      uint64_t n;
      Fill r = fill(s, a, schema::kChunkPages, n);
      if (r == Fill::again) return false;
      if (r == Fill::gone) {
        drop(s);
        continue;
      }
      w.start = a + n * kPage;
      std::lock_guard lock(mu);
      st.pages_prefetched += n;
      return true;
    }
    // Work lost its place (remaps): whatever is still pending, again.
    for (auto& sp : spaces)
      for (auto& [a, seg] : sp->pending) work.push_back({sp.get(), a, seg.end});
    return true;
  }

  bool all_resident() const {
    for (auto& s : spaces)
      if (!s->pending.empty()) return false;
    return true;
  }

  void take_incoming() {
    std::vector<std::unique_ptr<Space>> in;
    {
      std::lock_guard lock(mu);
      in.swap(incoming);
    }
    for (auto& s : in) {
      // Newest file of the chain first (the pages the job wrote last), then by address.
      spaces.push_back(std::move(s));
    }
    if (!in.empty()) {
      work.clear();
      std::vector<Work> all;
      std::vector<uint32_t> depths;
      for (auto& sp : spaces)
        for (auto& [a, seg] : sp->pending) depths.push_back(seg.depth);
      std::sort(depths.begin(), depths.end());
      depths.erase(std::unique(depths.begin(), depths.end()), depths.end());
      for (uint32_t d : depths)
        for (auto& sp : spaces)
          for (auto& [a, seg] : sp->pending)
            if (seg.depth == d) work.push_back({sp.get(), a, seg.end});
    }
  }

  void loop() {
    for (;;) {
      bool rel;
      {
        std::lock_guard lock(mu);
        if (stop) return;
        rel = is_released;
      }
      take_incoming();
      // Done once all is resident, unless a page set aside may come back with an mremap's
      // event still on its way (its mremap posts it right after moving the pages; the server
      // ending first would leave the page to be filled with zeros): up to a second is given
      // for it, after which the page is taken to be unmapped for good.
      int timeout = -1;
      const bool grace = rel && all_resident() && faults.empty();
      if (grace) {
        if (std::none_of(spaces.begin(), spaces.end(),
                         [](const auto& s) { return !s->gone && s->awaiting_event; }))
          return;
        const int64_t now = now_ns();
        if (!grace_until_ns) grace_until_ns = now + 1'000'000'000;
        if (now >= grace_until_ns) return;
        timeout = static_cast<int>((grace_until_ns - now) / 1'000'000) + 1;
      } else {
        grace_until_ns = 0;
      }
      std::vector<pollfd> pf;
      pf.push_back({wake.get(), POLLIN, 0});
      for (auto& s : spaces) pf.push_back({s->gone ? -1 : s->uffd.get(), POLLIN, 0});
      bool busy = rel && !all_resident();
      if (timeout < 0 && (busy || !faults.empty())) timeout = 0;
      int r = ::poll(pf.data(), pf.size(), timeout);
      if (r < 0 && errno != EINTR) throw_errno("poll of the userfaultfds", errno, Errc::kernel);
      if (grace && r == 0) return;  // no event came: those pages were unmapped for good
      if (pf[0].revents & POLLIN) {
        uint64_t v;
        (void)!::read(wake.get(), &v, sizeof v);
      }
      size_t nspaces = spaces.size();  // a fork event appends
      for (size_t i = 0; i < nspaces; ++i)
        if (!spaces[i]->gone && (pf[i + 1].revents & POLLIN)) read_messages(*spaces[i]);
      if (!serve_faults()) continue;
      if (rel && faults.empty()) prefetch_step();
    }
  }

  void run() {
    try {
      loop();
    } catch (const std::exception& e) {
      std::string what = e.what();
      log::get("core.lazy")->error("lazy restore failed: {}; killing the job", what);
      try {
        send(kKill, 0, -1);
      } catch (...) {
      }
      int status;
      if (guardian > 0) ::waitpid(guardian, &status, 0);
      guardian = -1;
      std::lock_guard lock(mu);
      error = "lazy restore: " + what + " (the job was killed)";
    }
    // Done (or killed): the registrations end with our descriptors.
    for (auto& s : spaces) s->uffd.reset();
    dismiss_guardian();
    std::lock_guard lock(mu);
    if (!st.resident_ns) st.resident_ns = now_ns();
    finished = true;
    cv.notify_all();
  }
};

LazyPages::LazyPages(storage::CheckpointReader& reader) : impl_(std::make_unique<Impl>(reader)) {
  impl_->wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl_->wake) throw_errno("eventfd", errno, Errc::kernel);
  UniqueFd self = proc::open_pidfd(::getpid());
  if (!self) throw_errno("pidfd_open of crest", errno, Errc::kernel);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    throw_errno("socketpair", errno, Errc::kernel);
  pid_t g = ::fork();
  if (g == 0) {
    ::close(sv[0]);
    // Nothing of crest's but the socket, the pidfd and stderr (a pipe a caller reads to its end
    // must not stay open in us).
    int nul = ::open("/dev/null", O_RDWR);
    if (nul >= 0) {
      ::dup2(nul, 0);
      ::dup2(nul, 1);
    }
    int sock = sv[1];
    int pfd = self.get();
    unsigned lo = static_cast<unsigned>(std::min(sock, pfd)), hi = static_cast<unsigned>(std::max(sock, pfd));
    if (lo > 3) ::close_range(3, lo - 1, 0);
    if (hi > lo + 1) ::close_range(lo + 1, hi - 1, 0);
    ::close_range(hi + 1, ~0U, 0);
    run_guardian(sock, pfd);
  }
  ::close(sv[1]);
  if (g < 0) {
    ::close(sv[0]);
    throw_errno("fork of the lazy restore's guardian", errno, Errc::kernel);
  }
  impl_->guard_sock.reset(sv[0]);
  impl_->guardian = g;
}

LazyPages::~LazyPages() {
  {
    std::lock_guard lock(impl_->mu);
    if (!impl_->is_released) impl_->stop = true;
  }
  impl_->poke();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->dismiss_guardian();
}

void LazyPages::add(pid_t pid, UniqueFd uffd, const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
                    uint64_t owner) {
  auto s = std::make_unique<Space>();
  s->pid = pid;
  impl_->send(kHold, pid, uffd.get());
  s->uffd = std::move(uffd);
  int fl = ::fcntl(s->uffd.get(), F_GETFL);
  ::fcntl(s->uffd.get(), F_SETFL, fl | O_NONBLOCK);
  // The data pages of the image inside the registered ranges. Zero pages and pages the image
  // does not hold are not filled: untouched anonymous memory, as an eager restore leaves it.
  const auto runs = impl_->reader.owner_runs(owner);
  uint64_t pages = 0;
  for (auto& [rs, re] : ranges) {
    for (auto it = runs.begin(); it != runs.end(); ++it) {
      uint64_t a = std::max(it->addr, rs), e = std::min(it->addr + it->npages * kPage, re);
      if (a >= e) continue;
      if (it->kind == static_cast<uint32_t>(schema::PageKind::cow_parent))
        fail(Errc::internal, "a lazily restored range holds pages shared with the parent");
      if (it->kind != static_cast<uint32_t>(schema::PageKind::data)) continue;
      s->pending[a] = {e, it->depth, it->pos + (a - it->addr) / kPage};
      pages += (e - a) / kPage;
    }
  }
  {
    std::lock_guard lock(impl_->mu);
    impl_->st.pages_total += pages;
    impl_->incoming.push_back(std::move(s));
  }
  if (!impl_->thread.joinable()) impl_->thread = std::thread([this] { impl_->run(); });
  impl_->poke();
}

void LazyPages::watch(pid_t pid) {
  UniqueFd pidfd = proc::open_pidfd(pid);
  if (!pidfd) throw_errno("pidfd_open of restored process " + std::to_string(pid), errno, Errc::kernel);
  impl_->send(kWatch, pid, pidfd.get());
}

void LazyPages::released() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->is_released = true;
    impl_->st.released_ns = now_ns();
  }
  if (!impl_->thread.joinable()) {
    impl_->dismiss_guardian();  // nothing was lazy
    std::lock_guard lock(impl_->mu);
    impl_->finished = true;
    impl_->st.resident_ns = impl_->st.released_ns;
  }
  impl_->poke();
}

void LazyPages::wait() {
  if (impl_->thread.joinable()) {
    std::unique_lock lock(impl_->mu);
    impl_->cv.wait(lock, [&] { return impl_->finished; });
  }
  if (impl_->thread.joinable()) impl_->thread.join();
  std::lock_guard lock(impl_->mu);
  if (!impl_->error.empty()) fail(Errc::io, impl_->error);
}

bool LazyPages::empty() const {
  std::lock_guard lock(impl_->mu);
  return impl_->st.pages_total == 0;
}

LazyPages::Stats LazyPages::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->st;
}

}  // namespace crest
