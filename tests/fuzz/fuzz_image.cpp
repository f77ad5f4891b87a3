// The checkpoint reader on whole image files: the input is written as an images directory's
// ckpt-000001.h5 and read the way `crest restore` and `crest verify` read it (open with every
// check of the file, its tables and its chain; stream all its pages; verify every chunk). The
// seed corpus is real images of several kinds (corpus/image/README). Any file is read or refused
// with a named crest::Error; never a crash, a hang, or memory out of proportion to the file.
//
// HDF5 itself is not instrumented (the Debian library): the fuzzer is guided by crest's code
// only, and a crash inside libhdf5 that crest cannot prevent by checking first is listed in
// tests/fuzz/README.md.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "storage/container.h"
#include "storage/pipeline.h"

namespace {

using namespace crest;
using namespace crest::storage;

class TouchSink final : public PageSink {
 public:
  void on_pages(const PageExtent& run, schema::PageKind kind, const std::byte* data) override {
    if (kind != schema::PageKind::data) return;
    if (data == nullptr || run.npages > schema::kChunkPages) std::abort();
    for (uint64_t i = 0; i < run.npages * schema::kPageSize; i += 512) sum += std::to_integer<int>(data[i]);
  }
  unsigned sum = 0;
};

struct Dir {
  Dir() {
    const char* base = ::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base ? base : "/tmp") + "/crest-fuzz-image.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    path = tmpl;
    file = path + "/ckpt-000001.h5";
  }
  ~Dir() {
    ::unlink(file.c_str());
    ::rmdir(path.c_str());
  }
  std::string path, file;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Dir dir;
  static auto backend = make_directory_backend(dir.path, false);
  {
    int fd = ::open(dir.file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
    ::close(fd);
  }
  try {
    auto reader = make_chain_reader(*backend, "ckpt-000001.h5");
    (void)reader->meta();
    TouchSink sink;
    reader->read_pages({}, sink);
  } catch (const Error&) {
  }
  VerifyReport report = verify_chain(*backend, "ckpt-000001.h5");
  (void)report.ok();
  return 0;
}
