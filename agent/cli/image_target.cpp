#include "agent/cli/image_target.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/util/fs.h"

namespace crest::cli {

std::string ImageTarget::file_path(const std::string& name) const {
  if (directory == "." && !path.starts_with("./")) return name;  // as the user wrote it
  return directory == "/" ? "/" + name : directory + "/" + name;
}

namespace {

// A file that is not HDF5 at all is named as such before the store sees it: the store resolves
// names among the checkpoints it lists and would only say "no checkpoint named notes.txt".
void check_hdf5_signature(const std::string& path, const struct stat& st) {
  static constexpr unsigned char kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  if (st.st_size == 0) fail(Errc::truncated, path + ": empty file");
  UniqueFd fd = fs::open_or_throw(path, O_RDONLY);
  unsigned char head[sizeof kSignature] = {};
  ssize_t n = ::pread(fd.get(), head, sizeof head, 0);
  if (n < 0) throw_errno("cannot read " + path);
  // crest writes no user block, so the signature is at offset 0 of every checkpoint.
  if (static_cast<size_t>(n) < sizeof head || std::memcmp(head, kSignature, sizeof head) != 0)
    fail(Errc::not_image, path + ": not an HDF5 file, so not a crest checkpoint");
}

}  // namespace

ImageTarget open_target(const std::string& path) {
  if (path.empty()) fail(Errc::usage, "an empty PATH names nothing");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw_errno(path);

  ImageTarget target;
  target.path = path;
  if (S_ISDIR(st.st_mode)) {
    target.directory = path;
    while (target.directory.size() > 1 && target.directory.back() == '/')
      target.directory.pop_back();
  } else if (S_ISREG(st.st_mode)) {
    check_hdf5_signature(path, st);
    target.directory = fs::dirname(path);
    target.ref = fs::basename(path);
  } else {
    fail(Errc::not_image, path + ": not a regular file or directory");
  }
  try {
    target.store = storage::ImageStore::open_directory(target.directory);
  } catch (Error& e) {
    throw name_file(e, target.directory);
  }
  return target;
}

Error& name_file(Error& error, const std::string& path) {
  std::string name = fs::basename(path);
  if (name.empty() || error.message().find(name) == std::string::npos) error.with_context(path);
  return error;
}

nlohmann::json ChainCheck::to_json() const {
  return {{"ok", ok()},
          {"chunks", chunks},
          {"chunks_bad", chunks_bad},
          {"files", files},
          {"problems", problems}};
}

ChainCheck check_chain(const ImageTarget& target, const std::string& ref) {
  storage::VerifyReport report = target.store->verify(ref);
  ChainCheck check;
  for (const auto& f : report.files) {
    check.chunks += f.chunks;
    check.chunks_bad += f.chunks_bad;
    check.files.push_back({{"name", f.name},
                           {"file", target.file_path(f.name)},
                           {"chunks", f.chunks},
                           {"chunks_bad", f.chunks_bad},
                           {"bytes_stored", f.bytes_stored}});
  }
  static const std::string kNotFound = std::string(kind_name(Errc::not_found)) + ": ";
  for (std::string line : report.errors) {
    // An existing file that the store does not list is not one of its checkpoints (as in show).
    if (ref == target.ref && line.starts_with(kNotFound) && line.find(ref) != std::string::npos) {
      line = std::string(kind_name(Errc::not_image)) + ": " + target.path +
             ": not a checkpoint of this images directory (" + line.substr(kNotFound.size()) + ")";
    }
    check.problems.push_back(problem_line(target.file_path(ref), line));
  }
  return check;
}

std::string problem_line(const std::string& file, const std::string& kind_and_message) {
  std::string kind, message = kind_and_message;
  if (auto colon = kind_and_message.find(": "); colon != std::string::npos) {
    std::string word = kind_and_message.substr(0, colon);
    for (int k = 0; k <= static_cast<int>(Errc::internal); ++k) {
      if (kind_name(static_cast<Errc>(k)) == word) {
        kind = word;
        message = kind_and_message.substr(colon + 2);
        break;
      }
    }
  }
  if (message.find(fs::basename(file)) == std::string::npos) message = file + ": " + message;
  return kind.empty() ? message : kind + ": " + message;
}

std::string latest_link(const std::string& directory) {
  char buf[4096];
  ssize_t n = ::readlink((directory + "/latest").c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace crest::cli
