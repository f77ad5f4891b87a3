#include "core/tracker.h"

#include "core/util/error.h"

namespace crest {
namespace {

class BasicTracker : public Tracker {
 public:
  explicit BasicTracker(TrackerKind kind) : kind_(kind) {}
  TrackerKind kind() const override { return kind_; }
  const std::string& last_checkpoint() const override { return last_; }

 private:
  TrackerKind kind_;
  std::string last_;
};

}  // namespace

const char* Tracker::kind_name(TrackerKind kind) {
  switch (kind) {
    case TrackerKind::automatic: return "automatic";
    case TrackerKind::uffd_wp: return "uffd-wp";
    case TrackerKind::soft_dirty: return "soft-dirty";
    case TrackerKind::hash: return "hash";
  }
  return "?";
}

TrackerKind Tracker::best_available() { return TrackerKind::hash; }

std::unique_ptr<Tracker> Tracker::create(TrackerKind kind) {
  if (kind == TrackerKind::automatic) kind = best_available();
  return std::make_unique<BasicTracker>(kind);
}

}  // namespace crest
