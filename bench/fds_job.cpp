// crest-bench-fds-job: the job crest-bench-fds checkpoints — a tree of a few processes holding
// many descriptors of mixed kinds, laid out deterministically, that checks its own descriptors
// on request.
//
//   crest-bench-fds-job FDS PROCS DIR
//     fd 0 /dev/null, fds 1 and 2 DIR/job.log, fd 3 the write end of the benchmark's ready pipe
//
// FDS is the number of descriptors in the whole tree: the sum over its PROCS processes of their
// fd tables, stdio included. The root first makes a shared set (1/8 of the descriptors, counted
// in every table) that its children inherit — the same open file descriptions in PROCS tables —
// then forks PROCS-1 children, and every process makes its own private set. A set cycles through
//   pipe (2 fds, half with 1-16 bytes buffered), Unix stream socketpair (2 fds, a third with a
//   few bytes queued one way, a quarter the other way), eventfd x2 (counts 0-99, some semaphore),
//   timerfd x2 (monotonic or realtime, most armed an hour out, some with an interval), epoll x2
//   (each with 3 level-triggered watches on the set's latest eventfds, pipes, sockets and
//   timerfds), regular file x2 (one of 64 files in DIR/files, read-only or read-write, at an
//   offset), memfd x2 (0-3 KiB, 16 bytes written)
// with close-on-exec and O_NONBLOCK on some of each. When every process is done, the root writes
//   "READY <pid> x PROCS <fds of each process> x PROCS <ns the root took for its private set>
//    <fds in it>\n"
// to fd 3 and closes it. Then every process waits for SIGUSR1 (blocked, taken with sigwaitinfo);
// on each, process i checks every descriptor it made against what it made (/proc/self/fd count,
// kind, close-on-exec, buffered and queued bytes, eventfd count, timer interval and arming,
// epoll watch count, file offset, memfd size) and writes "ok <fds>" or "bad <what>" to
// DIR/verify.<i> (through a temporary name, renamed).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

enum Kind : uint8_t { pipe_r, pipe_w, sock, event, timer, epoll, regular, memfd };

struct Entry {
  int fd;
  Kind kind;
  bool cloexec;
  int64_t expect;   // pipe_r/sock: bytes to read; event: count; timer: interval s; epoll: watches;
                    // regular: offset; memfd: size
  int64_t expect2;  // timer: armed; regular: file index
};

constexpr int kFiles = 64;
constexpr int kFileBytes = 8192;

std::string g_dir;
std::vector<Entry> g_table;  // this process's descriptors beyond stdio

[[noreturn]] void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "crest-bench-fds-job[%d]: ", ::getpid());
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, ": %s\n", std::strerror(errno));
  va_end(ap);
  std::_Exit(3);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool write_full(int fd, const void* buf, size_t len) {
  auto* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

std::string file_path(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "/files/f%02d", i);
  return g_dir + buf;
}

void add(int fd, Kind k, bool cloexec, int64_t e = 0, int64_t e2 = 0) {
  if (fd < 0) die("making a descriptor of kind %d", static_cast<int>(k));
  g_table.push_back({fd, k, cloexec, e, e2});
}

// Makes `n` descriptors; `salt` varies the values between the sets.
void make_set(int n, int salt) {
  static const Kind cycle[] = {pipe_r, sock, event, event, timer, timer, epoll,
                               epoll,  regular, regular, memfd, memfd};
  int last_event[2] = {-1, -1}, last_pipe_r = -1, last_pipe_w = -1, last_sock = -1,
      last_timer = -1;
  int made = 0;
  for (int u = 0; made < n; ++u) {
    const int k = u + salt;
    Kind kind = cycle[u % (sizeof cycle / sizeof cycle[0])];
    if ((kind == pipe_r || kind == sock) && n - made < 2) kind = event;
    const bool ce = k % 3 == 0;
    switch (kind) {
      case pipe_r: {
        int p[2];
        if (::pipe2(p, (ce ? O_CLOEXEC : 0) | (k % 5 == 0 ? O_NONBLOCK : 0)) != 0) die("pipe2");
        int64_t bytes = k % 2 == 0 ? k % 16 + 1 : 0;
        if (bytes && !write_full(p[1], "0123456789abcdefg", static_cast<size_t>(bytes)))
          die("write to a pipe");
        add(p[0], pipe_r, ce, bytes);
        add(p[1], pipe_w, ce);
        last_pipe_r = p[0];
        last_pipe_w = p[1];
        made += 2;
        break;
      }
      case sock: {
        int s[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | (ce ? SOCK_CLOEXEC : 0), 0, s) != 0)
          die("socketpair");
        int64_t to_b = k % 3 == 0 ? k % 7 + 1 : 0, to_a = k % 4 == 0 ? 3 : 0;
        if (to_b && !write_full(s[0], "queued!", static_cast<size_t>(to_b))) die("send");
        if (to_a && !write_full(s[1], "abc", static_cast<size_t>(to_a))) die("send");
        add(s[0], sock, ce, to_a);
        add(s[1], sock, ce, to_b);
        last_sock = s[k % 2];
        made += 2;
        break;
      }
      case event: {
        unsigned count = k % 4 ? static_cast<unsigned>(k % 100) : 0;
        int fl = (k % 4 == 1 ? EFD_SEMAPHORE : 0) | (ce ? EFD_CLOEXEC : 0) | (k % 2 ? EFD_NONBLOCK : 0);
        int fd = ::eventfd(count, fl);
        add(fd, event, ce, count);
        last_event[1] = last_event[0];
        last_event[0] = fd;
        made += 1;
        break;
      }
      case timer: {
        int fd = ::timerfd_create(k % 4 == 3 ? CLOCK_REALTIME : CLOCK_MONOTONIC,
                                  (ce ? TFD_CLOEXEC : 0) | (k % 2 ? TFD_NONBLOCK : 0));
        if (fd < 0) die("timerfd_create");
        bool armed = k % 5 != 0;
        int64_t interval = armed && k % 2 ? 3600 : 0;
        if (armed) {
          itimerspec its{};
          its.it_value.tv_sec = 3600 + k % 60;
          its.it_interval.tv_sec = interval;
          if (::timerfd_settime(fd, 0, &its, nullptr) != 0) die("timerfd_settime");
        }
        add(fd, timer, ce, interval, armed);
        last_timer = fd;
        made += 1;
        break;
      }
      case epoll: {
        int ep = ::epoll_create1(ce ? EPOLL_CLOEXEC : 0);
        if (ep < 0) die("epoll_create1");
        // Odd units watch the latest eventfd, pipe read end and socket; even ones the one but
        // latest eventfd, the latest timerfd and pipe write end.
        struct Watch {
          int fd;
          uint32_t events;
        };
        std::vector<Watch> w;
        if (k % 2) {
          w = {{last_event[0], EPOLLIN}, {last_pipe_r, EPOLLIN}, {last_sock, EPOLLIN | EPOLLRDHUP}};
        } else {
          w = {{last_event[1], EPOLLIN}, {last_timer, EPOLLIN}, {last_pipe_w, EPOLLOUT}};
        }
        int64_t watches = 0;
        for (auto& x : w) {
          if (x.fd < 0) continue;
          epoll_event ev{};
          ev.events = x.events;
          ev.data.u64 = static_cast<uint64_t>(x.fd) | (static_cast<uint64_t>(k) << 32);
          if (::epoll_ctl(ep, EPOLL_CTL_ADD, x.fd, &ev) != 0) die("epoll_ctl");
          ++watches;
        }
        add(ep, epoll, ce, watches);
        made += 1;
        break;
      }
      case regular: {
        int idx = k % kFiles;
        int fd = ::open(file_path(idx).c_str(), (k % 2 ? O_RDWR : O_RDONLY) | (ce ? O_CLOEXEC : 0));
        if (fd < 0) die("open %s", file_path(idx).c_str());
        off_t off = (k * 37) % kFileBytes;
        if (::lseek(fd, off, SEEK_SET) != off) die("lseek");
        add(fd, regular, ce, off, idx);
        made += 1;
        break;
      }
      case memfd: {
        char name[32];
        std::snprintf(name, sizeof name, "bench-%d", k);
        int fd = static_cast<int>(::syscall(SYS_memfd_create, name, ce ? MFD_CLOEXEC : 0u));
        if (fd < 0) die("memfd_create");
        int64_t size = (k % 4) * 1024;
        if (size) {
          if (::ftruncate(fd, size) != 0) die("ftruncate");
          if (::pwrite(fd, "memfd contents..", 16, 0) != 16) die("pwrite");
        }
        add(fd, memfd, ce, size);
        made += 1;
        break;
      }
      default:
        break;
    }
  }
}

// fdinfo of one of our descriptors: the value of `key` (the rest of its line), and the number of
// lines starting with `count_prefix`.
std::string fdinfo(int fd, const char* key, const char* count_prefix, int* counted) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  int f = ::open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return "";
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(f, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(f);
  std::string value;
  size_t pos = 0;
  int c = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    if (key && line.rfind(key, 0) == 0) {
      value = line.substr(std::strlen(key));
      value.erase(0, value.find_first_not_of(" \t"));
    }
    if (count_prefix && line.rfind(count_prefix, 0) == 0) ++c;
    pos = end + 1;
  }
  if (counted) *counted = c;
  return value;
}

std::string link_of(int fd) {
  char path[64], buf[4096];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = ::readlink(path, buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// What is wrong with our descriptors ("" if nothing).
std::string check() {
  char what[512];
  int open_fds = -1;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    open_fds = 0;
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++open_fds;
    ::closedir(d);
    --open_fds;  // the directory's own descriptor
  }
  if (open_fds != static_cast<int>(g_table.size()) + 3) {
    std::snprintf(what, sizeof what, "%d descriptors open, %zu expected", open_fds,
                  g_table.size() + 3);
    return what;
  }
  for (const Entry& e : g_table) {
    int fdfl = ::fcntl(e.fd, F_GETFD);
    std::string link = link_of(e.fd);
    auto bad = [&](const char* fmt, long long got, long long want) {
      char msg[256];
      std::snprintf(msg, sizeof msg, fmt, got, want);
      std::snprintf(what, sizeof what, "fd %d (%s, kind %d): %s", e.fd, link.c_str(),
                    static_cast<int>(e.kind), msg);
      return std::string(what);
    };
    if (fdfl < 0) return bad("not open (%lld, %lld)", -1, 0);
    if (((fdfl & FD_CLOEXEC) != 0) != e.cloexec)
      return bad("close-on-exec %lld, expected %lld", (fdfl & FD_CLOEXEC) != 0, e.cloexec);
    static const char* const prefix[] = {"pipe:",
                                         "pipe:",
                                         "socket:",
                                         "anon_inode:[eventfd]",
                                         "anon_inode:[timerfd]",
                                         "anon_inode:[eventpoll]",
                                         "",
                                         "/memfd:"};
    if (e.kind == regular ? link != file_path(static_cast<int>(e.expect2))
                          : link.rfind(prefix[e.kind], 0) != 0)
      return bad("wrong kind (%lld, %lld)", 0, 0);
    switch (e.kind) {
      case pipe_r:
      case sock: {
        int avail = -1;
        if (::ioctl(e.fd, FIONREAD, &avail) != 0 || avail != e.expect)
          return bad("%lld bytes to read, expected %lld", avail, e.expect);
        break;
      }
      case pipe_w:
        if ((::fcntl(e.fd, F_GETFL) & O_ACCMODE) != O_WRONLY) return bad("not write-only (%lld %lld)", 0, 0);
        break;
      case event: {
        std::string v = fdinfo(e.fd, "eventfd-count:", nullptr, nullptr);
        long long count = v.empty() ? -1 : std::strtoll(v.c_str(), nullptr, 16);
        if (count != e.expect) return bad("count %lld, expected %lld", count, e.expect);
        break;
      }
      case timer: {
        itimerspec its{};
        if (::timerfd_gettime(e.fd, &its) != 0) return bad("timerfd_gettime failed (%lld %lld)", 0, 0);
        bool armed = its.it_value.tv_sec != 0 || its.it_value.tv_nsec != 0;
        if (armed != (e.expect2 != 0)) return bad("armed %lld, expected %lld", armed, e.expect2);
        if (its.it_interval.tv_sec != e.expect)
          return bad("interval %lld s, expected %lld s", its.it_interval.tv_sec, e.expect);
        break;
      }
      case epoll: {
        int watches = -1;
        fdinfo(e.fd, nullptr, "tfd:", &watches);
        if (watches != e.expect) return bad("%lld watches, expected %lld", watches, e.expect);
        break;
      }
      case regular: {
        off_t off = ::lseek(e.fd, 0, SEEK_CUR);
        if (off != e.expect) return bad("offset %lld, expected %lld", off, e.expect);
        break;
      }
      case memfd: {
        struct stat st {};
        if (::fstat(e.fd, &st) != 0 || st.st_size != e.expect)
          return bad("size %lld, expected %lld", st.st_size, e.expect);
        break;
      }
    }
  }
  return "";
}

[[noreturn]] void serve(int index) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  for (;;) {
    siginfo_t si;
    if (::sigwaitinfo(&set, &si) < 0) continue;  // EINTR (a checkpoint, for one)
    std::string problem = check();
    std::string text = problem.empty() ? "ok " + std::to_string(g_table.size() + 3) + "\n"
                                       : "bad " + problem + "\n";
    std::string path = g_dir + "/verify." + std::to_string(index);
    int fd = ::open((path + ".tmp").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || !write_full(fd, text.data(), text.size()) || ::close(fd) != 0 ||
        ::rename((path + ".tmp").c_str(), path.c_str()) != 0)
      die("writing %s", path.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: crest-bench-fds-job FDS PROCS DIR (fd 3: ready pipe)\n");
    return 2;
  }
  const int total = std::atoi(argv[1]);
  const int procs = std::atoi(argv[2]);
  g_dir = argv[3];
  if (total <= 0 || procs <= 0) return 2;
  ::setsid();
  ::syscall(SYS_close_range, 4, ~0U, 0);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);  // taken with sigwaitinfo (inherited by the children)

  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);

  // The files the regular descriptors are opened on.
  ::mkdir((g_dir + "/files").c_str(), 0755);
  {
    std::vector<char> content(kFileBytes);
    for (int i = 0; i < kFiles; ++i) {
      for (int j = 0; j < kFileBytes; ++j) content[j] = static_cast<char>('a' + (i + j) % 26);
      int fd = ::open(file_path(i).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0 || !write_full(fd, content.data(), content.size()) || ::close(fd) != 0)
        die("creating %s", file_path(i).c_str());
    }
  }

  // The split: 3 stdio + `shared` inherited + a private set in each process.
  const int shared = total / (8 * procs);
  const int rest = total - procs * (3 + shared);
  if (rest < procs) {
    errno = EINVAL;
    die("%d descriptors are too few for %d processes", total, procs);
  }
  std::vector<int> priv(static_cast<size_t>(procs), rest / procs);
  for (int i = 0; i < rest % procs; ++i) ++priv[static_cast<size_t>(i)];
  if (3 + shared + priv[0] + 64 > static_cast<int>(rl.rlim_cur)) {
    errno = EMFILE;
    die("%d descriptors per process are over the limit of %llu", 3 + shared + priv[0],
        static_cast<unsigned long long>(rl.rlim_cur));
  }

  int sync[2];
  if (::pipe2(sync, O_CLOEXEC) != 0) die("pipe2");
  make_set(shared, 0);
  std::vector<pid_t> pids{::getpid()};
  for (int i = 1; i < procs; ++i) {
    pid_t child = ::fork();
    if (child < 0) die("fork");
    if (child == 0) {
      ::close(3);
      ::close(sync[0]);
      make_set(priv[static_cast<size_t>(i)], 1000 * i);
      char b = 'r';
      if (!write_full(sync[1], &b, 1)) die("ready byte");
      ::close(sync[1]);
      serve(i);
    }
    pids.push_back(child);
  }
  ::close(sync[1]);
  int64_t t0 = now_ns();
  make_set(priv[0], 0);
  int64_t made_ns = now_ns() - t0;
  for (int i = 1; i < procs; ++i) {
    char b;
    ssize_t n;
    while ((n = ::read(sync[0], &b, 1)) < 0 && errno == EINTR) {
    }
    if (n != 1) die("a child died during setup");
  }
  ::close(sync[0]);

  std::string line = "READY";
  for (pid_t p : pids) line += " " + std::to_string(p);
  for (int i = 0; i < procs; ++i) line += " " + std::to_string(3 + shared + priv[static_cast<size_t>(i)]);
  line += " " + std::to_string(made_ns) + " " + std::to_string(priv[0]) + "\n";
  if (!write_full(3, line.data(), line.size())) die("ready line");
  ::close(3);
  serve(0);
}
