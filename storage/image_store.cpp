#include "storage/image_store.h"

#include <algorithm>
#include <cstdio>

#include "core/util/error.h"
#include "core/util/log.h"
#include "storage/container.h"
#include "storage/pipeline.h"

namespace crest::storage {
namespace {

// The sequence number in "ckpt-000012.h5", or 0 for any other name.
uint64_t sequence_of(const std::string& name) {
  static const std::string prefix = "ckpt-", suffix = ".h5";
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return 0;
  std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return 0;
  return std::stoull(digits);
}

std::string name_for(uint64_t sequence) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "ckpt-%06llu.h5", static_cast<unsigned long long>(sequence));
  return buf;
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.size() <= 18 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

std::unique_ptr<ImageStore> ImageStore::open_directory(const std::string& dir, bool create) {
  return std::make_unique<ImageStore>(make_directory_backend(dir, create));
}

std::unique_ptr<ImageStore> ImageStore::in_memory() {
  return std::make_unique<ImageStore>(make_memory_backend());
}

ImageStore::ImageStore(std::unique_ptr<Backend> backend) : backend_(std::move(backend)) {}
ImageStore::~ImageStore() = default;

const std::string& ImageStore::location() const { return backend_->location(); }

std::vector<CheckpointEntry> ImageStore::list() {
  std::vector<CheckpointEntry> out;
  std::map<std::string, std::pair<std::string, CheckpointEntry>> seen;
  for (const std::string& name : backend_->names()) {
    std::string stamp = backend_->stamp(name);
    if (!stamp.empty()) {
      std::lock_guard lock(list_mu_);
      auto it = listed_.find(name);
      if (it != listed_.end() && it->second.first == stamp) {
        out.push_back(it->second.second);
        seen.emplace(name, it->second);
        continue;
      }
    }
    CheckpointEntry e;
    e.name = name;
    e.sequence = sequence_of(name);
    try {
      auto c = backend_->open(name);
      const schema::ImageInfo& info = c->meta().info;
      e.sequence = info.sequence;
      e.uuid = info.uuid;
      e.parent_uuid = info.parent_uuid;
      e.parent_file = info.parent_file;
      e.created_ns = info.created_ns;
      e.readable = true;
    } catch (const Error& err) {
      e.error = std::string(kind_name(err.kind())) + ": " + err.what();
    }
    // Only what was read whole is remembered (a file being replaced is read again next time).
    if (!stamp.empty() && e.readable && backend_->stamp(name) == stamp) seen.emplace(name, std::make_pair(stamp, e));
    out.push_back(std::move(e));
  }
  {
    std::lock_guard lock(list_mu_);
    listed_ = std::move(seen);
  }
  std::sort(out.begin(), out.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    return a.sequence != b.sequence ? a.sequence < b.sequence : a.name < b.name;
  });
  return out;
}

std::optional<CheckpointEntry> ImageStore::newest() {
  auto entries = list();
  for (auto it = entries.rbegin(); it != entries.rend(); ++it)
    if (it->readable) return *it;
  return std::nullopt;
}

std::unique_ptr<CheckpointWriter> ImageStore::begin(const std::string& parent,
                                                    const WriteTuning& tuning) {
  std::shared_ptr<void> lock = backend_->lock_for_writing();
  uint64_t last = 0;
  for (const std::string& name : backend_->names()) last = std::max(last, sequence_of(name));
  if (tuning.min_sequence > 0) last = std::max(last, tuning.min_sequence - 1);
  std::unique_ptr<CheckpointReader> parent_reader;
  if (!parent.empty()) parent_reader = open(parent);
  return make_pipeline_writer(*backend_, std::move(lock), name_for(last + 1), last + 1,
                              std::move(parent_reader), tuning);
}

std::unique_ptr<CheckpointReader> ImageStore::open(const std::string& ref) {
  return make_chain_reader(*backend_, resolve(ref));
}

VerifyReport ImageStore::verify(const std::string& ref) {
  std::string name;
  try {
    name = resolve(ref);
  } catch (const Error& e) {
    VerifyReport r;
    r.errors.push_back(std::string(kind_name(e.kind())) + ": " + e.what());
    return r;
  }
  return verify_chain(*backend_, name);
}

void ImageStore::remove(const std::string& name) {
  auto names = backend_->names();
  if (std::find(names.begin(), names.end(), name) == names.end())
    fail(Errc::not_found, backend_->location() + ": no checkpoint named " + name);
  for (const CheckpointEntry& e : list())
    if (e.readable && e.name != name && e.parent_file == name)
      fail(Errc::refused,
           display_path(*backend_, name) + " is the parent of " + e.name + "; remove that first");
  backend_->remove(name);
  // The latest pointer must keep naming a committed checkpoint.
  if (auto n = newest()) backend_->set_latest(n->name);
}

std::string ImageStore::resolve(const std::string& ref) {
  if (ref.empty() || ref == "latest") {
    auto n = newest();
    if (!n) fail(Errc::not_found, backend_->location() + ": no complete checkpoint");
    return n->name;
  }
  auto names = backend_->names();
  if (std::find(names.begin(), names.end(), ref) != names.end()) return ref;
  if (all_digits(ref)) {
    uint64_t seq = std::stoull(ref);
    for (const std::string& n : names)
      if (sequence_of(n) == seq) return n;
    fail(Errc::not_found, backend_->location() + ": no checkpoint with sequence " + ref);
  }
  std::vector<std::string> matches;
  for (const CheckpointEntry& e : list())
    if (e.readable && e.uuid.compare(0, ref.size(), ref) == 0) matches.push_back(e.name);
  if (matches.size() == 1) return matches[0];
  if (matches.size() > 1)
    fail(Errc::usage, backend_->location() + ": '" + ref + "' matches " +
                          std::to_string(matches.size()) + " checkpoints (" + matches[0] + ", " +
                          matches[1] + (matches.size() > 2 ? ", ..." : "") + ")");
  fail(Errc::not_found, backend_->location() + ": no checkpoint named " + ref);
}

}  // namespace crest::storage
