// Incremental chains: three checkpoints with pages added, changed, kept and removed resolve to
// exactly the newest state, and every point of the chain to its own.
#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

using schema::kPageSize;
using schema::PageKind;

class Chain : public testing::TestWithParam<BackendKind> {
 protected:
  TempDir dir_;
  std::unique_ptr<storage::ImageStore> store_ = make_store(GetParam(), dir_);
};

uint64_t addr(uint64_t i) { return 0x7f0000000000 + i * kPageSize; }

// Writes `next` as an increment over `parent_ref` whose state is `prev`: pages equal in both are
// kept (their bytes stay in the ancestor), the others are written, and pages absent from `next`
// are simply not mentioned.
std::string write_increment(storage::ImageStore& store, const std::string& parent_ref,
                            const Image& prev, const Image& next) {
  Image changed;
  std::vector<PageExtent> keep;
  for (const auto& [key, v] : next) {
    auto it = prev.find(key);
    if (it != prev.end() && it->second == v) {
      if (!keep.empty() && keep.back().owner == key.first &&
          keep.back().addr + keep.back().npages * kPageSize == key.second)
        keep.back().npages++;
      else
        keep.push_back({key.first, key.second, 1});
    } else {
      changed[key] = v;
    }
  }
  return write_image(store, changed, parent_ref, keep);
}

// A pre-copy writes pages while the job runs, then again the ones it wrote meanwhile, and drops
// the ones gone at the freeze: the later write wins, page by page, whatever the overlap, in a
// full checkpoint and in an incremental one (over kept pages too).
TEST_P(Chain, PagesGivenAgainReplaceEarlierOnesAndForgottenOnesAreGone) {
  std::mt19937_64 rng(5);
  Image base;
  for (uint64_t i = 0; i < 600; ++i) base[{1, addr(i)}] = {PageKind::data, pattern_page(i)};
  std::string n1 = write_image(*store_, base);

  for (bool incremental : {false, true}) {
    SCOPED_TRACE(incremental ? "incremental" : "full");
    Image first, second, want = incremental ? base : Image{};
    for (uint64_t i = 100; i < 400; ++i) first[{1, addr(i)}] = {PageKind::data, random_page(rng)};
    first[{2, addr(0)}] = {PageKind::data, pattern_page(1)};
    // Rewritten: a run inside, one straddling the end, one past it, and a page turned zero.
    for (uint64_t i = 150; i < 170; ++i) second[{1, addr(i)}] = {PageKind::data, random_page(rng)};
    for (uint64_t i = 390; i < 420; ++i) second[{1, addr(i)}] = {PageKind::data, random_page(rng)};
    second[{1, addr(200)}] = {PageKind::data, zero_page()};  // the writer finds it is zero
    for (auto& [k, v] : first) want[k] = v;
    for (auto& [k, v] : second) want[k] = v;
    want[{1, addr(200)}] = {PageKind::zero, {}};
    // Gone at the freeze: part of the first pass (also inside a rewritten run) and, for the
    // incremental, pages the parent has.
    std::vector<PageExtent> forget{{1, addr(300), 20}, {1, addr(160), 2}, {2, addr(0), 1}};
    if (incremental) forget.push_back({1, addr(550), 50});
    for (auto& f : forget)
      for (uint64_t p = 0; p < f.npages; ++p) want.erase({f.owner, f.addr + p * kPageSize});

    auto w = store_->begin(incremental ? n1 : "");
    if (incremental) {
      w->keep_pages({1, addr(0), 100});
      w->keep_pages({1, addr(420), 180});
    }
    ImageSource s1(first, 7), s2(second, 3);
    w->write_pages(s1);
    w->write_pages(s2);
    for (auto& f : forget) w->forget_pages(f);
    std::string name = w->commit({});
    Image got = read_image(*store_, name);
    EXPECT_EQ(got.size(), want.size());
    size_t bad = 0;
    for (auto& [k, v] : want) {
      auto it = got.find(k);
      if (it == got.end() || it->second != v) {
        if (++bad <= 5)
          ADD_FAILURE() << "page " << k.first << ":" << std::hex << k.second << std::dec << " ("
                        << (k.second - addr(0)) / kPageSize << ") "
                        << (it == got.end() ? "missing" : "differs");
      }
    }
    EXPECT_EQ(bad, 0u);
  }
}

TEST_P(Chain, ThreeIncrementsResolveToEachState) {
  std::mt19937_64 rng(11);
  Image s1;
  for (uint64_t i = 0; i < 900; ++i) {
    if (i % 10 == 9)
      s1[{1, addr(i)}] = {PageKind::zero, {}};
    else
      s1[{1, addr(i)}] = {PageKind::data, i % 2 ? random_page(rng) : pattern_page(i)};
  }
  for (uint64_t i = 0; i < 40; ++i) s1[{2, addr(i)}] = {PageKind::data, pattern_page(5000 + i)};

  Image s2 = s1;
  for (uint64_t i = 100; i < 200; ++i)
    s2[{1, addr(i)}] = {PageKind::data, random_page(rng)};      // changed
  for (uint64_t i = 300; i < 350; ++i) s2.erase({1, addr(i)});  // unmapped
  for (uint64_t i = 2000; i < 2100; ++i)
    s2[{1, addr(i)}] = {PageKind::data, pattern_page(i)};  // added
  s2[{1, addr(5)}] = {PageKind::zero, {}};                 // data → zero
  s2[{1, addr(9)}] = {PageKind::data, pattern_page(77)};   // zero → data

  Image s3 = s2;
  for (uint64_t i = 150; i < 160; ++i) s3[{1, addr(i)}] = {PageKind::data, pattern_page(9000 + i)};
  for (uint64_t i = 2050; i < 2100; ++i) s3.erase({1, addr(i)});
  for (uint64_t i = 0; i < 40; ++i) s3.erase({2, addr(i)});  // a whole owner gone
  for (uint64_t i = 300; i < 310; ++i)
    s3[{1, addr(i)}] = {PageKind::data, random_page(rng)};  // back
  s3[{3, addr(0)}] = {PageKind::cow_parent, {}};

  std::string n1 = write_image(*store_, s1);
  std::string n2 = write_increment(*store_, n1, s1, s2);
  std::string n3 = write_increment(*store_, "latest", s2, s3);

  auto r3 = store_->open();
  EXPECT_EQ(r3->name(), n3);
  EXPECT_EQ(r3->chain(), (std::vector<std::string>{n3, n2, n1}));
  EXPECT_EQ(r3->info().parent_file, n2);
  EXPECT_EQ(r3->info().parent_uuid, store_->open(n2)->info().uuid);
  // Pages kept through two increments are read from the first file.
  bool depth2 = false;
  for (const auto& r : r3->page_index()) depth2 |= r.depth == 2;
  EXPECT_TRUE(depth2);
  EXPECT_GT(r3->meta().stats.at("pages_kept"), 0);

  Image got3 = read_image(*store_, n3);
  EXPECT_EQ(got3.size(), s3.size());
  EXPECT_TRUE(got3 == s3);
  EXPECT_EQ(got3.count({1, addr(320)}), 0u);  // removed in 2, never comes back from 1
  EXPECT_TRUE(read_image(*store_, n2) == s2);
  EXPECT_TRUE(read_image(*store_, n1) == s1);

  auto report = store_->verify(n3);
  EXPECT_TRUE(report.ok()) << (report.errors.empty() ? "" : report.errors[0]);
  ASSERT_EQ(report.files.size(), 3u);
  EXPECT_EQ(report.files[0].name, n3);
  EXPECT_EQ(report.files[2].name, n1);
}

// A chain folded into one full checkpoint reads back the same, keeps its name and uuid, and
// the ancestors nothing else needs are gone.
TEST_P(Chain, CompactFoldsTheChainIntoOneFullCheckpoint) {
  std::mt19937_64 rng(5);
  Image s1, s2, s3;
  for (uint64_t i = 0; i < 700; ++i)
    s1[{1, addr(i)}] = i % 7 == 0 ? PageValue{PageKind::zero, {}} : PageValue{PageKind::data, random_page(rng)};
  s2 = s1;
  for (uint64_t i = 0; i < 100; ++i) s2[{1, addr(i * 3)}] = {PageKind::data, pattern_page(i)};
  for (uint64_t i = 500; i < 520; ++i) s2.erase({1, addr(i)});
  s3 = s2;
  for (uint64_t i = 0; i < 30; ++i) s3[{1, addr(1000 + i)}] = {PageKind::data, random_page(rng)};
  s3[{2, addr(0)}] = {PageKind::cow_parent, {}};
  std::string n1 = write_image(*store_, s1);
  std::string n2 = write_increment(*store_, n1, s1, s2);
  std::string n3 = write_increment(*store_, n2, s2, s3);
  std::string uuid = store_->open(n3)->info().uuid;

  auto result = store_->compact(n3);
  EXPECT_EQ(result.checkpoint, n3);
  EXPECT_EQ(result.files_before, 3u);
  EXPECT_EQ(result.removed, (std::vector<std::string>{n2, n1}));
  auto r = store_->open(n3);
  EXPECT_EQ(r->chain(), std::vector<std::string>{n3});
  EXPECT_EQ(r->info().uuid, uuid);
  EXPECT_TRUE(r->info().parent_file.empty());
  for (const auto& run : r->page_index()) EXPECT_EQ(run.depth, 0u);
  EXPECT_TRUE(read_image(*store_, n3) == s3);
  EXPECT_TRUE(store_->verify(n3).ok());
  ASSERT_EQ(store_->list().size(), 1u);
  // Compacting a full checkpoint changes nothing.
  EXPECT_TRUE(store_->compact(n3).removed.empty());
}

// An ancestor that another checkpoint still depends on survives the compaction.
TEST_P(Chain, CompactKeepsAncestorsOthersNeed) {
  Image s1, s2, s3;
  for (uint64_t i = 0; i < 50; ++i) s1[{1, addr(i)}] = {PageKind::data, pattern_page(i)};
  s2 = s1;
  s2[{1, addr(1)}] = {PageKind::data, pattern_page(901)};
  s3 = s1;
  s3[{1, addr(2)}] = {PageKind::data, pattern_page(902)};
  std::string n1 = write_image(*store_, s1);
  std::string n2 = write_increment(*store_, n1, s1, s2);
  std::string n3 = write_increment(*store_, n1, s1, s3);  // a second branch on n1
  auto result = store_->compact(n2);
  EXPECT_TRUE(result.removed.empty());
  EXPECT_TRUE(read_image(*store_, n2) == s2);
  EXPECT_TRUE(read_image(*store_, n3) == s3);
}

// A store whose checkpoints are copied elsewhere (crestd's node-local staging) numbers its next
// checkpoint past what the other side holds; never below its own newest.
TEST_P(Chain, MinSequenceNumbersPastIt) {
  Image s1;
  for (uint64_t i = 0; i < 8; ++i) s1[{1, addr(i)}] = {PageKind::data, pattern_page(i)};
  std::string n1 = write_image(*store_, s1);
  storage::WriteTuning tuning;
  tuning.min_sequence = 7;
  std::string n7 = store_->begin(n1, tuning)->commit({});
  EXPECT_EQ(n7, "ckpt-000007.h5");
  EXPECT_TRUE(read_image(*store_, n7) == Image{});
  tuning.min_sequence = 3;
  EXPECT_EQ(store_->begin(n7, tuning)->commit({}), "ckpt-000008.h5");
  EXPECT_EQ(store_->list().back().parent_file, n7);
}

// Pages written again with the same content are kept in the parent by the writer itself.
TEST_P(Chain, UnchangedContentIsKeptNotStored) {
  std::mt19937_64 rng(9);
  Image s1;
  for (uint64_t i = 0; i < 300; ++i) s1[{1, addr(i)}] = {PageKind::data, random_page(rng)};
  std::string n1 = write_image(*store_, s1);
  Image s2 = s1;
  for (uint64_t i = 0; i < 10; ++i) s2[{1, addr(i)}] = {PageKind::data, random_page(rng)};
  std::string n2 = write_image(*store_, s2, n1);  // every page handed in, none kept explicitly
  auto r = store_->open(n2);
  EXPECT_EQ(r->meta().stats.at("pages_stored"), 10);
  EXPECT_EQ(r->meta().stats.at("pages_same"), 290);
  EXPECT_TRUE(read_image(*store_, n2) == s2);
}

// An incremental by content that changes a few pages of every batch stores them packed into full
// chunks, not a mostly empty chunk per batch; a batch changed whole is a chunk of its own (the
// pack open before it closes first), and every page reads back, through a further increment too.
TEST_P(Chain, ScatteredChangesArePackedIntoFullChunks) {
  std::mt19937_64 rng(11);
  const uint64_t n = 16 * schema::kChunkPages;
  Image s1;
  for (uint64_t i = 0; i < n; ++i) s1[{1, addr(i)}] = {PageKind::data, pattern_page(i)};
  std::string n1 = write_image(*store_, s1);
  Image s2 = s1;
  uint64_t changed = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const bool whole_batch = i / schema::kChunkPages == 8;
    if (whole_batch || i % 20 == 0) {
      s2[{1, addr(i)}] = {PageKind::data, random_page(rng)};
      ++changed;
    }
  }
  std::string n2 = write_image(*store_, s2, n1);  // every page handed in, none kept explicitly
  auto r = store_->open(n2);
  EXPECT_EQ(r->meta().stats.at("pages_stored"), static_cast<int64_t>(changed));
  // Batches 0-7 fill one pack (closed early by batch 8), batch 8 its own chunk, 9-15 a pack.
  EXPECT_EQ(r->meta().stats.at("chunks"), 3);
  EXPECT_TRUE(read_image(*store_, n2) == s2);

  Image s3 = s2;
  for (uint64_t i = 5; i < n; i += 37) s3[{1, addr(i)}] = {PageKind::data, random_page(rng)};
  std::string n3 = write_image(*store_, s3, n2);
  EXPECT_EQ(store_->open(n3)->meta().stats.at("chunks"), 1);
  EXPECT_TRUE(read_image(*store_, n3) == s3);
  EXPECT_TRUE(read_image(*store_, n2) == s2);
}

TEST_P(Chain, KeepingPagesTheParentLacksIsMissingAncestor) {
  Image s1;
  s1[{1, addr(0)}] = {PageKind::data, pattern_page(1)};
  s1[{1, addr(1)}] = {PageKind::data, pattern_page(2)};
  std::string n1 = write_image(*store_, s1);
  auto w = store_->begin(n1);
  EXPECT_EQ(w->parent_index().size(), 1u);
  w->keep_pages({1, addr(0), 2});  // fine
  Error e = expect_error([&] { w->keep_pages({1, addr(1), 2}); });
  EXPECT_EQ(e.kind(), Errc::missing_ancestor);
  EXPECT_NE(std::string(e.what()).find("0x7f0000002000"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("owner 1"), std::string::npos) << e.what();
  EXPECT_EQ(expect_error([&] { w->keep_pages({2, addr(0), 1}); }).kind(), Errc::missing_ancestor);
  // The refused extents left nothing behind: the checkpoint holds exactly the two kept pages.
  std::string n2 = w->commit({});
  auto r = store_->open(n2);
  ASSERT_EQ(r->page_index().size(), 1u);
  EXPECT_EQ(r->page_index()[0].npages, 2u);
  EXPECT_EQ(r->page_index()[0].depth, 1u);
  EXPECT_TRUE(read_image(*store_, n2) == s1);
}

TEST_P(Chain, KeepWithoutParentIsMissingAncestor) {
  auto w = store_->begin();
  EXPECT_EQ(expect_error([&] { w->keep_pages({1, 0, 1}); }).kind(), Errc::missing_ancestor);
}

INSTANTIATE_TEST_SUITE_P(Backends, Chain,
                         testing::Values(BackendKind::directory, BackendKind::memory),
                         backend_name);

}  // namespace
}  // namespace crest::test
