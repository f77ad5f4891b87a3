// Small file-system helpers with crest's error conventions (every failure names the path).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/util/unique_fd.h"

namespace crest::fs {

UniqueFd open_or_throw(const std::string& path, int flags, unsigned mode = 0);
std::string read_file(const std::string& path);               // whole file; throws on error
bool read_file_if_exists(const std::string& path, std::string& out);
void write_all(int fd, const void* data, size_t size, const std::string& what);
void fsync_or_throw(int fd, const std::string& what);
void fsync_dir(const std::string& dir);
// Writes a small file atomically and durably: DIR/.NAME.tmp, fsync, rename, fsync DIR.
void write_file_atomic(const std::string& dir, const std::string& name, std::string_view data,
                       unsigned mode = 0600);
std::string dirname(const std::string& path);
std::string basename(const std::string& path);
bool is_directory(const std::string& path);

}  // namespace crest::fs
