// What crestd does for one job: how often it checkpoints, how many checkpoints it keeps, and
// whether and how it restores the job after a failure. The daemon's [defaults] fill every field;
// a register or run request may override some of them for its job.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "agent/crestd/duration.h"
#include "core/checkpoint.h"

namespace crest::agent {

struct JobPolicy {
  // Interval between checkpoints: fixed, or chosen by Daly's formula from the measured cost and
  // the MTBF (`auto`), never below min_interval.
  bool auto_interval = false;
  Millis interval{std::chrono::minutes(10)};
  // No timer at all ("never"): checkpoints only when asked (crest checkpoint, crest snapshot
  // from cron).
  bool never = false;
  Millis mtbf{std::chrono::hours(24)};
  Millis min_interval{std::chrono::seconds(10)};
  // Retention: the newest `keep` checkpoints stay, with every checkpoint they depend on. Chains
  // stay short without stopping the job for a full checkpoint: once the newest checkpoint's
  // chain is `compact_after` files long, it is compacted in the background (rewritten as a full
  // checkpoint under the same name and uuid, so the next one is still incremental on it) and
  // the ancestors nothing kept needs go. `full_every` (0: never, the default) instead takes a
  // full checkpoint after that many incremental ones.
  unsigned keep = 3;
  unsigned compact_after = 8;
  unsigned full_every = 0;
  // Automatic restore after an abnormal end: at most `auto_restore` restores in the job's life
  // (0: never), the k-th one after backoff * 2^(k-1), at most backoff_max.
  unsigned auto_restore = 3;
  Millis backoff{std::chrono::seconds(1)};
  Millis backoff_max{std::chrono::minutes(1)};
  bool restore_on_nonzero = false;  // a non-zero exit is a failure too (default: a normal end)
  bool remove_images_on_success = false;
  // Restores are lazy (crest restore --lazy): the job runs again at once while crestd serves
  // its memory from the image; its checkpoints wait until every page is in place.
  bool lazy_restore = false;
  SnapshotMode snapshot = SnapshotMode::automatic;
  // Checkpoints save TCP connections to peers outside the job (dump --tcp-established) instead
  // of failing on them; each checkpoint locks them while the job is frozen (the job runs on).
  bool tcp_established = false;
  // Checkpoints save Unix sockets connected to a named socket outside the job (dump
  // --ext-unix-sk): restored connected again to that name (core/fds/unix_outside.h).
  bool ext_unix_sk = false;
  // A job with an end time (a Slurm job's time limit): its last checkpoint is taken this long
  // before the end, and the job is requeued to go on in its next allocation. Automatic (the
  // default): 3 x the job's measured checkpoint time + 60 s.
  bool time_limit_margin_auto = true;
  Millis time_limit_margin{std::chrono::seconds(60)};

  // "auto" or "2m".
  std::string time_limit_margin_text() const;
  // "auto" or a duration. Throws Errc::usage.
  void set_time_limit_margin(const std::string& text);

  // "10m", "auto" or "never".
  std::string every() const;
  // Sets the interval from "30s"/"10m"/"2h", "auto" or "never". Throws Errc::usage.
  void set_every(const std::string& text);

  nlohmann::json to_json() const;
  // Overrides the fields present in `j` (the keys of to_json()); throws Errc::usage on a bad
  // value or an unknown key.
  void update(const nlohmann::json& j);
};

const char* snapshot_name(SnapshotMode mode);
SnapshotMode parse_snapshot(const std::string& text);

}  // namespace crest::agent
