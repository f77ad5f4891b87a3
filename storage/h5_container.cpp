// The directory backend: one HDF5 file per checkpoint in an images directory.
//
// File layout (see README.md for reading it with stock tools):
//   /                 attributes: every ImageInfo field (strings as variable-length UTF-8,
//                     integers as scalars), `complete` (u32) written last
//   /stats            one int64 attribute per statistic
//   /processes ...    one compound dataset per table of storage/schema.h
//   /pages/index      the page index (PageRun rows)
//   /pages/chunks     one ChunkRecord per chunk of /pages/data
//   /pages/hashes     XXH3-128 of each row of /pages/data (what the next checkpoint compares with)
//   /pages/data       u64le [rows, 512] (a row is one page's 4096 bytes), chunks of [256, 512]
//                     (1 MiB), filter pipeline: byte shuffle (2), then LZ4 (32004). Each chunk's
//                     filter mask says which filters it went through: shuffle and LZ4 (mask 0),
//                     LZ4 alone (bit 0 set), neither (bits 0 and 1: it did not shrink), so stock
//                     HDF5 (and h5py) undo exactly what was done.
// Files are written as NAME.tmp (created 0600 by us, then truncated by HDF5, which keeps the
// mode), fsynced, renamed into place, and the directory is fsynced.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "core/util/fs.h"
#include "core/util/log.h"
#include "storage/byte_shuffle.h"
#include "storage/container.h"
#include "storage/h5_direct_vfd.h"
#include "storage/h5_util.h"
#include "storage/lz4_chunk.h"

namespace crest::storage {
namespace {

using h5::Handle;
using schema::kChunkPages;
using schema::kPageSize;

constexpr const char* kDataPath = "pages/data";
// u64 words per row of /pages/data: the shuffle filter's element size is the type's.
constexpr uint64_t kRowWords = kPageSize / shuffle::kElement;

// The filter mask of a chunk written with `e` through the pipeline [shuffle, LZ4]: bit i set
// means filter i was skipped.
uint32_t filter_mask(schema::ChunkEncoding e) {
  switch (e) {
    case schema::ChunkEncoding::shuffle_lz4:
      return 0u;
    case schema::ChunkEncoding::lz4:
      return 1u;
    case schema::ChunkEncoding::raw:
      break;
  }
  return 3u;
}

// What a chunk's filter mask says was done to it (the inverse of filter_mask); nothing for a
// mask crest never writes (shuffled but not compressed, or filters it does not know).
std::optional<schema::ChunkEncoding> encoding_of(uint32_t mask) {
  switch (mask) {
    case 0:
      return schema::ChunkEncoding::shuffle_lz4;
    case 1:
      return schema::ChunkEncoding::lz4;
    case 3:
      return schema::ChunkEncoding::raw;
    default:
      return std::nullopt;
  }
}

const char* encoding_name(schema::ChunkEncoding e) {
  switch (e) {
    case schema::ChunkEncoding::shuffle_lz4:
      return "shuffled + LZ4";
    case schema::ChunkEncoding::lz4:
      return "LZ4";
    case schema::ChunkEncoding::raw:
      break;
  }
  return "raw";
}

// /pages/data grows by this many chunks at a time while writing; commit trims it to the exact
// size. Growing per chunk would rewrite the dataspace message once per MiB.
constexpr uint64_t kGrowChunks = 64;
// Dirty page-cache bytes after which the writer asks the kernel to start writing the file back,
// so that the final fsync finds most of the file already on its way to disk.
constexpr uint64_t kWritebackBytes = 64ull << 20;

auto logger() { return log::get("storage.h5"); }

Handle file_access_plist(const std::string& what, bool writing) {
  Handle fapl = h5::plist(H5Pcreate(H5P_FILE_ACCESS), what);
  // The 1.10 format: the extensible-array chunk index for the one unlimited dimension, and
  // checksummed metadata, readable by the HDF5 1.10 that Debian 12 ships.
  h5::check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110), Errc::internal,
            what);
  // HDF5's own file locking stays at its default (lock, but carry on where the file system has
  // locks disabled, as shared file systems often do): other openers of the same file in this
  // process must use the same setting, or HDF5 refuses to open it.
  //
  // The writer's file is ours alone: refuse to close it while an object is still open (it would
  // stay open, unflushed, silently). Readers keep the default, because HDF5 shares one open file
  // between all openers in a process and they must agree on this setting.
  if (writing) h5::check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_SEMI), Errc::internal, what);
  return fapl;
}

// Unlinks a path on destruction unless disarmed: an abandoned .tmp never outlives its writer.
struct TmpGuard {
  std::string path;
  bool armed = false;
  ~TmpGuard() {
    if (armed && ::unlink(path.c_str()) != 0 && errno != ENOENT)
      logger()->warn("cannot remove {}: {}", path, std::strerror(errno));
  }
};

template <class I>
void write_info_field(hid_t file, const char* name, const I& v, const std::string& what) {
  h5::write_attr(file, name, v, what);
}

class H5Writer final : public ContainerWriter {
 public:
  H5Writer(const std::string& dir, const std::string& name)
      : dir_(dir), final_path_(dir + "/" + name) {
    h5::init();
    guard_.path = final_path_ + ".tmp";
    const std::string& tmp = guard_.path;
    int fd = ::open(tmp.c_str(), O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) throw_errno("cannot create " + tmp);
    guard_.armed = true;
    fd_.reset(fd);
    Handle fapl = file_access_plist(tmp, true);
    // Page chunks go to the disk with O_DIRECT where the file system takes it (h5_direct_vfd.h).
    h5::use_direct_driver(fapl.get());
    // TRUNC on the file we just made: HDF5 reuses the inode, so the 0600 mode stays. HDF5 opens
    // it through our descriptor, never by its name again: in a directory another user can
    // write (crestd writes as root in the user's), the name could meanwhile be a link to
    // anything.
    const std::string self = "/proc/self/fd/" + std::to_string(fd);
    file_ = h5::file(H5Fcreate(self.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                     tmp + ": cannot create HDF5 file");
    create_data(tmp);
  }

  ~H5Writer() override {
    // Abandoned (a write failed, or the dump did): the file's blocks go back first. On a full
    // file system this is what lets HDF5's close write its last metadata and close cleanly; a
    // close that fails leaves HDF5 with a half-closed file (HDF5 1.10 then crashes in its exit
    // handler, or on the next open in a long-lived crestd).
    if (guard_.armed && fd_ && ::ftruncate(fd_.get(), 0) != 0)
      logger()->warn("cannot truncate {}: {}", guard_.path, std::strerror(errno));
    // Handles close before guard_ unlinks the file (members are destroyed in reverse order).
    data_.reset();
    file_.reset();
  }

  void write_chunk(uint64_t index, const std::byte* stored, size_t size,
                   schema::ChunkEncoding encoding) override {
    h5::init();
    const std::string& tmp = guard_.path;
    uint64_t need = (index + 1) * kChunkPages;
    if (need > rows_) {
      rows_ = std::max(need, rows_ + kGrowChunks * kChunkPages);
      hsize_t dims[2] = {rows_, kRowWords};
      h5::check(H5Dset_extent(data_.get(), dims), Errc::io, tmp + ": cannot grow /pages/data");
    }
    hsize_t offset[2] = {index * kChunkPages, 0};
    uint32_t mask = filter_mask(encoding);
    h5::check(H5Dwrite_chunk(data_.get(), H5P_DEFAULT, mask, offset, size, stored), Errc::io,
              tmp + ": cannot write chunk " + std::to_string(index));
    dirty_ += size;
    if (dirty_ >= kWritebackBytes) {
      // Asynchronous: starts writeback of what is dirty now and returns at once.
      ::sync_file_range(fd_.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
      dirty_ = 0;
    }
  }

  void commit(const schema::CheckpointMeta& meta, const std::vector<schema::PageRun>& index,
              const std::vector<schema::ChunkRecord>& chunks,
              const std::vector<schema::PageHash>& hashes) override {
    h5::init();
    const std::string& tmp = guard_.path;
    hid_t f = file_.get();
    hsize_t dims[2] = {chunks.size() * kChunkPages, kRowWords};
    h5::check(H5Dset_extent(data_.get(), dims), Errc::io, tmp + ": cannot size /pages/data");
    data_.close(Errc::io, tmp + ": cannot close /pages/data");

    std::apply(
        [&](const auto&... fld) {
          (write_info_field(f, fld.name, meta.info.*(fld.member), tmp), ...);
        },
        schema::Table<schema::ImageInfo>::fields());
    {
      Handle stats = h5::group(H5Gcreate2(f, "stats", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                               tmp + ": cannot create /stats");
      for (const auto& [name, value] : meta.stats)
        h5::write_attr(stats.get(), name.c_str(), value, tmp);
    }
    schema::for_each_table(meta, [&](const auto& rows) { h5::write_table(f, rows, tmp); });
    h5::write_table(f, index, tmp);
    h5::write_table(f, chunks, tmp);
    h5::write_table(f, hashes, tmp);
    h5::write_attr(f, "complete", uint32_t{1}, tmp);
    // Everything written before the close: a write that fails (ENOSPC) fails here, with the
    // file still open for the destructor to give its space back and close it cleanly.
    h5::check(H5Fflush(f, H5F_SCOPE_LOCAL), Errc::io, tmp + ": cannot write");
    const h5::DirectCounters io = h5::direct_counters(f);
    logger()->debug("{}: {} bytes written with O_DIRECT in {} ms, {} through the page cache in "
                    "{} ms{}",
                    tmp, io.direct_bytes, io.direct_ns / 1000000, io.buffered_bytes,
                    io.buffered_ns / 1000000, io.direct ? "" : " (no O_DIRECT here)");
    file_.close(Errc::io, tmp + ": cannot close");

    fs::fsync_or_throw(fd_.get(), tmp);
    fd_.reset();
    if (::rename(tmp.c_str(), final_path_.c_str()) != 0)
      throw_errno("cannot rename " + tmp + " to " + final_path_);
    guard_.armed = false;
    fs::fsync_dir(dir_);
  }

 private:
  void create_data(const std::string& tmp) {
    hsize_t dims[2] = {0, kRowWords};
    hsize_t maxdims[2] = {H5S_UNLIMITED, kRowWords};
    hsize_t chunk[2] = {kChunkPages, kRowWords};
    Handle space = h5::dataspace(H5Screate_simple(2, dims, maxdims), tmp);
    Handle dcpl = h5::plist(H5Pcreate(H5P_DATASET_CREATE), tmp);
    h5::check(H5Pset_chunk(dcpl.get(), 2, chunk), Errc::internal, tmp);
    // Filter 0: HDF5's shuffle, which takes its element size (8) from the u64 type.
    h5::check(H5Pset_shuffle(dcpl.get()), Errc::internal, tmp + ": cannot add the shuffle filter");
    unsigned cd[1] = {static_cast<unsigned>(schema::kChunkBytes)};
    h5::check(H5Pset_filter(dcpl.get(), lz4::kFilterId, H5Z_FLAG_OPTIONAL, 1, cd), Errc::internal,
              tmp + ": cannot add the LZ4 filter");
    // Every chunk is written whole by us; fill values would only cost writes.
    h5::check(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), Errc::internal, tmp);
    Handle lcpl = h5::plist(H5Pcreate(H5P_LINK_CREATE), tmp);
    h5::check(H5Pset_create_intermediate_group(lcpl.get(), 1), Errc::internal, tmp);
    data_ = h5::dataset(H5Dcreate2(file_.get(), kDataPath, H5T_STD_U64LE, space.get(), lcpl.get(),
                                   dcpl.get(), H5P_DEFAULT),
                        tmp + ": cannot create /pages/data");
  }

  std::string dir_;
  std::string final_path_;
  TmpGuard guard_;  // first member: destroyed last, after the fd and HDF5 handles are closed
  UniqueFd fd_;
  Handle file_;
  Handle data_;
  uint64_t rows_ = 0;
  uint64_t dirty_ = 0;
};

template <class I>
void read_info_field(hid_t file, const char* name, I& v, const std::string& what) {
  h5::read_attr(file, name, v, what);
}

class H5Reader final : public ContainerReader {
 public:
  H5Reader(const std::string& dir, const std::string& name) : name_(name), path_(dir + "/" + name) {
    h5::init();
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) throw_errno("cannot open " + path_);
    if (!S_ISREG(st.st_mode)) fail(Errc::not_image, path_ + ": not a regular file");
    Handle fapl = file_access_plist(path_, false);
    file_ = h5::file(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl.get()), path_);
    hid_t f = file_.get();
    haddr_t eoa = 0;
    h5::check(H5Fget_eoa(f, &eoa), Errc::corrupt, path_);
    if (static_cast<uint64_t>(st.st_size) < eoa)
      fail(Errc::truncated, path_ + ": truncated file: " + std::to_string(st.st_size) +
                                " bytes, HDF5 expects " + std::to_string(eoa));

    schema::ImageInfo& info = meta_.info;
    std::string format;
    if (!h5::read_attr(f, "format", format, path_))
      fail(Errc::not_image, path_ + ": an HDF5 file without a crest 'format' attribute");
    if (format != schema::kFormatName)
      fail(Errc::not_image, path_ + ": format is '" + format + "', not " + schema::kFormatName);
    if (!h5::read_attr(f, "format_version", info.format_version, path_))
      fail(Errc::not_image, path_ + ": no format_version attribute");
    if (info.format_version != schema::kFormatVersion)
      fail(Errc::version, path_ + ": written by format version " +
                              std::to_string(info.format_version) + ", this crest reads version " +
                              std::to_string(schema::kFormatVersion) + " only");
    if (!h5::read_attr(f, "complete", info.complete, path_) || info.complete != 1)
      fail(Errc::incomplete, path_ + ": checkpoint was never committed (complete is not 1)");
    std::apply(
        [&](const auto&... fld) { (read_info_field(f, fld.name, info.*(fld.member), path_), ...); },
        schema::Table<schema::ImageInfo>::fields());
    read_stats();
    schema::for_each_table(meta_, [&](auto& rows) { h5::read_table(f, rows, path_); });
    h5::read_table(f, index_, path_);
    h5::read_table(f, chunks_, path_);
    if (H5Lexists(f, schema::Table<schema::PageHash>::name, H5P_DEFAULT) > 0)
      h5::read_table(f, hashes_, path_);
    H5Eclear2(H5E_DEFAULT);
    open_data();
  }

  const std::string& name() const override { return name_; }
  const schema::CheckpointMeta& meta() const override { return meta_; }
  const std::vector<schema::PageRun>& index() const override { return index_; }
  const std::vector<schema::ChunkRecord>& chunks() const override { return chunks_; }
  const std::vector<schema::PageHash>& hashes() const override { return hashes_; }

  void read_chunk(uint64_t index, std::vector<std::byte>& out) override {
    h5::init();
    std::string what = path_ + ": chunk " + std::to_string(index);
    if (index >= chunks_.size())
      fail(Errc::corrupt,
           what + " does not exist (the file has " + std::to_string(chunks_.size()) + " chunks)");
    const schema::ChunkRecord& rec = chunks_[index];
    hsize_t offset[2] = {index * kChunkPages, 0};
    hsize_t nbytes = 0;
    h5::check(H5Dget_chunk_storage_size(data_.get(), offset, &nbytes), Errc::corrupt,
              what + ": cannot locate");
    if (nbytes == 0) fail(Errc::corrupt, what + " is missing from /pages/data");
    // No encoding crest writes takes more than this; a larger size is not read into memory.
    if (nbytes > lz4::encoded_bound(schema::kChunkBytes, schema::kChunkBytes))
      fail(Errc::corrupt, what + ": " + std::to_string(nbytes) + " bytes stored, more than a " +
                              "chunk of " + std::to_string(schema::kChunkBytes) + " bytes ever takes");
    if (nbytes != rec.stored_bytes)
      fail(Errc::corrupt, what + ": " + std::to_string(nbytes) +
                              " bytes stored, the chunk table says " +
                              std::to_string(rec.stored_bytes));
    out.resize(nbytes);
    uint32_t mask = 0;
    h5::check(H5Dread_chunk(data_.get(), H5P_DEFAULT, offset, &mask, out.data()), Errc::corrupt,
              what + ": cannot read");
    auto stored = encoding_of(mask);
    if (!stored)
      fail(Errc::corrupt, what + ": filter mask " + std::to_string(mask) +
                              " is no encoding crest writes");
    if (*stored != rec.encoding())
      fail(Errc::corrupt, what + ": stored " + encoding_name(*stored) +
                              " but the chunk table says " + encoding_name(rec.encoding()));
  }

 private:
  void read_stats() {
    hid_t f = file_.get();
    htri_t exists = H5Lexists(f, "stats", H5P_DEFAULT);
    if (exists <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return;
    }
    Handle g = h5::group(H5Gopen2(f, "stats", H5P_DEFAULT), path_ + ": /stats");
    std::vector<std::string> names;
    auto collect = [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
      static_cast<std::vector<std::string>*>(data)->emplace_back(name);
      return 0;
    };
    hsize_t idx = 0;
    h5::check(H5Aiterate2(g.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, collect, &names),
              Errc::corrupt, path_ + ": /stats");
    for (const std::string& name : names) {
      int64_t value = 0;
      h5::read_attr(g.get(), name.c_str(), value, path_ + ": /stats");
      meta_.stats[name] = value;
    }
  }

  void open_data() {
    std::string what = path_ + ": /pages/data";
    htri_t exists = H5Lexists(file_.get(), kDataPath, H5P_DEFAULT);
    if (exists <= 0) {
      H5Eclear2(H5E_DEFAULT);
      fail(Errc::corrupt, what + " is missing");
    }
    data_ = h5::dataset(H5Dopen2(file_.get(), kDataPath, H5P_DEFAULT), what);
    Handle space = h5::dataspace(H5Dget_space(data_.get()), what);
    Handle type = h5::datatype(H5Dget_type(data_.get()), what);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(space.get()) != 2 ||
        H5Sget_simple_extent_dims(space.get(), dims, nullptr) < 0 ||
        dims[1] * H5Tget_size(type.get()) != kPageSize)
      fail(Errc::corrupt, what + " does not have rows of one page (4096 bytes)");
    Handle dcpl = h5::plist(H5Dget_create_plist(data_.get()), what);
    std::vector<H5Z_filter_t> filters;
    int nfilters = H5Pget_nfilters(dcpl.get());
    for (int i = 0; i < nfilters; ++i) {
      unsigned flags = 0, config = 0;
      size_t ncd = 0;
      filters.push_back(H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &ncd,
                                        nullptr, 0, nullptr, &config));
    }
    if (filters != std::vector<H5Z_filter_t>{H5Z_FILTER_SHUFFLE, lz4::kFilterId} ||
        H5Tget_size(type.get()) != shuffle::kElement)
      fail(Errc::corrupt, what + " is not u64 rows through the filters shuffle and LZ4");
    if (dims[0] < chunks_.size() * kChunkPages)
      fail(Errc::corrupt, what + " has " + std::to_string(dims[0]) +
                              " rows, the chunk table needs " +
                              std::to_string(chunks_.size() * kChunkPages));
  }

  std::string name_;
  std::string path_;
  Handle file_;
  Handle data_;
  schema::CheckpointMeta meta_;
  std::vector<schema::PageRun> index_;
  std::vector<schema::ChunkRecord> chunks_;
  std::vector<schema::PageHash> hashes_;
};

bool valid_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..";
}

class DirectoryBackend final : public Backend {
 public:
  explicit DirectoryBackend(std::string dir) : dir_(std::move(dir)) {}

  const std::string& location() const override { return dir_; }

  std::vector<std::string> names() override {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) throw_errno("cannot list " + dir_);
    std::unique_ptr<DIR, int (*)(DIR*)> closer(d, ::closedir);
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.empty() || n[0] == '.' || n.size() < 4 || n.compare(n.size() - 3, 3, ".h5") != 0)
        continue;
      struct stat st {};
      if (::lstat((dir_ + "/" + n).c_str(), &st) == 0 && S_ISREG(st.st_mode)) out.push_back(n);
    }
    return out;
  }

  std::unique_ptr<ContainerWriter> create(const std::string& name) override {
    check_name(name);
    return std::make_unique<H5Writer>(dir_, name);
  }

  std::unique_ptr<ContainerReader> open(const std::string& name) override {
    check_name(name);
    return std::make_unique<H5Reader>(dir_, name);
  }

  std::string stamp(const std::string& name) override {
    struct stat st {};
    if (::stat((dir_ + "/" + name).c_str(), &st) != 0) return "";
    return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
           std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
           std::to_string(st.st_mtim.tv_nsec);
  }

  void remove(const std::string& name) override {
    check_name(name);
    std::string path = dir_ + "/" + name;
    if (::unlink(path.c_str()) != 0) throw_errno("cannot remove " + path);
    std::string latest = dir_ + "/latest";
    char target[4096];
    ssize_t n = ::readlink(latest.c_str(), target, sizeof target - 1);
    if (n > 0 && std::string(target, static_cast<size_t>(n)) == name) ::unlink(latest.c_str());
    fs::fsync_dir(dir_);
  }

  void set_latest(const std::string& name) override {
    check_name(name);
    std::string tmp = dir_ + "/.latest.tmp";
    std::string latest = dir_ + "/latest";
    if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) throw_errno("cannot remove " + tmp);
    if (::symlink(name.c_str(), tmp.c_str()) != 0) throw_errno("cannot create " + tmp);
    // rename() replaces the old link atomically: readers see the old or the new target.
    if (::rename(tmp.c_str(), latest.c_str()) != 0) throw_errno("cannot rename " + tmp);
    fs::fsync_dir(dir_);
  }

  std::shared_ptr<void> lock_for_writing() override {
    std::string path = dir_ + "/.lock";
    auto fd = std::make_shared<UniqueFd>(
        fs::open_or_throw(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK, 0600));
    if (::flock(fd->get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) fail(Errc::busy, dir_ + ": another writer holds " + path);
      throw_errno("cannot lock " + path);
    }
    remove_stale_tmp();
    return fd;
  }

 private:
  void check_name(const std::string& name) const {
    if (!valid_name(name)) fail(Errc::usage, dir_ + ": '" + name + "' is not a checkpoint name");
  }

  // Only the lock holder writes .tmp files, so any found while holding the lock were abandoned.
  void remove_stale_tmp() {
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) throw_errno("cannot list " + dir_);
    std::unique_ptr<DIR, int (*)(DIR*)> closer(d, ::closedir);
    bool removed = false;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) {
        std::string path = dir_ + "/" + n;
        if (::unlink(path.c_str()) == 0) {
          logger()->info("removed {} left by an interrupted writer", path);
          removed = true;
        }
      }
    }
    if (removed) fs::fsync_dir(dir_);
  }

  std::string dir_;
};

void make_dirs(const std::string& dir) {
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    partial = dir.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST)
      throw_errno("cannot create directory " + partial);
  }
}

}  // namespace

std::unique_ptr<Backend> make_directory_backend(const std::string& dir_in, bool create) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir.empty()) fail(Errc::usage, "empty images directory name");
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT || !create) throw_errno("cannot open images directory " + dir);
    make_dirs(dir);
  } else if (!S_ISDIR(st.st_mode)) {
    fail(Errc::usage, dir + " is not a directory");
  }
  h5::init();
  return std::make_unique<DirectoryBackend>(dir);
}

}  // namespace crest::storage
