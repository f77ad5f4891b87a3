// crest-bench-storage: writes and reads back a synthetic "heap" through a directory ImageStore and
// prints the throughput beside this machine's own limits, measured in the same run.
//
//   crest-bench-storage [--size 1G] [--runs 3] [--dir DIR] [--tokens N] [--accel N]
//
// The heap is ≈30% zero pages, 30% pages of smooth doubles (a simulation field), 20% small
// integers and 20% random bytes, laid out in runs of 1–64 pages as a heap is, not page by page.
// Every figure is the median of --runs runs after one untimed warm-up run (this VM hands freed
// memory back to the host, so first touches are slow).
#include <fcntl.h>
#include <lz4.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_job.h"
#include "core/util/error.h"
#include "storage/image_store.h"

namespace {

using crest::schema::kChunkBytes;
using crest::schema::kChunkPages;
using crest::schema::kPageSize;
using Clock = std::chrono::steady_clock;
using crest::bench::disk_write_gbps;
using crest::bench::memcpy_gbps;
using crest::bench::median;
using crest::bench::parse_size;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

uint64_t status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0) return std::stoull(line.substr(n + 1));
  return 0;
}

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// The synthetic heap, generated once.
struct Heap {
  std::vector<std::byte> bytes;
  uint64_t pages = 0;
  uint64_t kind_pages[4] = {};  // zero, doubles, ints, random
};

Heap make_heap(uint64_t size) {
  Heap h;
  h.pages = size / kPageSize;
  h.bytes.resize(size);
  std::mt19937_64 rng(42);
  uint64_t double_index = 0;
  for (uint64_t p = 0; p < h.pages;) {
    uint64_t run = std::min<uint64_t>(1 + rng() % 64, h.pages - p);
    uint64_t roll = rng() % 100;
    int kind = roll < 30 ? 0 : roll < 60 ? 1 : roll < 80 ? 2 : 3;
    for (uint64_t i = 0; i < run; ++i, ++p) {
      std::byte* page = h.bytes.data() + p * kPageSize;
      h.kind_pages[kind]++;
      switch (kind) {
        case 0:
          std::memset(page, 0, kPageSize);
          break;
        case 1:
          for (size_t k = 0; k < kPageSize / 8; ++k, ++double_index) {
            double d = 0.5 * std::sin(static_cast<double>(double_index) * 0.001) +
                       static_cast<double>(double_index) * 1e-6;
            std::memcpy(page + k * 8, &d, 8);
          }
          break;
        case 2:
          for (size_t k = 0; k < kPageSize / 4; ++k) {
            int32_t v = static_cast<int32_t>(rng() % 256);
            std::memcpy(page + k * 4, &v, 4);
          }
          break;
        default:
          for (size_t k = 0; k < kPageSize / 8; ++k) {
            uint64_t v = rng();
            std::memcpy(page + k * 8, &v, 8);
          }
      }
    }
  }
  return h;
}

// Hands the heap in as a dumper would after process_vm_readv: one copy into the batch.
class HeapSource : public crest::storage::PageSource {
 public:
  explicit HeapSource(const Heap& h) : h_(h) {}
  bool fill(crest::storage::PageBatch& b) override {
    if (next_ == h_.pages) return false;
    uint64_t n = std::min(b.room(), h_.pages - next_);
    std::memcpy(b.next_page(), h_.bytes.data() + next_ * kPageSize, n * kPageSize);
    b.add(1, 0x7f0000000000 + next_ * kPageSize, n);
    next_ += n;
    return true;
  }

 private:
  const Heap& h_;
  uint64_t next_ = 0;
};

// Touches every cache line delivered, so that reading is not measured as free.
class TouchSink : public crest::storage::PageSink {
 public:
  void on_pages(const crest::storage::PageExtent& run, crest::schema::PageKind,
                const std::byte* data) override {
    bytes += run.npages * kPageSize;
    if (data == nullptr) return;
    for (size_t off = 0; off < run.npages * kPageSize; off += 64) {
      uint64_t v;
      std::memcpy(&v, data + off, 8);
      sum ^= v;
    }
  }
  uint64_t bytes = 0;
  uint64_t sum = 0;
};

// The non-zero pages of the heap, packed into 1 MiB chunks as the pipeline packs them.
std::vector<std::vector<std::byte>> packed_chunks(const Heap& h) {
  std::vector<std::vector<std::byte>> chunks;
  std::vector<std::byte> cur;
  const std::vector<std::byte> zero(kPageSize, std::byte{0});
  for (uint64_t p = 0; p < h.pages; ++p) {
    const std::byte* page = h.bytes.data() + p * kPageSize;
    if (std::memcmp(page, zero.data(), kPageSize) == 0) continue;
    cur.insert(cur.end(), page, page + kPageSize);
    if (cur.size() == kChunkBytes) chunks.push_back(std::move(cur)), cur.clear();
  }
  if (!cur.empty()) {
    cur.resize(kChunkBytes);
    chunks.push_back(std::move(cur));
  }
  return chunks;
}

struct Lz4Speed {
  double compress_gbps = 0, decompress_gbps = 0;
};

Lz4Speed lz4_single_core(const std::vector<std::vector<std::byte>>& chunks, int accel) {
  int bound = LZ4_compressBound(static_cast<int>(kChunkBytes));
  std::vector<std::vector<char>> out(chunks.size(), std::vector<char>(bound));
  std::vector<int> sizes(chunks.size());
  std::vector<char> back(kChunkBytes);
  auto t0 = Clock::now();
  for (size_t i = 0; i < chunks.size(); ++i)
    sizes[i] = LZ4_compress_fast(reinterpret_cast<const char*>(chunks[i].data()), out[i].data(),
                                 static_cast<int>(kChunkBytes), bound, accel);
  double c = seconds_since(t0);
  t0 = Clock::now();
  for (size_t i = 0; i < chunks.size(); ++i)
    LZ4_decompress_safe(out[i].data(), back.data(), sizes[i], static_cast<int>(kChunkBytes));
  double d = seconds_since(t0);
  double bytes = static_cast<double>(chunks.size()) * kChunkBytes;
  return {bytes / c / 1e9, bytes / d / 1e9};
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t size = 1ull << 30;
  int runs = 3;
  std::string dir;
  bool write_only = false;  // for profiling the write path alone
  crest::storage::WriteTuning tuning;
  std::string size_text = "1G";
  CLI::App app{"crest-bench-storage: the image store writing and reading back a synthetic heap, "
               "beside this machine's own limits"};
  app.add_option("--size", size_text, "Size of the heap (1G, 512M)")->capture_default_str();
  app.add_option("--runs", runs, "Measured runs (medians are reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--dir", dir, "Where the images go (default: a temporary directory here)");
  app.add_option("--tokens", tuning.chunks_in_flight, "Chunks in flight in the write pipeline (0: the store's default)")
      ->capture_default_str();
  app.add_option("--accel", tuning.lz4_acceleration, "LZ4 acceleration")->capture_default_str();
  app.add_flag("--write-only", write_only, "Only write (to profile the write path)");
  CLI11_PARSE(app, argc, argv);
  size = parse_size(size_text);
  if (size == 0) {
    std::fprintf(stderr, "size must be at least 1 MiB\n");
    return 2;
  }
  // Our own temporary directory is removed on every way out; checkpoints are removed after each
  // run, so what is left is the store's lock file.
  struct TempDir {
    std::string path;
    ~TempDir() {
      if (path.empty()) return;
      std::remove((path + "/images/.lock").c_str());
      ::rmdir((path + "/images").c_str());
      ::rmdir(path.c_str());
    }
  } own;
  if (dir.empty()) {
    char tmpl[] = "crest-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      std::perror("mkdtemp");
      return 1;
    }
    dir = own.path = tmpl;
  }

  try {
    std::printf("generating %.2f GiB of synthetic heap...\n", size / double(1ull << 30));
    Heap heap = make_heap(size);
    std::printf("  pages: %.1f%% zero, %.1f%% doubles, %.1f%% small ints, %.1f%% random\n",
                100.0 * heap.kind_pages[0] / heap.pages, 100.0 * heap.kind_pages[1] / heap.pages,
                100.0 * heap.kind_pages[2] / heap.pages, 100.0 * heap.kind_pages[3] / heap.pages);
    auto store = crest::storage::ImageStore::open_directory(dir + "/images", true);
    double load_start = 0;
    ::getloadavg(&load_start, 1);

    std::vector<double> write_s, read_s, cold_s, pipe_s, write_cpu, read_cpu;
    uint64_t stored = 0, chunks = 0, chunks_raw = 0, file_bytes = 0;
    uint64_t rss_base = status_kib("VmRSS:");
    uint64_t peak_extra = 0;
    for (int run = 0; run <= runs; ++run) {  // run 0: warm-up, not counted
      reset_peak_rss();
      uint64_t base = status_kib("VmRSS:");
      auto t0 = Clock::now();
      double cpu0 = cpu_seconds();
      auto w = store->begin("", tuning);
      HeapSource src(heap);
      w->write_pages(src);
      double ps = w->stats().pipeline_ns / 1e9;
      double pcpu = cpu_seconds() - cpu0;
      std::string name = w->commit({});
      double ws = seconds_since(t0);
      w.reset();

      if (write_only) {
        store->remove(name);
        std::printf("  run %d: write %.3f s (pipeline %.3f s, %.2f cores busy)\n", run, ws, ps,
                    pcpu / ps);
        continue;
      }
      double wcpu = cpu_seconds() - cpu0;
      t0 = Clock::now();
      cpu0 = cpu_seconds();
      TouchSink sink;
      store->open(name)->read_pages({}, sink);
      double rs = seconds_since(t0);
      double rcpu = cpu_seconds() - cpu0;
      if (sink.bytes != size)
        throw crest::Error(crest::Errc::internal, "read back a different size");

      // Cold read: drop this file's pages from the page cache (they are clean after the fsync).
      std::string path = dir + "/images/" + name;
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      struct stat st {};
      ::fstat(fd, &st);
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      ::close(fd);
      t0 = Clock::now();
      TouchSink cold;
      store->open(name)->read_pages({}, cold);
      double cs = seconds_since(t0);
      peak_extra =
          std::max(peak_extra, status_kib("VmHWM:") - std::min(base, status_kib("VmHWM:")));

      auto r = store->open(name);
      stored = static_cast<uint64_t>(r->meta().stats.at("bytes_stored"));
      chunks = static_cast<uint64_t>(r->meta().stats.at("chunks"));
      chunks_raw = static_cast<uint64_t>(r->meta().stats.at("chunks_raw"));
      file_bytes = static_cast<uint64_t>(st.st_size);
      r.reset();
      store->remove(name);
      std::printf(
          "  run %d%s: write %.3f s (pipeline %.3f s, commit+fsync %.3f s), read %.3f s (cold %.3f "
          "s)\n",
          run, run == 0 ? " (warm-up)" : "", ws, ps, ws - ps, rs, cs);
      if (run > 0) {
        write_s.push_back(ws);
        pipe_s.push_back(ps);
        write_cpu.push_back(wcpu);
        read_cpu.push_back(rcpu);
        read_s.push_back(rs);
        cold_s.push_back(cs);
      }
    }

    if (write_only) return 0;
    std::printf("measuring this machine's limits...\n");
    std::vector<double> disk;
    for (int i = 0; i < runs; ++i)
      disk.push_back(
          disk_write_gbps(dir, (file_bytes + kChunkBytes - 1) / kChunkBytes * kChunkBytes));
    auto packed = packed_chunks(heap);
    std::vector<double> lz4c, lz4d, mem;
    for (int i = 0; i < runs; ++i) {
      auto s = lz4_single_core(packed, tuning.lz4_acceleration);
      lz4c.push_back(s.compress_gbps);
      lz4d.push_back(s.decompress_gbps);
      mem.push_back(memcpy_gbps());
    }
    packed.clear();

    double gb = size / 1e9;
    double load[3] = {};
    ::getloadavg(load, 3);
    std::printf(
        "\ncrest storage benchmark: %.2f GiB synthetic heap, %d runs (medians), %u cores, "
        "load average %.1f at the start, %.1f now\n",
        size / double(1ull << 30), runs, std::max(1u, std::thread::hardware_concurrency()),
        load_start, load[0]);
    std::printf("  %-44s %10s   %-40s %10s\n", "crest", "", "this machine", "");
    std::printf("  %-44s %7.2f GB/s   %-40s %7.2f GB/s\n", "write, input incl. fsync + rename",
                gb / median(write_s), "sequential write + fsync (same size)", median(disk));
    std::printf("  %-44s %7.2f GB/s   %-40s %7.2f GB\n", "  pipeline alone, into the page cache",
                gb / median(pipe_s), "stored bytes the disk must take", stored / 1e9);
    std::printf("  %-44s %5.2f s, %4.2f cores busy\n", "  CPU time of the write / cores busy",
                median(write_cpu), median(write_cpu) / median(write_s));
    std::printf("  %-44s %7.2f GB/s   %-40s %7.2f GB/s\n", "read back (page cache), verified",
                gb / median(read_s), "LZ4 compress, 1 core, same data", median(lz4c));
    std::printf("  %-44s %7.2f GB/s   %-40s %7.2f GB/s\n", "read back (cold: fadvise DONTNEED)",
                gb / median(cold_s), "LZ4 decompress, 1 core, same data", median(lz4d));
    std::printf("  %-44s %5.2f s, %4.2f cores busy\n", "  CPU time of the read (page cache) / busy",
                median(read_cpu), median(read_cpu) / median(read_s));
    std::printf("  %-44s %7.2f        %-40s %7.2f GB/s\n", "compression ratio (input / stored)",
                static_cast<double>(size) / stored, "memcpy", median(mem));
    std::printf("  %-44s %7llu of %llu\n", "chunks stored raw",
                static_cast<unsigned long long>(chunks_raw),
                static_cast<unsigned long long>(chunks));
    std::printf("  %-44s %7.1f MiB\n", "file size", file_bytes / 1048576.0);
    std::printf("  %-44s %7.1f MiB (the heap itself: %.0f MiB, process before runs: %.0f MiB)\n",
                "peak RSS above the heap (write+read)", peak_extra / 1024.0, size / 1048576.0,
                rss_base / 1024.0);
  } catch (const crest::Error& e) {
    std::fprintf(stderr, "crest-bench-storage: %s: %s\n",
                 std::string(crest::kind_name(e.kind())).c_str(), e.what());
    return 1;
  }
  return 0;
}
