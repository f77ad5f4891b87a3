#include "bench/bench_job.h"

#include <dirent.h>
#include <fcntl.h>
#include <lz4.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>

namespace crest::bench {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kHuge = 2ull << 20;

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "crest bench job: %s: %s\n", what, std::strerror(errno));
  std::_Exit(3);
}

bool read_full(int fd, void* buf, size_t len) {
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
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

uint64_t rewrite_stride(double fraction) {
  return std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(1.0 / fraction)));
}

// The job's state, in its own globals (the benchmark reads g_counter from outside).
volatile uint64_t g_counter;

}  // namespace

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double seconds_since_ns(int64_t t0_ns) { return static_cast<double>(now_ns() - t0_ns) / 1e9; }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

uint64_t parse_size(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  switch (end && *end ? (*end | 0x20) : 0) {
    case 'k': v *= 1024; break;
    case 'm': v *= 1024.0 * 1024; break;
    case 'g': v *= 1024.0 * 1024 * 1024; break;
    default: break;
  }
  return static_cast<uint64_t>(v) / kHuge * kHuge;
}

std::string make_temp_dir(const std::string& base) {
  std::string tmpl = (base.empty() ? std::string(".") : base) + "/crest-bench-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back(0);
  if (!::mkdtemp(buf.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
  return buf.data();
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

uint64_t file_bytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

void reap_children(pid_t except) {
  std::vector<pid_t> kids;
  std::string task_dir = "/proc/self/task";
  if (DIR* d = ::opendir(task_dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream in(task_dir + "/" + e->d_name + "/children");
      pid_t c;
      while (in >> c)
        if (c != except) kids.push_back(c);
    }
    ::closedir(d);
  }
  for (pid_t c : kids) ::kill(c, SIGKILL);
  // In any order: a dying pid namespace init waits until its root, our child too, is reaped.
  std::vector<pid_t> left = kids;
  while (!left.empty()) {
    int st;
    pid_t r = ::waitpid(-1, &st, __WALL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    left.erase(std::remove(left.begin(), left.end(), r), left.end());
  }
}

std::vector<PageClass> page_classes(uint64_t pages, Layout layout, uint64_t seed) {
  std::vector<PageClass> out(pages);
  std::mt19937_64 rng(seed);
  for (uint64_t p = 0; p < pages;) {
    uint64_t run = std::min<uint64_t>(1 + rng() % 64, pages - p);
    uint64_t roll = rng() % 100;
    PageClass c = roll < 15   ? (layout == Layout::mixed ? PageClass::hole : PageClass::zero)
                  : roll < 30 ? PageClass::zero
                  : roll < 60 ? PageClass::doubles
                  : roll < 80 ? PageClass::ints
                              : PageClass::random;
    for (uint64_t i = 0; i < run; ++i) out[p++] = c;
  }
  return out;
}

void fill_page(PageClass c, uint64_t page, uint64_t seed, void* out) {
  auto* b = static_cast<unsigned char*>(out);
  switch (c) {
    case PageClass::hole:
    case PageClass::zero:
      std::memset(b, 0, kPage);
      break;
    case PageClass::doubles:
      // A smooth field, as crest-bench-storage makes it.
      for (uint64_t k = 0; k < kPage / 8; ++k) {
        double i = static_cast<double>(page * (kPage / 8) + k);
        double d = 0.5 * std::sin(i * 0.001) + i * 1e-6;
        std::memcpy(b + k * 8, &d, 8);
      }
      break;
    case PageClass::ints:
      for (uint64_t k = 0; k < kPage / 4; ++k) {
        int32_t v = static_cast<int32_t>(mix64(page * 1024 + k + seed) & 0xff);
        std::memcpy(b + k * 4, &v, 4);
      }
      break;
    case PageClass::random: {
      uint64_t x = mix64(page ^ seed) | 1;
      for (uint64_t k = 0; k < kPage / 8; ++k) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t v = x * 0x2545f4914f6cdd1dULL;
        std::memcpy(b + k * 8, &v, 8);
      }
      break;
    }
  }
}

// ---- The job side -----------------------------------------------------------------------------

void job_main(int argc, char** argv) {
  // argv: crest-bench-job SIZE LAYOUT THP COMPUTE FRACTION SEED (fd 3 commands, fd 4 replies)
  if (argc != 7) {
    std::fprintf(stderr, "crest bench job: bad arguments\n");
    std::_Exit(2);
  }
  JobOptions o;
  o.size = std::strtoull(argv[1], nullptr, 10);
  o.layout = std::string(argv[2]) == "dense" ? Layout::dense : Layout::mixed;
  o.thp = std::atoi(argv[3]) != 0;
  o.compute = std::atoi(argv[4]) != 0;
  o.rewrite_fraction = std::strtod(argv[5], nullptr);
  o.seed = std::strtoull(argv[6], nullptr, 10);
  const int cmd = 3, reply = 4;

  uint64_t len = o.size + (o.thp ? kHuge : 0);
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) die("mmap");
  auto* base = static_cast<unsigned char*>(m);
  if (o.thp) {
    auto aligned = (reinterpret_cast<uintptr_t>(base) + kHuge - 1) & ~(kHuge - 1);
    base = reinterpret_cast<unsigned char*>(aligned);
    if (::madvise(base, o.size, MADV_HUGEPAGE) != 0) die("madvise(MADV_HUGEPAGE)");
  } else {
    ::madvise(base, o.size, MADV_NOHUGEPAGE);  // 4 KiB pages whatever the system default
  }
  uint64_t pages = o.size / kPage;
  auto classes = page_classes(pages, o.layout, o.seed);
  for (uint64_t p = 0; p < pages; ++p)
    if (classes[p] != PageClass::hole) fill_page(classes[p], p, o.seed, base + p * kPage);
  classes.clear();
  classes.shrink_to_fit();

  uint64_t ready[2] = {reinterpret_cast<uint64_t>(base), reinterpret_cast<uint64_t>(&g_counter)};
  if (!write_full(reply, ready, sizeof ready)) die("ready record");
  const uint64_t stride = rewrite_stride(o.rewrite_fraction);

  if (o.compute) {
    // Sweep the working set for ever, 1 MiB at a time, counting MiB.
    uint64_t work = std::max<uint64_t>(1 << 20, pages / stride * kPage) & ~((1ull << 20) - 1);
    for (;;) {
      for (uint64_t off = 0; off < work; off += 1 << 20) {
        auto* w = reinterpret_cast<uint64_t*>(base + off);
        for (uint64_t i = 0; i < (1 << 20) / 8; ++i)
          w[i] = w[i] * 6364136223846793005ULL + 1442695040888963407ULL;
        g_counter = g_counter + 1;
      }
    }
  }

  for (;;) {
    unsigned char c;
    ssize_t n = ::read(cmd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      // A restored job: its command pipe has no writer any more. Stay, untouched, until killed.
      for (;;) ::pause();
    }
    if (n < 0) die("read command");
    uint64_t answer = 0;
    if (c == 'w') {
      unsigned char round;
      if (!read_full(cmd, &round, 1)) die("read round");
      int64_t t0 = now_ns();
      for (uint64_t p = round % stride; p < pages; p += stride) {
        auto* w = reinterpret_cast<uint64_t*>(base + p * kPage);
        for (int k = 0; k < 8; ++k) w[k * 64] += 0x9e3779b97f4a7c15ULL * (round + 1u);
      }
      answer = static_cast<uint64_t>(now_ns() - t0);
    } else if (c == 'F') {
      // A copy that shares every page copy-on-write, for the benchmark to read from.
      pid_t child = ::fork();
      if (child == 0)
        for (;;) ::pause();
      answer = static_cast<uint64_t>(child);
    } else if (c == 'K') {
      pid_t child;
      if (!read_full(cmd, &child, sizeof child)) die("read pid");
      ::kill(child, SIGKILL);
      int st;
      while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
      }
    } else if (c == 'f') {
      int64_t t0 = now_ns();
      pid_t child = ::fork();
      if (child == 0) std::_Exit(0);
      answer = static_cast<uint64_t>(now_ns() - t0);
      int st;
      while (child > 0 && ::waitpid(child, &st, 0) < 0 && errno == EINTR) {
      }
    }
    if (!write_full(reply, &answer, sizeof answer)) die("reply");
  }
}

// ---- The benchmark side -----------------------------------------------------------------------

Job::Job(const JobOptions& opts) : opts_(opts) {
  int c[2], r[2];
  if (::pipe2(c, O_CLOEXEC) != 0 || ::pipe2(r, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
  std::string size = std::to_string(opts.size), thp = opts.thp ? "1" : "0",
              compute = opts.compute ? "1" : "0", seed = std::to_string(opts.seed);
  char fraction[32];
  std::snprintf(fraction, sizeof fraction, "%.6f", opts.rewrite_fraction);
  std::string layout = opts.layout == Layout::dense ? "dense" : "mixed";
  // Beside the benchmark binary. Not the benchmark itself: a restore cannot give a process the
  // executable of the restorer that made it (PR_SET_MM_MAP refuses, EBUSY).
  std::string self = std::filesystem::read_symlink("/proc/self/exe").parent_path() / "crest-bench-job";
  if (::access(self.c_str(), X_OK) != 0) throw std::runtime_error(self + " is missing (build crest-bench-job)");
  std::vector<char*> argv{const_cast<char*>("crest-bench-job"),
                          size.data(),   layout.data(),
                          thp.data(),    compute.data(),
                          fraction,      seed.data(),
                          nullptr};
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    int cin = ::fcntl(c[0], F_DUPFD, 10), rout = ::fcntl(r[1], F_DUPFD, 10);
    if (cin < 0 || rout < 0 || ::dup2(cin, 3) < 0 || ::dup2(rout, 4) < 0) std::_Exit(126);
    ::syscall(SYS_close_range, 5, ~0U, 0);
    ::setsid();
    ::execv(self.c_str(), argv.data());
    std::_Exit(127);
  }
  pid_ = pid;
  ::close(c[0]);
  ::close(r[1]);
  cmd_ = c[1];
  reply_ = r[0];
  uint64_t ready[2];
  if (!read_full(reply_, ready, sizeof ready)) throw std::runtime_error("the job died during setup");
  base_ = ready[0];
  counter_ = ready[1];
  if (opts.layout == Layout::dense) {
    touched_ = opts.size / kPage;
  } else {
    for (PageClass k : page_classes(opts.size / kPage, opts.layout, opts.seed))
      if (k != PageClass::hole) ++touched_;
  }
}

Job::~Job() {
  if (cmd_ >= 0) ::close(cmd_);
  if (reply_ >= 0) ::close(reply_);
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int st;
    while (::waitpid(pid_, &st, __WALL) < 0 && errno == EINTR) {
    }
  }
}

uint64_t Job::command(const std::string& bytes) {
  uint64_t answer = 0;
  if (!write_full(cmd_, bytes.data(), bytes.size()) || !read_full(reply_, &answer, sizeof answer))
    throw std::runtime_error("the job does not answer");
  return answer;
}

uint64_t Job::rewrite(uint8_t round) { return command(std::string("w") + static_cast<char>(round)); }
uint64_t Job::fork_ns() { return command("f"); }
pid_t Job::fork_copy() { return static_cast<pid_t>(command("F")); }
void Job::kill_copy(pid_t copy) {
  command(std::string("K") + std::string(reinterpret_cast<const char*>(&copy), sizeof copy));
}

uint64_t Job::compute_counter() const {
  uint64_t v = 0;
  iovec local{&v, sizeof v};
  iovec remote{reinterpret_cast<void*>(counter_), sizeof v};
  if (::process_vm_readv(pid_, &local, 1, &remote, 1, 0) != sizeof v)
    throw std::runtime_error("cannot read the job's counter");
  return v;
}

// ---- This machine's limits ----------------------------------------------------------------------

double disk_write_gbps(const std::string& dir, uint64_t bytes) {
  std::string path = dir + "/disk-probe.bin";
  std::vector<char> buf(1 << 20);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < buf.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(buf.data() + i, &v, 8);
  }
  int64_t t0 = now_ns();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  for (uint64_t done = 0; done < bytes; done += buf.size())
    if (::write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size()))
      throw std::runtime_error("cannot write " + path);
  ::fsync(fd);
  ::close(fd);
  double s = seconds_since_ns(t0);
  ::unlink(path.c_str());
  return static_cast<double>(bytes) / s / 1e9;
}

double memcpy_gbps() {
  std::vector<char> a(256 << 20, 1), b(256 << 20, 2);
  std::memcpy(b.data(), a.data(), a.size());
  int64_t t0 = now_ns();
  for (int i = 0; i < 4; ++i) std::memcpy((i % 2 ? a : b).data(), (i % 2 ? b : a).data(), a.size());
  return 4.0 * static_cast<double>(a.size()) / seconds_since_ns(t0) / 1e9;
}

double disk_write_direct_gbps(const std::string& dir, uint64_t bytes) {
  std::string path = dir + "/disk-probe-direct.bin";
  constexpr size_t kBlock = 1 << 20;
  void* mem = std::aligned_alloc(4096, kBlock);
  if (mem == nullptr) throw std::runtime_error("out of memory");
  std::unique_ptr<void, void (*)(void*)> hold(mem, std::free);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < kBlock; i += 8) {
    uint64_t v = rng();
    std::memcpy(static_cast<char*>(mem) + i, &v, 8);
  }
  int64_t t0 = now_ns();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0600);
  if (fd < 0) {
    if (errno == EINVAL) return 0;
    throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
  }
  for (uint64_t done = 0; done < bytes; done += kBlock)
    if (::pwrite(fd, mem, kBlock, static_cast<off_t>(done)) != static_cast<ssize_t>(kBlock)) {
      ::close(fd);
      ::unlink(path.c_str());
      throw std::runtime_error("cannot write " + path);
    }
  ::fsync(fd);
  ::close(fd);
  double s = seconds_since_ns(t0);
  ::unlink(path.c_str());
  return static_cast<double>(bytes) / s / 1e9;
}

double memcpy_cold_gbps(uint64_t bytes) {
  std::vector<char> src(bytes, 1);
  int64_t t0 = now_ns();
  void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::runtime_error("mmap");
  std::memcpy(m, src.data(), bytes);
  double s = seconds_since_ns(t0);
  ::munmap(m, bytes);
  return static_cast<double>(bytes) / s / 1e9;
}

std::string fs_type(const std::string& dir) {
  struct statfs st {};
  if (::statfs(dir.c_str(), &st) != 0) return "?";
  switch (static_cast<unsigned long>(st.f_type)) {
    case 0xEF53: return "ext4";
    case 0x01021994: return "tmpfs";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x794c7630: return "overlayfs";
    case 0x6969: return "nfs";
    default: break;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(st.f_type));
  return buf;
}

double vm_readv_gbps(const Job& job) {
  const uint64_t pages = job.size() / kPage;
  auto classes = page_classes(pages, job.options().layout, job.options().seed);
  std::vector<char> buf(1 << 20);
  uint64_t bytes = 0;
  int64_t t0 = now_ns();
  for (uint64_t p = 0; p < pages;) {
    if (classes[p] == PageClass::hole) {
      ++p;
      continue;
    }
    uint64_t q = p;
    while (q < pages && classes[q] != PageClass::hole && q - p < 256) ++q;
    iovec local{buf.data(), (q - p) * kPage};
    iovec remote{reinterpret_cast<void*>(job.base() + p * kPage), (q - p) * kPage};
    ssize_t n = ::process_vm_readv(job.pid(), &local, 1, &remote, 1, 0);
    if (n > 0) bytes += static_cast<uint64_t>(n);
    p = q;
  }
  return static_cast<double>(bytes) / seconds_since_ns(t0) / 1e9;
}

double read_gbps(pid_t pid, uint64_t addr, uint64_t bytes, bool proc_mem) {
  std::vector<char> buf(1 << 20);
  int fd = -1;
  if (proc_mem) {
    fd = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("open /proc/PID/mem");
  }
  int64_t t0 = now_ns();
  for (uint64_t off = 0; off < bytes; off += buf.size()) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), bytes - off));
    if (proc_mem) {
      if (::pread(fd, buf.data(), n, static_cast<off_t>(addr + off)) != static_cast<ssize_t>(n))
        throw std::runtime_error("pread /proc/PID/mem");
    } else {
      iovec local{buf.data(), n};
      iovec remote{reinterpret_cast<void*>(addr + off), n};
      if (::process_vm_readv(pid, &local, 1, &remote, 1, 0) != static_cast<ssize_t>(n))
        throw std::runtime_error("process_vm_readv");
    }
  }
  double s = seconds_since_ns(t0);
  if (fd >= 0) ::close(fd);
  return static_cast<double>(bytes) / s / 1e9;
}

Lz4Rate lz4_single_core(Layout layout, uint64_t sample_bytes, uint64_t seed) {
  // The non-zero pages of a sample of the same layout, packed into 1 MiB chunks as the pipeline
  // packs them.
  const uint64_t pages = sample_bytes / kPage;
  auto classes = page_classes(pages, layout, seed);
  std::vector<std::vector<char>> chunks;
  std::vector<char> cur;
  for (uint64_t p = 0; p < pages; ++p) {
    if (classes[p] == PageClass::hole || classes[p] == PageClass::zero) continue;
    size_t at = cur.size();
    cur.resize(at + kPage);
    fill_page(classes[p], p, seed, cur.data() + at);
    if (cur.size() == (1 << 20)) chunks.push_back(std::move(cur)), cur.clear();
  }
  if (!cur.empty()) cur.resize(1 << 20), chunks.push_back(std::move(cur));
  int bound = LZ4_compressBound(1 << 20);
  std::vector<std::vector<char>> out(chunks.size(), std::vector<char>(static_cast<size_t>(bound)));
  std::vector<int> sizes(chunks.size());
  std::vector<char> back(1 << 20);
  int64_t t0 = now_ns();
  uint64_t stored = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    sizes[i] = LZ4_compress_fast(chunks[i].data(), out[i].data(), 1 << 20, bound, 1);
    stored += static_cast<uint64_t>(sizes[i]);
  }
  double c = seconds_since_ns(t0);
  t0 = now_ns();
  for (size_t i = 0; i < chunks.size(); ++i)
    LZ4_decompress_safe(out[i].data(), back.data(), sizes[i], 1 << 20);
  double d = seconds_since_ns(t0);
  double bytes = static_cast<double>(chunks.size()) * (1 << 20);
  return {bytes / c / 1e9, bytes / d / 1e9, bytes / static_cast<double>(stored)};
}

}  // namespace crest::bench
