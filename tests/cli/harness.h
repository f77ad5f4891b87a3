// Helpers of the CLI end-to-end tests: run a program and capture what it did, make images with
// the storage API, and damage them in the ways the CLI must survive.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace crest::test {

// What a finished child process did.
struct Outcome {
  int exit_code = -1;  // valid when !signaled
  bool signaled = false;
  int signal = 0;
  std::string out;
  std::string err;

  std::vector<std::string> err_lines() const;
  // For failure messages: everything about the run.
  std::string describe() const;
};

// Success when the run ended by exiting with `code`; a run killed by a signal (a crash, an abort)
// always fails, with everything it printed.
::testing::AssertionResult exited_with(const Outcome& run, int code);

// Runs argv[0] (a path) with the given arguments, stdin from /dev/null, and waits for it.
Outcome run_program(const std::vector<std::string>& argv);
// Runs the crest binary under test.
Outcome run_crest(const std::vector<std::string>& args);

// A fresh directory under the test's temporary area, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The synthetic job the tests checkpoint: one process "solver" (pid kPid, 2 threads) with a heap
// of kHeapPages pages at kHeapAddr (pages [kZeroFirst, kZeroFirst + kZeroPages) zero, the rest
// data up to kPresentPages; the tail of the VMA absent), a stack VMA with no pages, and two fds.
inline constexpr int32_t kPid = 4242;
inline constexpr uint64_t kOwner = 1;
inline constexpr uint64_t kHeapAddr = 0x10000000;
inline constexpr uint64_t kHeapPages = 1024;
inline constexpr uint64_t kPresentPages = 600;
inline constexpr uint64_t kZeroFirst = 100;
inline constexpr uint64_t kZeroPages = 50;
inline constexpr uint64_t kDataPages = kPresentPages - kZeroPages;  // 550: three 256-page chunks

// Writes a chain into `dir`: ckpt-000001.h5 (full), ckpt-000002.h5 (pages [20, 30) changed),
// ckpt-000003.h5 (pages [300, 305) changed). Returns the names, oldest first.
std::vector<std::string> write_chain(const std::string& dir);

// Damage.
void truncate_file(const std::string& path, uint64_t size);
uint64_t file_size(const std::string& path);
// Flips one byte in the middle of chunk `chunk` of /pages/data (located with
// H5Dget_chunk_info_by_coord).
void flip_byte_in_chunk(const std::string& path, uint64_t chunk);
// Rewrites the root attribute format_version.
void set_format_version(const std::string& path, uint32_t version);
// An HDF5 file holding a dataset but none of crest's attributes.
void write_foreign_hdf5(const std::string& path);
void write_text(const std::string& path, const std::string& text);

}  // namespace crest::test
