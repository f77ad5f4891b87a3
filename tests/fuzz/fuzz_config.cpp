// crestd's TOML configuration loader: any file either loads or is refused with a named
// crest::Error (Errc::usage, naming the file and line); never a crash or another exception.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "agent/crestd/config.h"
#include "core/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The loader reads a path: the input goes into a memfd, read through /proc/self/fd.
  static int fd = [] {
    int f = ::memfd_create("crestd.toml", MFD_CLOEXEC);
    if (f < 0) std::abort();
    return f;
  }();
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size))
    std::abort();
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  crest::agent::Config config;
  try {
    crest::agent::load_toml(config, path);
  } catch (const crest::Error& e) {
    if (e.kind() != crest::Errc::usage) std::abort();
    return 0;
  }
  // What loaded is usable: the durations print, the policy serializes.
  (void)config.defaults.to_json().dump();
  (void)config.state_path();
  return 0;
}
