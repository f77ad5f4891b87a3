// What a PATH argument of the CLI names: an images directory, or one checkpoint file in one.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/util/error.h"
#include "storage/image_store.h"

namespace crest::cli {

struct ImageTarget {
  std::string path;       // as the user gave it
  std::string directory;  // the images directory
  std::string ref;        // the checkpoint file's name; empty when PATH is a directory
  std::unique_ptr<storage::ImageStore> store;

  bool is_directory() const { return ref.empty(); }
  // The path of one file of the directory, for messages and stat().
  std::string file_path(const std::string& name) const;
};

// Resolves PATH (a file → its directory and its name) and opens the directory's store. Throws
// Errc::not_found when PATH does not exist.
ImageTarget open_target(const std::string& path);

// Makes sure an error from the store names the file it is about (the store may say only the
// checkpoint's name): prefixes `path` unless the message already mentions its last component.
Error& name_file(Error& error, const std::string& path);

// The result of checking a checkpoint and its chain (ImageStore::verify), as both `verify` and
// `show` report it.
struct ChainCheck {
  nlohmann::json files = nlohmann::json::array();  // {name, file, chunks, chunks_bad, bytes_stored}
  uint64_t chunks = 0;
  uint64_t chunks_bad = 0;
  std::vector<std::string> problems;  // report lines, "<kind>: <file>: <message>"
  bool ok() const { return problems.empty(); }
  nlohmann::json to_json() const;
};
ChainCheck check_chain(const ImageTarget& target, const std::string& ref);

// A problem the store reported as text ("<kind>: <message>", e.g. CheckpointEntry::error) as one
// report line "<kind>: <file>: <message>", naming the file unless the message already does.
std::string problem_line(const std::string& file, const std::string& kind_and_message);

// Where the directory's `latest` symlink points; empty when there is none.
std::string latest_link(const std::string& directory);

// The size of a file in bytes (st_size); 0 if it cannot be stat()ed.
uint64_t file_size(const std::string& path);

}  // namespace crest::cli
