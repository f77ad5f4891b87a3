// The job the engine benchmarks checkpoint: crest-bench-job, a separate program installed beside
// the benchmarks (a clean address space, nothing inherited from the benchmark's own heap; and not
// the restorer's own executable), holding a big region of memory laid out like a solver's heap,
// driven over two pipes.
//
// Memory: `size` bytes of anonymous memory in runs of 1-64 pages, each run one kind, chosen by a
// seeded generator (so the benchmark knows the layout without asking):
//   mixed  15% holes (never touched), 15% written zeros, 30% smooth doubles, 20% small integers,
//          20% random bytes (the doubles, integers and random bytes as crest-bench-storage makes
//          them)
//   dense  the same without holes (30% written zeros)
// With thp the region is 2 MiB aligned and madvise(MADV_HUGEPAGE)d before it is touched.
//
// Commands (one byte on the command pipe; the job answers 8 bytes on the reply pipe):
//   'w' <round byte>  rewrite `rewrite_fraction` of the pages (every 1/fraction-th page, shifted
//                     by the round), 8 words per page; answers the time it took in ns
//   'f'               fork() a child that exits at once; answers the fork() call's time in ns
//   'F'               fork() a child that pauses (a copy sharing every page copy-on-write);
//                     answers its pid.   'K' <pid>: kill and reap it
//   'p'               answers 0
// In compute mode the job answers nothing after its ready record: it sweeps the first
// `rewrite_fraction` of its region forever (x = x*a + b over doubles) and counts the MiB it has
// processed in a counter the benchmark reads with process_vm_readv.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace crest::bench {

enum class Layout { mixed, dense };
enum class PageClass : uint8_t { hole, zero, doubles, ints, random };

struct JobOptions {
  uint64_t size = 1ull << 30;
  Layout layout = Layout::mixed;
  bool thp = false;
  bool compute = false;
  double rewrite_fraction = 0.05;
  uint64_t seed = 42;
};

// Per page, its class in the layout of `pages` pages.
std::vector<PageClass> page_classes(uint64_t pages, Layout layout, uint64_t seed);
// The bytes of a non-hole page (zero pages: zeros).
void fill_page(PageClass c, uint64_t page, uint64_t seed, void* out);

class Job {
 public:
  // Starts the job and waits until its memory is laid out.
  explicit Job(const JobOptions& opts);
  ~Job();  // SIGKILL and reap
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  pid_t pid() const { return pid_; }
  uint64_t base() const { return base_; }
  uint64_t size() const { return opts_.size; }
  uint64_t counter_addr() const { return counter_; }
  const JobOptions& options() const { return opts_; }

  uint64_t rewrite(uint8_t round);  // ns the job spent
  uint64_t fork_ns();
  pid_t fork_copy();
  void kill_copy(pid_t copy);
  uint64_t compute_counter() const;  // MiB processed so far (compute mode)
  // Pages touched (present): everything but the holes.
  uint64_t touched_pages() const { return touched_; }

 private:
  uint64_t command(const std::string& bytes);
  JobOptions opts_;
  pid_t pid_ = -1;
  int cmd_ = -1, reply_ = -1;
  uint64_t base_ = 0, counter_ = 0, touched_ = 0;
};

// crest-bench-job's main (never returns).
[[noreturn]] void job_main(int argc, char** argv);

// ---- Helpers shared by the engine benchmarks ----------------------------------------------------

double seconds_since_ns(int64_t t0_ns);
int64_t now_ns();
double median(std::vector<double> v);
uint64_t parse_size(const std::string& s);
std::string make_temp_dir(const std::string& base);  // mkdtemp under base (or the cwd)
void remove_tree(const std::string& path);
uint64_t file_bytes(const std::string& path);
// Kills and reaps every child of this process (restored jobs, the pid namespace's init).
void reap_children(pid_t except = -1);

// This machine's limits, measured in the same run.
double disk_write_gbps(const std::string& dir, uint64_t bytes);  // sequential write + fsync
double memcpy_gbps();
// Sequential O_DIRECT write of `bytes` in 1 MiB blocks, then fsync (what `dd oflag=direct
// conv=fsync` measures); 0 where the file system refuses O_DIRECT (tmpfs).
double disk_write_direct_gbps(const std::string& dir, uint64_t bytes);
// memcpy into memory mapped fresh for the copy (first touch included), as a new process meets it.
double memcpy_cold_gbps(uint64_t bytes);
// The file system type of `dir` ("ext4", "tmpfs", ... or the magic number in hex).
std::string fs_type(const std::string& dir);
double vm_readv_gbps(const Job& job);  // process_vm_readv of the job's touched pages, 1 MiB iovs
// Reads [addr, addr+bytes) of a process (every page present) in 1 MiB steps with
// process_vm_readv or pread of /proc/PID/mem.
double read_gbps(pid_t pid, uint64_t addr, uint64_t bytes, bool proc_mem);
struct Lz4Rate {
  double compress_gbps = 0, decompress_gbps = 0, ratio = 0;
};
Lz4Rate lz4_single_core(Layout layout, uint64_t sample_bytes, uint64_t seed);

}  // namespace crest::bench
