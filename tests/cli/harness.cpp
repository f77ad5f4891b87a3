#include "tests/cli/harness.h"

#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "storage/image_store.h"

namespace crest::test {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

[[noreturn]] void die(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

}  // namespace

std::vector<std::string> Outcome::err_lines() const {
  std::vector<std::string> lines;
  std::istringstream in(err);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

std::string Outcome::describe() const {
  std::ostringstream s;
  if (signaled) {
    s << "killed by signal " << signal;
  } else {
    s << "exit " << exit_code;
  }
  s << "\n--- stdout ---\n" << out << "--- stderr ---\n" << err;
  return s.str();
}

::testing::AssertionResult exited_with(const Outcome& run, int code) {
  if (!run.signaled && run.exit_code == code) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected exit " << code << ", got " << run.describe();
}

Outcome run_program(const std::vector<std::string>& argv) {
  TempDir capture;
  std::string out_path = capture / "out", err_path = capture / "err";
  pid_t pid = ::fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || out < 0 || err < 0) ::_exit(127);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) die("waitpid");
  }
  Outcome run;
  if (WIFSIGNALED(status)) {
    run.signaled = true;
    run.signal = WTERMSIG(status);
  } else {
    run.exit_code = WEXITSTATUS(status);
  }
  run.out = slurp(out_path);
  run.err = slurp(err_path);
  return run;
}

Outcome run_crest(const std::vector<std::string>& args) {
  std::vector<std::string> argv{CREST_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv);
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/crest-cli-test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) die("mkdtemp " + tmpl);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

// ---- images ----------------------------------------------------------------------------------

namespace {

using schema::kPageSize;

// Page p of the heap in checkpoint `generation`: compressible and distinct per page and
// generation, so a page read from the wrong file would not match.
void fill_page(std::byte* page, uint64_t p, uint64_t generation) {
  auto* words = reinterpret_cast<uint64_t*>(page);
  for (uint64_t i = 0; i < kPageSize / 8; ++i) words[i] = (p << 20) ^ (generation << 40) ^ (i % 16);
}

bool is_zero_page(uint64_t p) { return p >= kZeroFirst && p < kZeroFirst + kZeroPages; }

// Hands the heap pages [first, last) of one generation to the writer, zero pages as zeros.
class HeapSource : public storage::PageSource {
 public:
  HeapSource(uint64_t first, uint64_t last, uint64_t generation)
      : next_(first), last_(last), generation_(generation) {}

  bool fill(storage::PageBatch& batch) override {
    if (next_ >= last_) return false;
    while (next_ < last_ && batch.room() > 0) {
      std::byte* page = batch.next_page();
      if (is_zero_page(next_)) {
        std::memset(page, 0, kPageSize);
      } else {
        fill_page(page, next_, generation_);
      }
      batch.add(kOwner, kHeapAddr + next_ * kPageSize, 1);
      ++next_;
    }
    return true;
  }

 private:
  uint64_t next_, last_, generation_;
};

schema::CheckpointMeta job_meta() {
  schema::CheckpointMeta meta;
  meta.info.host = "testhost";
  meta.info.kernel_release = "6.18.0-test";
  meta.info.machine = "x86_64";
  meta.info.crest_version = "0.1.0";
  meta.info.job_id = "job-7";
  meta.info.scheduler_job_id = "slurm:1234.0";
  meta.info.root_pid = kPid;
  meta.info.tracker = "hash";
  meta.info.mode = "stop-copy";
  meta.info.created_ns = 1700000000LL * 1000000000LL;
  meta.stats["frozen_ns"] = 12'500'000;
  meta.stats["total_ns"] = 80'000'000;

  schema::ProcessRecord p;
  p.pid = kPid;
  p.ppid = 1;
  p.pgid = kPid;
  p.sid = kPid;
  p.flags = schema::kProcessRoot;
  p.comm = "solver";
  p.exe = "/usr/bin/solver";
  p.cwd = "/home/user/run";
  p.root = "/";
  p.mem_owner = kOwner;
  meta.processes.push_back(p);

  for (int32_t tid : {kPid, kPid + 1}) {
    schema::ThreadRecord t;
    t.pid = kPid;
    t.tid = tid;
    t.comm = "solver";
    meta.threads.push_back(t);
  }

  schema::VmaRecord heap;
  heap.pid = kPid;
  heap.start = kHeapAddr;
  heap.end = kHeapAddr + kHeapPages * kPageSize;
  heap.prot = 3;   // PROT_READ | PROT_WRITE
  heap.flags = 2;  // MAP_PRIVATE
  heap.kind = static_cast<uint32_t>(schema::VmaKind::anon_private);
  heap.owner = kOwner;
  heap.name = "[heap]";
  schema::VmaRecord stack = heap;
  stack.start = 0x7ffd00000000;
  stack.end = stack.start + 32 * kPageSize;
  stack.name = "[stack]";
  meta.vmas = {heap, stack};

  schema::FileRecord tty;
  tty.id = 0;
  tty.kind = static_cast<uint32_t>(schema::FileKind::inherited);
  tty.path = "/dev/pts/0";
  tty.flags = O_RDWR;
  tty.inherited_fd = 0;
  schema::FileRecord data;
  data.id = 1;
  data.kind = static_cast<uint32_t>(schema::FileKind::regular);
  data.path = "/home/user/run/data.bin";
  data.flags = O_RDWR | O_APPEND;
  data.pos = 8192;
  meta.files = {tty, data};
  meta.fds = {{kPid, 0, 0, 0}, {kPid, 3, 1, FD_CLOEXEC}};

  schema::OwnerRecord owner;
  owner.owner = kOwner;
  owner.kind = static_cast<uint32_t>(schema::OwnerKind::process);
  owner.pid = kPid;
  meta.owners = {owner};
  return meta;
}

// An incremental checkpoint on top of `parent` in which heap pages [first, last) changed.
std::string write_incremental(storage::ImageStore& store, const std::string& parent, uint64_t first,
                              uint64_t last, uint64_t generation) {
  auto writer = store.begin(parent);
  HeapSource changed(first, last, generation);
  writer->write_pages(changed);
  auto keep = [&](uint64_t from, uint64_t to) {
    // Zero pages are recorded again rather than kept, so the counts below are exact whatever
    // the store does with kept zero runs.
    for (uint64_t p = from; p < to;) {
      uint64_t q = p;
      bool zero = is_zero_page(p);
      while (q < to && is_zero_page(q) == zero) ++q;
      storage::PageExtent run{kOwner, kHeapAddr + p * kPageSize, q - p};
      if (zero) {
        writer->record_pages(run, schema::PageKind::zero);
      } else {
        writer->keep_pages(run);
      }
      p = q;
    }
  };
  keep(0, first);
  keep(last, kPresentPages);
  schema::CheckpointMeta meta = job_meta();
  meta.info.created_ns += static_cast<int64_t>(generation) * 60'000'000'000LL;
  return writer->commit(meta);
}

}  // namespace

std::vector<std::string> write_chain(const std::string& dir) {
  auto store = storage::ImageStore::open_directory(dir, true);
  std::vector<std::string> names;
  {
    auto writer = store->begin();
    HeapSource all(0, kPresentPages, 1);
    writer->write_pages(all);
    names.push_back(writer->commit(job_meta()));
  }
  names.push_back(write_incremental(*store, names.back(), 20, 30, 2));
  names.push_back(write_incremental(*store, names.back(), 300, 305, 3));
  return names;
}

// ---- damage ----------------------------------------------------------------------------------

void truncate_file(const std::string& path, uint64_t size) {
  if (::truncate(path.c_str(), static_cast<off_t>(size)) != 0) die("truncate " + path);
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) die("stat " + path);
  return static_cast<uint64_t>(st.st_size);
}

void flip_byte_in_chunk(const std::string& path, uint64_t chunk) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
  {
    hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) throw std::runtime_error("H5Fopen " + path);
    hid_t data = H5Dopen2(file, "/pages/data", H5P_DEFAULT);
    // By logical coordinate: chunk k holds rows [k * kChunkPages, (k + 1) * kChunkPages).
    hsize_t offset[2] = {chunk * schema::kChunkPages, 0};
    unsigned mask = 0;
    herr_t rc = data < 0 ? -1 : H5Dget_chunk_info_by_coord(data, offset, &mask, &addr, &size);
    if (data >= 0) H5Dclose(data);
    H5Fclose(file);
    if (rc < 0 || addr == HADDR_UNDEF || size == 0) {
      throw std::runtime_error("no chunk " + std::to_string(chunk) + " in " + path);
    }
  }
  int fd = ::open(path.c_str(), O_RDWR);
  if (fd < 0) die("open " + path);
  off_t at = static_cast<off_t>(addr + size / 2);
  unsigned char byte = 0;
  if (::pread(fd, &byte, 1, at) != 1) die("pread " + path);
  byte ^= 0x5a;
  if (::pwrite(fd, &byte, 1, at) != 1) die("pwrite " + path);
  ::close(fd);
}

void set_format_version(const std::string& path, uint32_t version) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) throw std::runtime_error("H5Fopen " + path);
  hid_t attr = H5Aopen(file, "format_version", H5P_DEFAULT);
  herr_t rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_UINT32, &version);
  if (attr >= 0) H5Aclose(attr);
  H5Fclose(file);
  if (rc < 0) throw std::runtime_error("cannot rewrite format_version of " + path);
}

void write_foreign_hdf5(const std::string& path) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) throw std::runtime_error("H5Fcreate " + path);
  hsize_t dims[1] = {16};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  hid_t data = H5Dcreate2(file, "temperature", H5T_NATIVE_DOUBLE, space, H5P_DEFAULT, H5P_DEFAULT,
                          H5P_DEFAULT);
  double values[16] = {};
  herr_t rc = H5Dwrite(data, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
  H5Dclose(data);
  H5Sclose(space);
  H5Fclose(file);
  if (rc < 0) throw std::runtime_error("H5Dwrite " + path);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace crest::test
