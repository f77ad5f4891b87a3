// Errors in crest carry a kind, the errno (when a system call failed) and the context that names
// the object involved (a file, a pid, a chunk). They travel up as exceptions to exactly one place
// that reports them: the CLI's main, the agent's request handler, a test. Libraries never exit().
#pragma once

#include <cerrno>
#include <exception>
#include <string>
#include <string_view>

namespace crest {

// The named error kinds. Their spelling (kind_name) is part of the CLI's contract: scripts and
// tests match on it, so only ever add to this list.
enum class Errc {
  io,                // a system call on a file or directory failed
  not_found,         // no such file, checkpoint or process
  not_image,         // the file is not a crest image at all
  truncated,         // the file ends early
  corrupt,           // a checksum or structural check failed
  version,           // the image was written by a newer format version
  incomplete,        // the checkpoint was never committed
  missing_ancestor,  // an incremental checkpoint's parent is gone or does not match
  unsupported,       // the process holds something crest cannot restore faithfully
  refused,           // the request is not allowed (permissions, a traced tree, ...)
  busy,              // the resource is in use (a pid taken, a directory locked)
  kernel,            // a kernel interface misbehaved or is missing
  usage,             // bad arguments
  internal,          // a bug in crest
  mismatch,          // a restored process would not be what was checkpointed (--verify-restore)
};

std::string_view kind_name(Errc kind) noexcept;

class Error : public std::exception {
 public:
  Error(Errc kind, std::string message, int sys_errno = 0);

  Errc kind() const noexcept { return kind_; }
  int sys_errno() const noexcept { return errno_; }
  // The message without the kind prefix and errno suffix.
  const std::string& message() const noexcept { return message_; }
  // "<message>: <strerror>"; the CLI prefixes the kind name.
  const char* what() const noexcept override { return what_.c_str(); }

  // Prepends context ("images/ckpt-000002.h5: ") to the message; used while the error travels up.
  Error& with_context(std::string_view context);

 private:
  void rebuild();
  Errc kind_;
  int errno_;
  std::string message_;
  std::string what_;
};

// Throws Error(kind, what + ": " + strerror(err)) with errno captured.
[[noreturn]] void throw_errno(std::string what, int err = errno, Errc kind = Errc::io);
[[noreturn]] void fail(Errc kind, std::string message);

}  // namespace crest
