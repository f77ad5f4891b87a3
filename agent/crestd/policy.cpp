#include "agent/crestd/policy.h"

#include "core/util/error.h"

namespace crest::agent {

std::string JobPolicy::every() const {
  if (never) return "never";
  return auto_interval ? "auto" : format_duration(interval);
}

void JobPolicy::set_every(const std::string& text) {
  if (text == "never") {
    never = true;
    auto_interval = false;
    return;
  }
  never = false;
  if (text == "auto") {
    auto_interval = true;
    return;
  }
  Millis d = parse_duration(text, "interval");
  if (d < std::chrono::milliseconds(100))
    fail(Errc::usage, "interval '" + text + "' is too short (at least 100ms)");
  auto_interval = false;
  interval = d;
}

const char* snapshot_name(SnapshotMode mode) {
  switch (mode) {
    case SnapshotMode::automatic: return "auto";
    case SnapshotMode::stop_copy: return "stop-copy";
    case SnapshotMode::cow: return "cow";
  }
  return "auto";
}

SnapshotMode parse_snapshot(const std::string& text) {
  if (text == "auto") return SnapshotMode::automatic;
  if (text == "stop-copy") return SnapshotMode::stop_copy;
  if (text == "cow") return SnapshotMode::cow;
  fail(Errc::usage, "bad snapshot mode '" + text + "' (auto, stop-copy or cow)");
}

nlohmann::json JobPolicy::to_json() const {
  return {{"every", every()},
          {"interval", format_duration(interval)},
          {"mtbf", format_duration(mtbf)},
          {"min_interval", format_duration(min_interval)},
          {"keep", keep},
          {"compact_after", compact_after},
          {"full_every", full_every},
          {"auto_restore", auto_restore},
          {"restore_backoff", format_duration(backoff)},
          {"restore_backoff_max", format_duration(backoff_max)},
          {"restore_on_nonzero", restore_on_nonzero},
          {"lazy_restore", lazy_restore},
          {"on_success", remove_images_on_success ? "remove" : "keep"},
          {"snapshot", snapshot_name(snapshot)},
          {"tcp_established", tcp_established},
          {"ext_unix_sk", ext_unix_sk},
          {"time_limit_margin", time_limit_margin_text()}};
}

std::string JobPolicy::time_limit_margin_text() const {
  return time_limit_margin_auto ? "auto" : format_duration(time_limit_margin);
}

void JobPolicy::set_time_limit_margin(const std::string& text) {
  if (text == "auto") {
    time_limit_margin_auto = true;
    return;
  }
  time_limit_margin = parse_duration(text, "time_limit_margin");
  time_limit_margin_auto = false;
}

namespace {

unsigned as_count(const nlohmann::json& v, const std::string& key, unsigned max) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > max)
    fail(Errc::usage, "'" + key + "' must be an integer from 0 to " + std::to_string(max));
  return static_cast<unsigned>(v.get<int64_t>());
}

std::string as_string(const nlohmann::json& v, const std::string& key) {
  if (!v.is_string()) fail(Errc::usage, "'" + key + "' must be a string");
  return v.get<std::string>();
}

bool as_bool(const nlohmann::json& v, const std::string& key) {
  if (!v.is_boolean()) fail(Errc::usage, "'" + key + "' must be true or false");
  return v.get<bool>();
}

}  // namespace

void JobPolicy::update(const nlohmann::json& j) {
  if (!j.is_object()) fail(Errc::usage, "the policy must be a JSON object");
  for (auto& [key, v] : j.items()) {
    if (key == "every") {
      set_every(as_string(v, key));
    } else if (key == "interval") {
      interval = parse_duration(as_string(v, key), key);
    } else if (key == "mtbf") {
      mtbf = parse_duration(as_string(v, key), key);
      if (mtbf.count() <= 0) fail(Errc::usage, "'mtbf' must be positive");
    } else if (key == "min_interval") {
      min_interval = parse_duration(as_string(v, key), key);
    } else if (key == "keep") {
      keep = as_count(v, key, 100000);
      if (keep == 0) fail(Errc::usage, "'keep' must be at least 1");
    } else if (key == "compact_after") {
      compact_after = as_count(v, key, 100000);
      if (compact_after == 1) fail(Errc::usage, "'compact_after' must be 0 (never) or at least 2");
    } else if (key == "full_every") {
      full_every = as_count(v, key, 100000);
    } else if (key == "auto_restore") {
      auto_restore = as_count(v, key, 100000);
    } else if (key == "restore_backoff") {
      backoff = parse_duration(as_string(v, key), key);
    } else if (key == "restore_backoff_max") {
      backoff_max = parse_duration(as_string(v, key), key);
    } else if (key == "restore_on_nonzero") {
      restore_on_nonzero = as_bool(v, key);
    } else if (key == "lazy_restore") {
      lazy_restore = as_bool(v, key);
    } else if (key == "on_success") {
      std::string s = as_string(v, key);
      if (s != "keep" && s != "remove") fail(Errc::usage, "'on_success' must be keep or remove");
      remove_images_on_success = s == "remove";
    } else if (key == "snapshot") {
      snapshot = parse_snapshot(as_string(v, key));
    } else if (key == "tcp_established") {
      tcp_established = as_bool(v, key);
    } else if (key == "ext_unix_sk") {
      ext_unix_sk = as_bool(v, key);
    } else if (key == "time_limit_margin") {
      set_time_limit_margin(as_string(v, key));
    } else {
      fail(Errc::usage, "unknown policy setting '" + key + "'");
    }
  }
}

}  // namespace crest::agent
