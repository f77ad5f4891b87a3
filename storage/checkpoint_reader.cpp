// Reading: a checkpoint and its ancestors are opened (and cross-checked) up front, so any problem
// with the chain is a named error before the first page is delivered. Pages then stream through
//
//   stage 1 (serial, in order)  read the stored bytes of the next chunk (grouped by file, chunk)
//   stage 2 (parallel)          LZ4-decode and verify the chunk's XXH3 checksum
//   stage 3 (serial, in order)  hand the chunk's pieces to the sink
//
// with the same bounded number of token buffers as the writer.
#include <tbb/parallel_pipeline.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <unordered_set>

#include "core/util/log.h"
#include "storage/byte_shuffle.h"
#include "storage/lz4_chunk.h"
#include "storage/pipeline.h"

namespace crest::storage {

using schema::kChunkBytes;
using schema::kChunkPages;
using schema::kPageSize;
using schema::PageKind;
using schema::PageRun;

namespace {

std::string hex64(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// A report line: "kind: message".
std::string line(const Error& e) { return std::string(kind_name(e.kind())) + ": " + e.what(); }

std::string run_text(const PageRun& r) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "owner %llu at 0x%llx (+%llu pages)",
                static_cast<unsigned long long>(r.owner), static_cast<unsigned long long>(r.addr),
                static_cast<unsigned long long>(r.npages));
  return buf;
}

// Problems of one file's index against its chain (files[0] is that file); empty when sound.
std::vector<std::string> check_index(const std::vector<const ContainerReader*>& files,
                                     const std::string& path, size_t max_problems,
                                     bool chain_whole) {
  std::vector<std::string> out;
  const auto& index = files[0]->index();
  const PageRun* prev = nullptr;
  for (const PageRun& r : index) {
    if (out.size() >= max_problems) {
      out.push_back(path + ": more index problems not shown");
      break;
    }
    std::string where = path + ": index run " + run_text(r);
    // Bounded before any arithmetic on them: the end of a run (addr + npages pages, pos +
    // npages rows) must not wrap around, or the checks below would pass a run they never walked.
    if (r.npages == 0 || r.addr % kPageSize != 0 ||
        r.npages > (~uint64_t{0} - r.addr) / kPageSize || r.pos > ~uint64_t{0} - r.npages) {
      out.push_back(where + " is empty, unaligned or runs past the end of the address space");
      continue;
    }
    if (prev != nullptr &&
        (prev->owner > r.owner ||
         (prev->owner == r.owner &&
          (r.addr < prev->addr || r.addr - prev->addr < prev->npages * kPageSize))))
      out.push_back(where + " overlaps or is out of order");
    prev = &r;
    if (r.kind > static_cast<uint32_t>(PageKind::cow_parent)) {
      out.push_back(where + " has unknown kind " + std::to_string(r.kind));
      continue;
    }
    if (r.kind != static_cast<uint32_t>(PageKind::data)) continue;
    if (r.depth >= files.size()) {
      if (!chain_whole) continue;
      out.push_back(where + " refers to ancestor " + std::to_string(r.depth) + " of a chain of " +
                    std::to_string(files.size()));
      continue;
    }
    const auto& chunks = files[r.depth]->chunks();
    for (uint64_t p = r.pos; p < r.pos + r.npages;) {
      uint64_t chunk = p / kChunkPages, slot = p % kChunkPages;
      uint64_t n = std::min(r.pos + r.npages - p, kChunkPages - slot);
      if (chunk >= chunks.size()) {
        out.push_back(where + " points at chunk " + std::to_string(chunk) + " of " +
                      files[r.depth]->name() + ", which has " + std::to_string(chunks.size()));
        break;
      }
      if (slot + n > chunks[chunk].npages) {
        out.push_back(where + " points past the " + std::to_string(chunks[chunk].npages) +
                      " pages of chunk " + std::to_string(chunk) + " of " + files[r.depth]->name());
        break;
      }
      p += n;
    }
  }
  return out;
}

struct ReadToken {
  std::vector<std::byte> stored;
  AlignedBuffer scratch{kDecodeScratchBytes};
  const std::byte* data = nullptr;
  size_t group = 0;
};

// A slice of a data run that lives in one chunk.
struct Piece {
  uint32_t depth;
  uint64_t chunk;
  uint64_t slot;
  PageExtent extent;
};

class ChainReader final : public CheckpointReader {
 public:
  ChainReader(Backend& backend, std::vector<std::unique_ptr<ContainerReader>> files)
      : backend_(backend), files_(std::move(files)) {
    for (const auto& f : files_) paths_.push_back(display_path(backend_, f->name()));
    std::vector<const ContainerReader*> raw;
    for (const auto& f : files_) raw.push_back(f.get());
    auto problems = check_index(raw, paths_[0], 1, true);
    if (!problems.empty()) fail(Errc::corrupt, problems[0]);
  }

  const std::string& name() const override { return files_[0]->name(); }
  const schema::CheckpointMeta& meta() const override { return files_[0]->meta(); }
  const std::vector<PageRun>& page_index() const override { return files_[0]->index(); }
  const std::vector<schema::ChunkRecord>& chunks() const override { return files_[0]->chunks(); }
  const std::vector<schema::PageHash>& hashes(uint32_t depth) const override {
    static const std::vector<schema::PageHash> none;
    return depth < files_.size() ? files_[depth]->hashes() : none;
  }

  std::vector<std::string> chain() const override {
    std::vector<std::string> out;
    for (const auto& f : files_) out.push_back(f->name());
    return out;
  }

  void read_pages(const std::vector<uint64_t>& owners, PageSink& sink) override {
    std::set<uint64_t> wanted(owners.begin(), owners.end());
    std::vector<Piece> pieces;
    auto visit = [&](const PageRun& r) {
      if (r.kind != static_cast<uint32_t>(PageKind::data)) {
        sink.on_pages({r.owner, r.addr, r.npages}, static_cast<PageKind>(r.kind), nullptr);
        return;
      }
      for (uint64_t done = 0; done < r.npages;) {
        uint64_t p = r.pos + done;
        uint64_t slot = p % kChunkPages;
        uint64_t n = std::min(r.npages - done, kChunkPages - slot);
        PageExtent e{r.owner, r.addr + done * kPageSize, n};
        if (sink.wants(e)) pieces.push_back({r.depth, p / kChunkPages, slot, e});
        done += n;
      }
    };
    if (wanted.empty()) {
      for (const PageRun& r : page_index()) visit(r);
    } else {
      // Each owner's runs bisected, not found by a walk of every process's (a restore asks
      // once per process).
      for (uint64_t owner : wanted)
        for (const PageRun& r : owner_runs(owner)) visit(r);
    }
    // One read per stored chunk, each file read front to back.
    std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
      if (a.depth != b.depth) return a.depth < b.depth;
      if (a.chunk != b.chunk) return a.chunk < b.chunk;
      return a.slot < b.slot;
    });
    std::vector<size_t> group_start;
    for (size_t i = 0; i < pieces.size(); ++i)
      if (i == 0 || pieces[i].depth != pieces[i - 1].depth ||
          pieces[i].chunk != pieces[i - 1].chunk)
        group_start.push_back(i);
    group_start.push_back(pieces.size());
    size_t ngroups = group_start.size() - 1;
    if (ngroups == 0) return;

    TokenPool<ReadToken> pool(std::min<size_t>(pipeline_tokens(0), ngroups));
    size_t next = 0;

    auto read = [&](tbb::flow_control& fc) -> ReadToken* {
      if (next == ngroups) {
        fc.stop();
        return nullptr;
      }
      ReadToken* t = pool.take();
      t->group = next++;
      const Piece& p = pieces[group_start[t->group]];
      std::lock_guard lock(io_);
      files_[p.depth]->read_chunk(p.chunk, t->stored);
      return t;
    };
    auto decode = [&](ReadToken* t) -> ReadToken* {
      const Piece& p = pieces[group_start[t->group]];
      t->data = decode_chunk(files_[p.depth]->chunks()[p.chunk], t->stored, t->scratch.get(),
                             paths_[p.depth], p.chunk);
      return t;
    };
    auto deliver = [&](ReadToken* t) {
      for (size_t i = group_start[t->group]; i < group_start[t->group + 1]; ++i)
        sink.on_pages(pieces[i].extent, PageKind::data, t->data + pieces[i].slot * kPageSize);
      pool.give(t);
    };
    if (sink.concurrent()) {
      // Decode and deliver in the same parallel stage: writing pages into a process costs page
      // faults that parallelize as well as the decompression does.
      tbb::parallel_pipeline(
          pool.size(),
          tbb::make_filter<void, ReadToken*>(tbb::filter_mode::serial_in_order, read) &
              tbb::make_filter<ReadToken*, void>(tbb::filter_mode::parallel,
                                                 [&](ReadToken* t) { deliver(decode(t)); }));
      return;
    }
    tbb::parallel_pipeline(
        pool.size(),
        tbb::make_filter<void, ReadToken*>(tbb::filter_mode::serial_in_order, read) &
            tbb::make_filter<ReadToken*, ReadToken*>(tbb::filter_mode::parallel, decode) &
            tbb::make_filter<ReadToken*, void>(tbb::filter_mode::serial_in_order, deliver));
  }

  void read_chunk(uint32_t depth, uint64_t chunk, std::byte* out) override {
    if (depth >= files_.size() || chunk >= files_[depth]->chunks().size())
      fail(Errc::corrupt, paths_[0] + ": no chunk " + std::to_string(chunk) + " at depth " +
                              std::to_string(depth) + " of the chain");
    std::vector<std::byte> stored;
    {
      std::lock_guard lock(io_);
      files_[depth]->read_chunk(chunk, stored);
    }
    thread_local AlignedBuffer scratch{kDecodeScratchBytes};
    const std::byte* data =
        decode_chunk(files_[depth]->chunks()[chunk], stored, scratch.get(), paths_[depth], chunk);
    std::memcpy(out, data, kChunkBytes);
  }

 private:
  Backend& backend_;
  std::vector<std::unique_ptr<ContainerReader>> files_;
  std::vector<std::string> paths_;
  std::mutex io_;  // the container files are read by one thread at a time
};

}  // namespace

const std::byte* decode_chunk(const schema::ChunkRecord& rec, const std::vector<std::byte>& stored,
                              std::byte* scratch, const std::string& file, uint64_t index) {
  auto where = [&] { return file + ": chunk " + std::to_string(index); };
  const std::byte* data = stored.data();
  switch (rec.encoding()) {
    case schema::ChunkEncoding::raw:
      if (stored.size() != kChunkBytes)
        fail(Errc::corrupt, where() + ": raw chunk of " + std::to_string(stored.size()) + " bytes");
      break;
    case schema::ChunkEncoding::lz4:
      if (const char* why = lz4::decode(stored.data(), stored.size(), scratch, kChunkBytes))
        fail(Errc::corrupt, where() + ": " + why);
      data = scratch;
      break;
    case schema::ChunkEncoding::shuffle_lz4:
      if (const char* why =
              lz4::decode(stored.data(), stored.size(), scratch + kChunkBytes, kChunkBytes))
        fail(Errc::corrupt, where() + ": " + why);
      shuffle::unshuffle8(scratch + kChunkBytes, scratch, kChunkBytes);
      data = scratch;
      break;
    default:
      fail(Errc::corrupt, where() + ": unknown encoding " + std::to_string(rec.compressed) +
                              " in the chunk table");
  }
  uint64_t sum = chunk_checksum(data);
  if (sum != rec.checksum)
    fail(Errc::corrupt, where() + ": checksum mismatch (stored " + hex64(rec.checksum) +
                            ", computed " + hex64(sum) + ")");
  return data;
}

namespace {

// Every chunk of one file: serial read, parallel decode + checksum. One line per bad chunk
// (empty for good ones), in chunk order.
std::vector<std::string> verify_chunks(ContainerReader& f, const std::string& path) {
  uint64_t nchunks = f.chunks().size();
  std::vector<std::string> errors(nchunks);
  if (nchunks == 0) return errors;
  TokenPool<ReadToken> pool(std::min<uint64_t>(pipeline_tokens(0), nchunks));
  uint64_t next = 0;
  auto read = [&](tbb::flow_control& fc) -> ReadToken* {
    if (next == nchunks) {
      fc.stop();
      return nullptr;
    }
    ReadToken* t = pool.take();
    t->group = next++;
    try {
      f.read_chunk(t->group, t->stored);
    } catch (const Error& e) {
      errors[t->group] = line(e);
    }
    return t;
  };
  auto check = [&](ReadToken* t) -> ReadToken* {
    if (!errors[t->group].empty()) return t;
    try {
      decode_chunk(f.chunks()[t->group], t->stored, t->scratch.get(), path, t->group);
    } catch (const Error& e) {
      errors[t->group] = line(e);
    }
    return t;
  };
  auto done = [&](ReadToken* t) { pool.give(t); };
  tbb::parallel_pipeline(
      pool.size(), tbb::make_filter<void, ReadToken*>(tbb::filter_mode::serial_in_order, read) &
                       tbb::make_filter<ReadToken*, ReadToken*>(tbb::filter_mode::parallel, check) &
                       tbb::make_filter<ReadToken*, void>(tbb::filter_mode::serial_in_order, done));
  return errors;
}

}  // namespace

std::vector<std::unique_ptr<ContainerReader>> open_chain(Backend& backend,
                                                         const std::string& name) {
  std::vector<std::unique_ptr<ContainerReader>> files;
  files.push_back(backend.open(name));
  std::unordered_set<std::string> seen{name};
  for (;;) {
    const schema::ImageInfo& info = files.back()->meta().info;
    if (info.parent_file.empty()) break;
    std::string child = display_path(backend, files.back()->name());
    std::string parent = display_path(backend, info.parent_file);
    if (!seen.insert(info.parent_file).second)
      fail(Errc::corrupt, child + ": the chain of parents loops back to " + parent);
    std::unique_ptr<ContainerReader> p;
    try {
      p = backend.open(info.parent_file);
    } catch (Error& e) {
      if (e.kind() == Errc::not_found)
        throw Error(Errc::missing_ancestor, child + ": parent " + parent + " is missing");
      e.with_context(child + ": parent");
      throw;
    }
    if (p->meta().info.uuid != info.parent_uuid)
      fail(Errc::missing_ancestor, child + ": parent " + parent + " has uuid " +
                                       p->meta().info.uuid + ", expected " + info.parent_uuid);
    files.push_back(std::move(p));
  }
  return files;
}

std::unique_ptr<CheckpointReader> make_chain_reader(Backend& backend, const std::string& name) {
  return std::make_unique<ChainReader>(backend, open_chain(backend, name));
}

VerifyReport verify_chain(Backend& backend, const std::string& name) {
  VerifyReport report;

  // Open one file at a time so that a broken ancestor still lets the rest be checked.
  std::vector<std::unique_ptr<ContainerReader>> files;
  std::string cur = name;
  std::unordered_set<std::string> seen{name};
  std::string expected_uuid;
  std::string child;
  while (!cur.empty()) {
    std::unique_ptr<ContainerReader> f;
    try {
      f = backend.open(cur);
    } catch (const Error& e) {
      if (files.empty() || e.kind() != Errc::not_found) {
        std::string prefix = files.empty() ? "" : child + ": parent: ";
        report.errors.push_back(
            files.empty() ? line(e) : std::string(kind_name(e.kind())) + ": " + prefix + e.what());
      } else {
        report.errors.push_back("missing-ancestor: " + child + ": parent " +
                                display_path(backend, cur) + " is missing");
      }
      break;
    }
    if (!files.empty() && f->meta().info.uuid != expected_uuid) {
      report.errors.push_back("missing-ancestor: " + child + ": parent " +
                              display_path(backend, cur) + " has uuid " + f->meta().info.uuid +
                              ", expected " + expected_uuid);
      break;
    }
    child = display_path(backend, cur);
    expected_uuid = f->meta().info.parent_uuid;
    cur = f->meta().info.parent_file;
    files.push_back(std::move(f));
    if (!cur.empty() && !seen.insert(cur).second) {
      report.errors.push_back("corrupt: " + child + ": the chain of parents loops back to " +
                              display_path(backend, cur));
      break;
    }
  }

  // When an ancestor could not be opened, runs into it were already reported as one line.
  bool chain_whole = !files.empty() && files.back()->meta().info.parent_file.empty();
  for (size_t i = 0; i < files.size(); ++i) {
    ContainerReader& f = *files[i];
    std::string path = display_path(backend, f.name());
    VerifyReport::File entry;
    entry.name = f.name();
    entry.chunks = f.chunks().size();
    for (const auto& c : f.chunks()) entry.bytes_stored += c.stored_bytes;

    std::vector<std::string> chunk_errors = verify_chunks(f, path);
    for (auto& e : chunk_errors) {
      if (e.empty()) continue;
      entry.chunks_bad++;
      report.errors.push_back(std::move(e));
    }
    std::vector<const ContainerReader*> sub;
    for (size_t j = i; j < files.size(); ++j) sub.push_back(files[j].get());
    for (auto& p : check_index(sub, path, 20, chain_whole))
      report.errors.push_back("corrupt: " + p);
    report.files.push_back(std::move(entry));
  }
  return report;
}

}  // namespace crest::storage
