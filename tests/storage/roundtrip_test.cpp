// Round trips through both backends: metadata (every table, variable-length fields, stats, info)
// and pages of every shape, read back byte for byte.
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

using schema::kChunkPages;
using schema::kPageSize;
using schema::PageKind;

class RoundTrip : public testing::TestWithParam<BackendKind> {
 protected:
  TempDir dir_;
  std::unique_ptr<storage::ImageStore> store_ = make_store(GetParam(), dir_);
};

schema::CheckpointMeta full_meta() {
  schema::CheckpointMeta m;
  m.info.job_id = "solver-7";
  m.info.scheduler_job_id = "slurm:1234.0";
  m.info.root_pid = 4242;
  m.info.pid_namespace = 1;
  m.info.tracker = "uffd-wp";
  m.info.mode = "cow";
  m.info.xsave_mask = 0x2ff;
  m.info.host = "node017";
  m.info.created_ns = 1700000000123456789;
  m.stats = {{"frozen_ns", 1234567}, {"negative_test", -5}, {"pages_scanned", 99}};

  schema::ProcessRecord p;
  p.pid = 4242;
  p.ppid = 1;
  p.flags = schema::kProcessRoot;
  p.groups = {0, 27, 100};
  p.comm = "solver";
  p.exe = "/usr/bin/solver ü";  // UTF-8
  p.cwd = "/scratch/run";
  p.root = "/";
  p.auxv = {33, 0x7ffd0000, 16, 0xbfebfbff, 0, 0};
  p.rlimits = {};  // empty vector round-trips as empty
  p.brk = 0x555555560000;
  p.mem_owner = 1;
  schema::ProcessRecord child = p;
  child.pid = 4243;
  child.ppid = 4242;
  child.groups.clear();
  child.comm = "";
  m.processes = {p, child};

  schema::ThreadRecord t;
  t.pid = 4242;
  t.tid = 4244;
  for (size_t i = 0; i < t.regs.size(); ++i) t.regs[i] = 0x1000 + i * 0x1111;
  t.xstate.resize(2696);
  for (size_t i = 0; i < t.xstate.size(); ++i) t.xstate[i] = static_cast<uint8_t>(i * 7);
  t.sigmask = 1ull << 13;
  t.comm = "worker-1";
  m.threads = {t};

  m.sigactions = {{4242, 10, 0x401000, 0x04000000, 0x402000, 1ull << 9}};
  m.signals = {{4242, 0, std::vector<uint8_t>(128, 0xab)}};
  schema::VmaRecord v;
  v.pid = 4242;
  v.start = 0x7f0000000000;
  v.end = 0x7f0000100000;
  v.prot = 3;
  v.flags = 2;
  v.owner = 1;
  v.name = "[heap]";
  m.vmas = {v};
  schema::FileRecord f;
  f.id = 3;
  f.kind = static_cast<uint32_t>(schema::FileKind::regular);
  f.path = "/scratch/run/out.dat";
  f.pos = 123456789012;
  f.mtime_ns = -1;
  m.files = {f};
  m.fds = {{4242, 3, 3, 1}};
  m.pipes = {{7, 991, 65536, {1, 2, 3, 4, 5}}, {8, 992, 4096, {}}};
  m.owners = {{1, 0, 4242, -1}};
  return m;
}

TEST_P(RoundTrip, MetadataEveryTableAndField) {
  schema::CheckpointMeta m = full_meta();
  std::string name = write_image(*store_, {}, "", {}, m);
  EXPECT_EQ(name, "ckpt-000001.h5");
  auto r = store_->open(name);
  const schema::CheckpointMeta& got = r->meta();

  // Identity fields are the writer's; the rest is ours.
  EXPECT_EQ(got.info.format, schema::kFormatName);
  EXPECT_EQ(got.info.format_version, schema::kFormatVersion);
  EXPECT_EQ(got.info.complete, 1u);
  EXPECT_EQ(got.info.sequence, 1u);
  EXPECT_EQ(got.info.uuid.size(), 36u);
  EXPECT_EQ(got.info.uuid[14], '4');
  EXPECT_TRUE(got.info.parent_uuid.empty());
  EXPECT_EQ(got.info.crest_version, CREST_VERSION);
  EXPECT_FALSE(got.info.kernel_release.empty());
  EXPECT_FALSE(got.info.machine.empty());
  EXPECT_EQ(got.info.host, "node017");  // given, so not replaced by uname
  EXPECT_EQ(got.info.created_ns, m.info.created_ns);
  EXPECT_EQ(got.info.job_id, m.info.job_id);
  EXPECT_EQ(got.info.scheduler_job_id, m.info.scheduler_job_id);
  EXPECT_EQ(got.info.root_pid, m.info.root_pid);
  EXPECT_EQ(got.info.pid_namespace, 1u);
  EXPECT_EQ(got.info.tracker, "uffd-wp");
  EXPECT_EQ(got.info.mode, "cow");
  EXPECT_EQ(got.info.xsave_mask, m.info.xsave_mask);

  for (const auto& [k, v] : m.stats) EXPECT_EQ(got.stats.at(k), v) << k;
  EXPECT_EQ(got.stats.at("pages_in"), 0);

  // Tables: compare field by field through the schema's own field lists.
  auto same_tables = [](const auto& a, const auto& b) {
    using T = typename std::decay_t<decltype(a)>::value_type;
    ASSERT_EQ(a.size(), b.size()) << schema::Table<T>::name;
    for (size_t i = 0; i < a.size(); ++i) {
      auto one = [&](const auto& f) {
        EXPECT_EQ(a[i].*(f.member), b[i].*(f.member)) << schema::Table<T>::name << "." << f.name;
      };
      std::apply([&](const auto&... f) { (one(f), ...); }, schema::Table<T>::fields());
    }
  };
  same_tables(got.processes, m.processes);
  same_tables(got.threads, m.threads);
  same_tables(got.sigactions, m.sigactions);
  same_tables(got.signals, m.signals);
  same_tables(got.vmas, m.vmas);
  same_tables(got.files, m.files);
  same_tables(got.fds, m.fds);
  same_tables(got.pipes, m.pipes);
  same_tables(got.owners, m.owners);
  EXPECT_TRUE(r->page_index().empty());
  EXPECT_TRUE(r->chunks().empty());
}

TEST_P(RoundTrip, PagesRandomZeroMixedSparse) {
  std::mt19937_64 rng(7);
  Image img;
  // owner 1: 600 random pages (incompressible: raw chunks), contiguous
  for (uint64_t i = 0; i < 600; ++i)
    img[{1, 0x10000000 + i * kPageSize}] = {PageKind::data, random_page(rng)};
  // owner 2: 300 zero pages, contiguous
  for (uint64_t i = 0; i < 300; ++i) img[{2, 0x20000000 + i * kPageSize}] = {PageKind::zero, {}};
  // owner 3: mixed, sparse: holes, zero, patterned and random pages interleaved
  for (uint64_t i = 0; i < 2000; ++i) {
    if (i % 7 == 3 || (i / 50) % 4 == 1) continue;  // holes
    PageKey key{3, 0x7f0000000000 + i * kPageSize};
    if (i % 5 == 0)
      img[key] = {PageKind::zero, {}};
    else if (i % 3 == 0)
      img[key] = {PageKind::data, random_page(rng)};
    else
      img[key] = {PageKind::data, pattern_page(i)};
  }
  // owner 4: pages shared copy-on-write with the parent process
  for (uint64_t i = 0; i < 10; ++i) img[{4, 0x400000 + i * kPageSize}] = {PageKind::cow_parent, {}};

  std::string name = write_image(*store_, img);
  auto r = store_->open(name);
  CollectSink sink;
  r->read_pages({}, sink);
  EXPECT_EQ(sink.pages.size(), img.size());
  EXPECT_TRUE(sink.pages == img) << "pages differ";

  // Zero pages come as runs, without bytes: owner 2's 300 pages in one call.
  CollectSink zeros;
  r->read_pages({2}, zeros);
  EXPECT_EQ(zeros.calls, 1u);
  EXPECT_EQ(zeros.zero_runs, 1u);
  EXPECT_EQ(zeros.pages.size(), 300u);

  // Only the owners asked for; absent pages stay absent.
  CollectSink some;
  r->read_pages({3, 4}, some);
  for (const auto& [key, v] : some.pages) EXPECT_TRUE(key.first == 3 || key.first == 4);
  EXPECT_EQ(some.pages.count({3, 0x7f0000000000 + 3 * kPageSize}), 0u);

  // The index is sorted, merged, and counts every present page.
  uint64_t present = 0;
  for (size_t i = 0; i < r->page_index().size(); ++i) {
    present += r->page_index()[i].npages;
    if (i > 0) {
      const auto& a = r->page_index()[i - 1];
      const auto& b = r->page_index()[i];
      EXPECT_TRUE(a.owner < b.owner ||
                  (a.owner == b.owner && a.addr + a.npages * kPageSize <= b.addr));
    }
  }
  EXPECT_EQ(present, img.size());
  EXPECT_EQ(r->page_index().front().npages, 600u);  // owner 1 is one run

  const auto& s = r->meta().stats;
  uint64_t data_pages = 0, zero_pages = 0;
  for (const auto& [k, v] : img) {
    if (v.kind == PageKind::data) ++data_pages;
    if (v.kind == PageKind::zero) ++zero_pages;
  }
  EXPECT_EQ(s.at("pages_in"), static_cast<int64_t>(data_pages + zero_pages));
  EXPECT_EQ(s.at("pages_zero"), static_cast<int64_t>(zero_pages));
  EXPECT_EQ(s.at("pages_stored"), static_cast<int64_t>(data_pages));
  EXPECT_EQ(s.at("pages_present"), static_cast<int64_t>(img.size()));
  EXPECT_GT(s.at("chunks_raw"), 0);               // random pages do not shrink
  EXPECT_LT(s.at("chunks_raw"), s.at("chunks"));  // patterned ones do
  uint64_t stored = 0;
  for (const auto& c : r->chunks()) {
    stored += c.stored_bytes;
    EXPECT_LE(c.npages, kChunkPages);
    EXPECT_EQ(c.encoding() != schema::ChunkEncoding::raw, c.stored_bytes < schema::kChunkBytes);
  }
  EXPECT_EQ(s.at("bytes_stored"), static_cast<int64_t>(stored));
  EXPECT_TRUE(store_->verify(name).ok());
}

TEST_P(RoundTrip, OnlyZeroPagesStoreNoChunk) {
  Image img;
  for (uint64_t i = 0; i < 1000; ++i) img[{9, i * kPageSize}] = {PageKind::zero, {}};
  std::string name = write_image(*store_, img);
  auto r = store_->open(name);
  EXPECT_TRUE(r->chunks().empty());
  ASSERT_EQ(r->page_index().size(), 1u);
  EXPECT_EQ(r->page_index()[0].kind, static_cast<uint32_t>(PageKind::zero));
  EXPECT_TRUE(read_image(*store_, name) == img);
}

TEST_P(RoundTrip, ReferencesResolve) {
  Image img;
  img[{1, 0}] = {PageKind::data, pattern_page(1)};
  std::string a = write_image(*store_, img);
  std::string b = write_image(*store_, img);
  EXPECT_EQ(b, "ckpt-000002.h5");
  auto rb = store_->open(b);
  EXPECT_EQ(store_->open("")->name(), b);
  EXPECT_EQ(store_->open("latest")->name(), b);
  EXPECT_EQ(store_->open("1")->name(), a);
  EXPECT_EQ(store_->open(rb->info().uuid)->name(), b);
  EXPECT_EQ(store_->open(rb->info().uuid.substr(0, 13))->name(), b);
  EXPECT_EQ(expect_error([&] { store_->open("7"); }).kind(), Errc::not_found);
  EXPECT_EQ(expect_error([&] { store_->open("nonesuch"); }).kind(), Errc::not_found);
  auto list = store_->list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, a);
  EXPECT_TRUE(list[0].readable);
  EXPECT_EQ(store_->newest()->name, b);
}

TEST_P(RoundTrip, SecondWriterIsBusyUncommittedWriterLeavesNothing) {
  {
    auto w = store_->begin();
    Error e = expect_error([&] { store_->begin(); });
    EXPECT_EQ(e.kind(), Errc::busy);
    EXPECT_NE(std::string(e.what()).find(store_->location()), std::string::npos) << e.what();
    Image img;
    img[{1, 0}] = {PageKind::data, pattern_page(3)};
    ImageSource src(img);
    w->write_pages(src);
    // destroyed without commit
  }
  EXPECT_TRUE(store_->list().empty());
  EXPECT_FALSE(store_->newest().has_value());
  if (GetParam() == BackendKind::directory) {
    EXPECT_NE(::access((dir_.path() + "/images/ckpt-000001.h5.tmp").c_str(), F_OK), 0);
  }
  auto w = store_->begin();  // lock released
  EXPECT_EQ(w->commit({}), "ckpt-000001.h5");
}

TEST_P(RoundTrip, RemoveRefusesParent) {
  Image img;
  img[{1, 0}] = {PageKind::data, pattern_page(5)};
  std::string a = write_image(*store_, img);
  std::string b = write_image(*store_, {}, a, {{1, 0, 1}});
  Error e = expect_error([&] { store_->remove(a); });
  EXPECT_EQ(e.kind(), Errc::refused);
  EXPECT_NE(std::string(e.what()).find(b), std::string::npos);
  store_->remove(b);
  EXPECT_EQ(store_->newest()->name, a);
  store_->remove(a);
  EXPECT_TRUE(store_->list().empty());
  EXPECT_EQ(expect_error([&] { store_->remove(a); }).kind(), Errc::not_found);
}

TEST_P(RoundTrip, PageGivenTwiceKeepsTheLaterBytes) {
  auto w = store_->begin();
  Image a, b;
  a[{1, 0}] = {PageKind::data, pattern_page(1)};
  b[{1, 0}] = {PageKind::data, pattern_page(2)};
  ImageSource s1(a), s2(b);
  w->write_pages(s1);
  w->write_pages(s2);
  std::string name = w->commit({});
  EXPECT_EQ(read_image(*store_, name), b);
}

TEST_P(RoundTrip, WriterKnowsItsUuidBeforeCommit) {
  auto w1 = store_->begin();
  std::string u1 = w1->uuid();
  EXPECT_EQ(u1.size(), 36u);
  EXPECT_EQ(w1->parent_uuid(), "");
  std::string n1 = w1->commit({});
  w1.reset();
  auto w2 = store_->begin(n1);
  EXPECT_EQ(w2->parent_uuid(), u1);
  EXPECT_NE(w2->uuid(), u1);
  std::string u2 = w2->uuid();
  std::string n2 = w2->commit({});
  EXPECT_EQ(store_->open(n1)->info().uuid, u1);
  EXPECT_EQ(store_->open(n2)->info().uuid, u2);
  EXPECT_EQ(store_->open(n2)->info().parent_uuid, u1);
}

// An error inside the pipeline (here the source's) reaches the caller as itself; the writer is
// then unusable and leaves nothing behind.
TEST_P(RoundTrip, SourceErrorPropagatesAndLeavesNothing) {
  struct Failing : storage::PageSource {
    int calls = 0;
    bool fill(storage::PageBatch& b) override {
      if (++calls == 5) throw Error(Errc::kernel, "process_vm_readv of pid 42 failed");
      auto page = pattern_page(calls);
      std::memcpy(b.next_page(), page.data(), kPageSize);
      b.add(1, static_cast<uint64_t>(calls) * kPageSize, 1);
      return true;
    }
  } src;
  {
    auto w = store_->begin();
    Error e = expect_error([&] { w->write_pages(src); });
    EXPECT_EQ(e.kind(), Errc::kernel);
    EXPECT_STREQ(e.what(), "process_vm_readv of pid 42 failed");
    EXPECT_EQ(expect_error([&] { w->commit({}); }).kind(), Errc::internal);
  }
  EXPECT_TRUE(store_->list().empty());
  if (GetParam() == BackendKind::directory) {
    EXPECT_NE(::access((dir_.path() + "/images/ckpt-000001.h5.tmp").c_str(), F_OK), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, RoundTrip,
                         testing::Values(BackendKind::directory, BackendKind::memory),
                         backend_name);

TEST(RoundTripFile, ModeIs0600AndLatestPoints) {
  TempDir dir;
  auto store = storage::ImageStore::open_directory(dir.path() + "/imgs", true);
  struct stat st {};
  ASSERT_EQ(::stat((dir.path() + "/imgs").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  Image img;
  img[{1, 0}] = {PageKind::data, pattern_page(1)};
  std::string name = write_image(*store, img);
  ASSERT_EQ(::stat((dir.path() + "/imgs/" + name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  char target[256] = {};
  ASSERT_GT(::readlink((dir.path() + "/imgs/latest").c_str(), target, sizeof target - 1), 0);
  EXPECT_EQ(std::string(target), name);
  std::string second = write_image(*store, img);
  ASSERT_GT(::readlink((dir.path() + "/imgs/latest").c_str(), target, sizeof target - 1), 0);
  EXPECT_EQ(std::string(target), second);
}

// Page chunks go to the disk with O_DIRECT where the file system takes it (the test's working
// directory, on a disk) and through the page cache where it does not (tmpfs refuses O_DIRECT):
// the same image reads back byte for byte and verifies either way. Chunks of every size: raw,
// compressed to a few blocks, compressed below the alignment threshold.
TEST(RoundTripFile, DirectAndBufferedWritesReadBack) {
  std::mt19937_64 rng(11);
  Image img;
  for (uint64_t i = 0; i < 3000; ++i) {
    PageKey key{1, 0x7f0000000000 + i * kPageSize};
    if (i % 11 == 0) continue;
    if (i < 700 || i % 3 == 0)
      img[key] = {PageKind::data, random_page(rng)};
    else if (i % 5 == 0)
      img[key] = {PageKind::zero, {}};
    else
      img[key] = {PageKind::data, pattern_page(i)};
  }
  // A chunk that compresses to almost nothing (below the alignment threshold).
  for (uint64_t i = 0; i < 256; ++i)
    img[{2, 0x10000000 + i * kPageSize}] = {PageKind::data, pattern_page(7)};
  auto round_trip = [&](const std::string& where) {
    SCOPED_TRACE(where);
    auto store = storage::ImageStore::open_directory(where + "/imgs", true);
    std::string name = write_image(*store, img);
    EXPECT_TRUE(read_image(*store, name) == img);
    EXPECT_TRUE(store->verify(name).ok());
  };
  TempDir disk;
  round_trip(disk.path());
  struct statfs fs {};
  if (::statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC) {
    GTEST_SKIP() << "no tmpfs at /dev/shm to check the page-cache fallback on";
  }
  char tmpl[] = "/dev/shm/crest-storage-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  round_trip(tmpl);
  std::filesystem::remove_all(tmpl);
}

// A chunk whose sample does not shrink is stored raw without being compressed; a chunk of mixed
// content is compressed, even when its kinds alternate page by page.
TEST_P(RoundTrip, IncompressibleChunksRawMixedChunksCompressed) {
  std::mt19937_64 rng(5);
  Image img;
  for (uint64_t i = 0; i < kChunkPages; ++i)
    img[{1, 0x10000000 + i * kPageSize}] = {PageKind::data, random_page(rng)};
  for (uint64_t i = 0; i < kChunkPages; ++i)
    img[{2, 0x20000000 + i * kPageSize}] = {PageKind::data,
                                            i % 2 ? pattern_page(i) : random_page(rng)};
  std::string name = write_image(*store_, img);
  auto r = store_->open(name);
  ASSERT_EQ(r->chunks().size(), 2u);
  EXPECT_EQ(r->chunks()[0].encoding(), schema::ChunkEncoding::raw);
  EXPECT_EQ(r->chunks()[0].stored_bytes, schema::kChunkBytes);
  EXPECT_NE(r->chunks()[1].encoding(), schema::ChunkEncoding::raw);
  EXPECT_LT(r->chunks()[1].stored_bytes, schema::kChunkBytes * 3 / 4);
  EXPECT_TRUE(read_image(*store_, name) == img);
  EXPECT_TRUE(store_->verify(name).ok());
}

TEST(RoundTripFile, MissingDirectoryWithoutCreate) {
  TempDir dir;
  Error e = expect_error([&] { storage::ImageStore::open_directory(dir.path() + "/nope"); });
  EXPECT_EQ(e.kind(), Errc::not_found);
}

}  // namespace
}  // namespace crest::test
