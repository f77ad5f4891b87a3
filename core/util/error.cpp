#include "core/util/error.h"

#include <cstring>

namespace crest {

std::string_view kind_name(Errc kind) noexcept {
  switch (kind) {
    case Errc::io: return "io";
    case Errc::not_found: return "not-found";
    case Errc::not_image: return "not-an-image";
    case Errc::truncated: return "truncated";
    case Errc::corrupt: return "corrupt";
    case Errc::version: return "version";
    case Errc::incomplete: return "incomplete";
    case Errc::missing_ancestor: return "missing-ancestor";
    case Errc::unsupported: return "unsupported";
    case Errc::refused: return "refused";
    case Errc::busy: return "busy";
    case Errc::kernel: return "kernel";
    case Errc::usage: return "usage";
    case Errc::internal: return "internal";
    case Errc::mismatch: return "mismatch";
  }
  return "unknown";
}

Error::Error(Errc kind, std::string message, int sys_errno)
    : kind_(kind), errno_(sys_errno), message_(std::move(message)) {
  rebuild();
}

Error& Error::with_context(std::string_view context) {
  message_ = std::string(context) + ": " + message_;
  rebuild();
  return *this;
}

void Error::rebuild() {
  what_ = message_;
  if (errno_ != 0 && message_.find(std::strerror(errno_)) == std::string::npos) {
    what_ += ": ";
    what_ += std::strerror(errno_);
  }
}

void throw_errno(std::string what, int err, Errc kind) {
  if (err == ENOENT && kind == Errc::io) kind = Errc::not_found;
  if ((err == EACCES || err == EPERM) && kind == Errc::io) kind = Errc::refused;
  throw Error(kind, std::move(what), err);
}

void fail(Errc kind, std::string message) { throw Error(kind, std::move(message)); }

}  // namespace crest
