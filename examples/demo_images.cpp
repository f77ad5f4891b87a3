// crest-demo-images: writes a small chain of checkpoints of a synthetic job into an images
// directory, through the same storage API the checkpoint engine uses. It stands in for a real
// `crest dump` in the README's demo until the engine lands.
//
// The "job" is one process with a heap of N MiB that looks like a solver's: 30% zero pages, 30%
// doubles of a smooth field, 20% small integers, 20% random bytes. The first checkpoint is full;
// each later one rewrites 5% of the pages and stores only those, keeping the rest in its ancestors.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <vector>

#include "core/util/error.h"
#include "storage/image_store.h"

namespace {

using crest::schema::kPageSize;

constexpr uint64_t kOwner = 1;
constexpr uint64_t kHeapAddr = 0x7f0000000000;

uint64_t mix(uint64_t x) {  // splitmix64: a cheap, well-spread hash for page kinds and contents
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class SyntheticHeap {
 public:
  explicit SyntheticHeap(uint64_t pages) : generation_of_(pages, 0) {}

  uint64_t pages() const { return generation_of_.size(); }
  bool is_zero(uint64_t p) const { return generation_of_[p] == 0 && mix(p) % 10 < 3; }

  // Rewrites 5% of the pages (a different 5% each generation); returns which.
  std::vector<bool> rewrite(uint32_t generation) {
    std::vector<bool> changed(pages(), false);
    for (uint64_t p = 0; p < pages(); ++p) {
      if (mix(p * 31 + generation) % 100 < 5) {
        changed[p] = true;
        generation_of_[p] = generation;
      }
    }
    return changed;
  }

  void fill(uint64_t p, std::byte* page) const {
    uint64_t g = generation_of_[p];
    if (is_zero(p)) {
      std::memset(page, 0, kPageSize);
      return;
    }
    switch (mix(p) % 10) {
      case 3:
      case 4:
      case 5: {  // doubles of a smooth field: compress a little
        auto* d = reinterpret_cast<double*>(page);
        for (uint64_t i = 0; i < kPageSize / sizeof(double); ++i)
          d[i] = std::sin(static_cast<double>(p * 512 + i) * 1e-3) * (1.0 + static_cast<double>(g));
        break;
      }
      case 6:
      case 7: {  // small integers (counters, indices): compress well
        auto* v = reinterpret_cast<int32_t*>(page);
        for (uint64_t i = 0; i < kPageSize / sizeof(int32_t); ++i)
          v[i] = static_cast<int32_t>((p + i + g) % 64);
        break;
      }
      default: {  // random bytes: do not compress
        auto* w = reinterpret_cast<uint64_t*>(page);
        for (uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = mix(p * 4096 + i + (g << 40));
        break;
      }
    }
  }

 private:
  std::vector<uint32_t> generation_of_;  // which checkpoint last rewrote each page; 0: never
};

// Hands the selected pages of the heap to the writer, in address order.
class HeapSource : public crest::storage::PageSource {
 public:
  HeapSource(const SyntheticHeap& heap, const std::vector<bool>* only) : heap_(heap), only_(only) {}

  bool fill(crest::storage::PageBatch& batch) override {
    bool any = false;
    while (next_ < heap_.pages() && batch.room() > 0) {
      uint64_t p = next_++;
      if (only_ != nullptr && !(*only_)[p]) continue;
      heap_.fill(p, batch.next_page());
      batch.add(kOwner, kHeapAddr + p * kPageSize, 1);
      any = true;
    }
    return any;
  }

 private:
  const SyntheticHeap& heap_;
  const std::vector<bool>* only_;
  uint64_t next_ = 0;
};

crest::schema::CheckpointMeta job_meta(const SyntheticHeap& heap, const char* tracker) {
  crest::schema::CheckpointMeta meta;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  meta.info.host = host;
  meta.info.machine = "x86_64";
  meta.info.crest_version = CREST_VERSION;
  meta.info.job_id = "demo";
  meta.info.root_pid = ::getpid();
  meta.info.tracker = tracker;
  meta.info.created_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();

  crest::schema::ProcessRecord proc;
  proc.pid = ::getpid();
  proc.ppid = ::getppid();
  proc.pgid = ::getpgrp();
  proc.sid = ::getsid(0);
  proc.flags = crest::schema::kProcessRoot;
  proc.comm = "demo-solver";
  proc.exe = "(synthetic)";
  proc.mem_owner = kOwner;
  meta.processes.push_back(proc);

  crest::schema::ThreadRecord thread;
  thread.pid = thread.tid = proc.pid;
  thread.comm = proc.comm;
  meta.threads.push_back(thread);

  crest::schema::VmaRecord vma;
  vma.pid = proc.pid;
  vma.start = kHeapAddr;
  vma.end = kHeapAddr + heap.pages() * kPageSize;
  vma.prot = 3;   // read, write
  vma.flags = 2;  // private
  vma.kind = static_cast<uint32_t>(crest::schema::VmaKind::anon_private);
  vma.owner = kOwner;
  vma.name = "[heap]";
  meta.vmas.push_back(vma);

  crest::schema::OwnerRecord owner;
  owner.owner = kOwner;
  owner.pid = proc.pid;
  meta.owners.push_back(owner);
  return meta;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int write_demo(const std::string& dir, uint64_t mib, uint32_t checkpoints) {
  auto store = crest::storage::ImageStore::open_directory(dir, true);
  SyntheticHeap heap(mib * (1 << 20) / kPageSize);
  std::string parent;
  for (uint32_t generation = 1; generation <= checkpoints; ++generation) {
    int64_t start = now_ns();
    auto writer = store->begin(parent);
    if (parent.empty()) {
      HeapSource all(heap, nullptr);
      writer->write_pages(all);
    } else {
      std::vector<bool> changed = heap.rewrite(generation);
      HeapSource dirty(heap, &changed);
      writer->write_pages(dirty);
      // Unchanged pages: data stays in the ancestors, zero pages are recorded again.
      for (uint64_t p = 0; p < heap.pages();) {
        if (changed[p]) {
          ++p;
          continue;
        }
        bool zero = heap.is_zero(p);
        uint64_t q = p;
        while (q < heap.pages() && !changed[q] && heap.is_zero(q) == zero) ++q;
        crest::storage::PageExtent run{kOwner, kHeapAddr + p * kPageSize, q - p};
        if (zero) {
          writer->record_pages(run, crest::schema::PageKind::zero);
        } else {
          writer->keep_pages(run);
        }
        p = q;
      }
    }
    auto meta = job_meta(heap, parent.empty() ? "none" : "synthetic");
    meta.stats["total_ns"] = now_ns() - start;
    const auto stats = writer->stats();
    parent = writer->commit(std::move(meta));
    std::printf("%s: %s, %llu pages present, %llu stored (%llu zero), %.1f MiB written, %.2f s\n",
                parent.c_str(), generation == 1 ? "full" : "incremental",
                static_cast<unsigned long long>(heap.pages()),
                static_cast<unsigned long long>(stats.pages_stored),
                static_cast<unsigned long long>(stats.pages_zero),
                static_cast<double>(stats.bytes_stored) / (1 << 20),
                static_cast<double>(now_ns() - start) / 1e9);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Write a chain of checkpoints of a synthetic job into an images directory.",
               "crest-demo-images"};
  std::string dir;
  uint64_t mib = 64;
  uint32_t checkpoints = 3;
  app.add_option("DIR", dir, "Images directory (created if missing)")->required();
  app.add_option("--mib", mib, "Size of the synthetic heap in MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--checkpoints", checkpoints,
                 "How many checkpoints: one full, the rest incremental")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  try {
    return write_demo(dir, mib, checkpoints);
  } catch (const crest::Error& e) {
    std::cerr << "crest-demo-images: " << crest::kind_name(e.kind()) << ": " << e.what() << '\n';
    return 1;
  }
}
