#include "core/util/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "core/util/error.h"

namespace crest::fs {

UniqueFd open_or_throw(const std::string& path, int flags, unsigned mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) throw_errno("cannot open " + path);
  return UniqueFd(fd);
}

bool read_file_if_exists(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    throw_errno("cannot open " + path);
  }
  UniqueFd guard(fd);
  out.clear();
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return true;
}

std::string read_file(const std::string& path) {
  std::string out;
  if (!read_file_if_exists(path, out)) throw_errno("cannot open " + path, ENOENT);
  return out;
}

void write_all(int fd, const void* data, size_t size, const std::string& what) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write " + what);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void fsync_or_throw(int fd, const std::string& what) {
  if (::fsync(fd) != 0) throw_errno("cannot fsync " + what);
}

void fsync_dir(const std::string& dir) {
  UniqueFd fd = open_or_throw(dir, O_RDONLY | O_DIRECTORY);
  fsync_or_throw(fd.get(), dir);
}

void write_file_atomic(const std::string& dir, const std::string& name, std::string_view data,
                       unsigned mode) {
  std::string tmp = dir + "/." + name + ".tmp";
  std::string final_path = dir + "/" + name;
  {
    UniqueFd fd = open_or_throw(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    write_all(fd.get(), data.data(), data.size(), tmp);
    fsync_or_throw(fd.get(), tmp);
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) throw_errno("cannot rename " + tmp);
  fsync_dir(dir);
}

std::string dirname(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string basename(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace crest::fs
