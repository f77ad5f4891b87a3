#include "agent/crestd/config.h"

#include <CLI/CLI.hpp>
#include <cctype>
#include <climits>
#include <cstring>
#include <toml++/toml.h>

#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest::agent {

std::string Config::state_path() const {
  return state_file.empty() ? storage_root + "/crestd-state.json" : state_file;
}

namespace {

// A number with an optional unit: k, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (of 1024),
// optionally followed by "B".
uint64_t parse_quantity(std::string s, const std::string& what, const std::string& example) {
  auto bad = [&] {
    fail(Errc::usage, what + ": '" + s + "' is not a size (e.g. " + example + ")");
  };
  while (!s.empty() && s.back() == ' ') s.pop_back();
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) bad();
  double v = 0;
  try {
    v = std::stod(s.substr(0, i));
  } catch (const std::exception&) {
    bad();
  }
  std::string unit = s.substr(i);
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  double mult = 1;
  if (unit.empty()) {
  } else if (unit == "k" || unit == "K") {
    mult = 1e3;
  } else if (unit == "M") {
    mult = 1e6;
  } else if (unit == "G") {
    mult = 1e9;
  } else if (unit == "T") {
    mult = 1e12;
  } else if (unit == "Ki" || unit == "KI") {
    mult = 1024.0;
  } else if (unit == "Mi") {
    mult = 1024.0 * 1024;
  } else if (unit == "Gi") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "Ti") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    bad();
  }
  double bytes = v * mult;
  if (bytes < 0 || bytes > 1.8e19) bad();
  return static_cast<uint64_t>(bytes);
}

struct TomlReader {
  const std::string& path;

  [[noreturn]] void bad(const toml::node& node, const std::string& key, const std::string& want) {
    fail(Errc::usage, path + ":" + std::to_string(node.source().begin.line) + ": '" + key +
                          "' must be " + want);
  }
  std::string str(const toml::node& node, const std::string& key) {
    auto v = node.value<std::string>();
    if (!v || !node.is_string()) bad(node, key, "a string");
    return *v;
  }
  int64_t integer(const toml::node& node, const std::string& key, int64_t lo, int64_t hi) {
    if (!node.is_integer()) bad(node, key, "an integer");
    int64_t v = *node.value<int64_t>();
    if (v < lo || v > hi)
      bad(node, key, "from " + std::to_string(lo) + " to " + std::to_string(hi));
    return v;
  }
  bool boolean(const toml::node& node, const std::string& key) {
    if (!node.is_boolean()) bad(node, key, "true or false");
    return *node.value<bool>();
  }
  Millis duration(const toml::node& node, const std::string& key) {
    std::string s = str(node, key);
    try {
      return parse_duration(s, key);
    } catch (Error& e) {
      e.with_context(path + ":" + std::to_string(node.source().begin.line));
      throw;
    }
  }
  [[noreturn]] void unknown(const toml::node& node, const std::string& key) {
    fail(Errc::usage, path + ":" + std::to_string(node.source().begin.line) +
                          ": unknown setting '" + key + "'");
  }
};

}  // namespace

uint64_t parse_bandwidth(const std::string& text, const std::string& what) {
  std::string s = text;
  if (s == "unlimited") return 0;
  if (s.size() > 2 && s.compare(s.size() - 2, 2, "/s") == 0) s.resize(s.size() - 2);
  return parse_quantity(s, what, "200MB/s, 1.5GiB/s");
}

uint64_t parse_size(const std::string& text, const std::string& what) {
  return parse_quantity(text, what, "4GiB, 512MB");
}

void load_toml(Config& c, const std::string& path) {
  std::string text;
  if (!fs::read_file_if_exists(path, text))
    fail(Errc::not_found, "no configuration file " + path);
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    fail(Errc::usage, path + ":" + std::to_string(e.source().begin.line) + ": " +
                          std::string(e.description()));
  }
  TomlReader r{path};
  for (auto&& [k, node] : root) {
    std::string key(k.str());
    if (key == "socket") {
      c.socket = r.str(node, key);
    } else if (key == "storage_root") {
      c.storage_root = r.str(node, key);
    } else if (key == "state_file") {
      c.state_file = r.str(node, key);
    } else if (key == "metrics_file") {
      c.metrics_file = r.str(node, key);
    } else if (key == "log") {
      c.log = r.str(node, key);
    } else if (key == "log_level") {
      c.log_level = r.str(node, key);
    } else if (key == "concurrency") {
      c.concurrency = static_cast<unsigned>(r.integer(node, key, 1, 256));
    } else if (key == "snapshot_buffer_mib") {
      c.snapshot_buffer_mib = static_cast<uint64_t>(r.integer(node, key, 0, 1 << 20));
    } else if (key == "init") {
      c.init_path = r.str(node, key);
    } else if (key == "scontrol") {
      c.scontrol = r.str(node, key);
    } else if (key == "slurm_poll") {
      c.slurm_poll = r.duration(node, key);
    } else if (key == "defaults" && node.is_table()) {
      for (auto&& [dk, dn] : *node.as_table()) {
        std::string d(dk.str());
        JobPolicy& p = c.defaults;
        if (d == "every") {
          try {
            p.set_every(r.str(dn, d));
          } catch (Error& e) {
            e.with_context(path + ":" + std::to_string(dn.source().begin.line));
            throw;
          }
        } else if (d == "mtbf") {
          p.mtbf = r.duration(dn, d);
        } else if (d == "min_interval") {
          p.min_interval = r.duration(dn, d);
        } else if (d == "keep") {
          p.keep = static_cast<unsigned>(r.integer(dn, d, 1, 100000));
        } else if (d == "compact_after") {
          p.compact_after = static_cast<unsigned>(r.integer(dn, d, 0, 100000));
          if (p.compact_after == 1)
            fail(Errc::usage, path + ": defaults.compact_after must be 0 (never) or at least 2");
        } else if (d == "full_every") {
          p.full_every = static_cast<unsigned>(r.integer(dn, d, 0, 100000));
        } else if (d == "auto_restore") {
          p.auto_restore = static_cast<unsigned>(r.integer(dn, d, 0, 100000));
        } else if (d == "restore_backoff") {
          p.backoff = r.duration(dn, d);
        } else if (d == "restore_backoff_max") {
          p.backoff_max = r.duration(dn, d);
        } else if (d == "restore_on_nonzero") {
          p.restore_on_nonzero = r.boolean(dn, d);
        } else if (d == "lazy_restore") {
          p.lazy_restore = r.boolean(dn, d);
        } else if (d == "on_success") {
          std::string s = r.str(dn, d);
          if (s != "keep" && s != "remove") r.bad(dn, d, "keep or remove");
          p.remove_images_on_success = s == "remove";
        } else if (d == "snapshot") {
          std::string s = r.str(dn, d);
          if (s != "auto" && s != "stop-copy" && s != "cow") r.bad(dn, d, "auto, stop-copy or cow");
          p.snapshot = parse_snapshot(s);
        } else if (d == "tcp_established") {
          p.tcp_established = r.boolean(dn, d);
        } else if (d == "ext_unix_sk") {
          p.ext_unix_sk = r.boolean(dn, d);
        } else if (d == "time_limit_margin") {
          try {
            p.set_time_limit_margin(r.str(dn, d));
          } catch (Error& e) {
            e.with_context(path + ":" + std::to_string(dn.source().begin.line));
            throw;
          }
        } else {
          r.unknown(dn, "defaults." + d);
        }
      }
    } else if (key == "storage" && node.is_table()) {
      for (auto&& [sk, sn] : *node.as_table()) {
        std::string k2(sk.str());
        const auto line = sn.source().begin.line;  // a structured binding is not captured (C++20)
        auto with_line = [&](auto f) {
          try {
            return f();
          } catch (Error& e) {
            e.with_context(path + ":" + std::to_string(line));
            throw;
          }
        };
        if (k2 == "root" || k2 == "shared") {
          c.storage_root = r.str(sn, k2);
        } else if (k2 == "local") {
          c.storage_local = r.str(sn, k2);
        } else if (k2 == "flush_bandwidth") {
          std::string v = r.str(sn, k2);
          c.flush_bandwidth = with_line([&] { return parse_bandwidth(v, "storage.flush_bandwidth"); });
        } else if (k2 == "local_keep") {
          c.local_keep = static_cast<unsigned>(r.integer(sn, k2, 1, 100000));
        } else if (k2 == "local_max_bytes") {
          if (sn.is_integer()) {
            c.local_max_bytes = static_cast<uint64_t>(r.integer(sn, k2, 0, INT64_MAX));
          } else {
            std::string v = r.str(sn, k2);
            c.local_max_bytes = with_line([&] { return parse_size(v, "storage.local_max_bytes"); });
          }
        } else {
          r.unknown(sn, "storage." + k2);
        }
      }
    } else if (key == "limits" && node.is_table()) {
      for (auto&& [lk, ln] : *node.as_table()) {
        std::string l(lk.str());
        if (l == "max_request_bytes") {
          c.max_request_bytes = static_cast<size_t>(r.integer(ln, l, 256, 64 << 20));
        } else if (l == "request_timeout") {
          c.request_timeout = r.duration(ln, l);
        } else if (l == "max_connections") {
          c.max_connections = static_cast<unsigned>(r.integer(ln, l, 1, 100000));
        } else if (l == "max_connections_per_user") {
          c.max_connections_per_user = static_cast<unsigned>(r.integer(ln, l, 1, 100000));
        } else {
          r.unknown(ln, "limits." + l);
        }
      }
    } else {
      r.unknown(node, key);
    }
  }
}

void add_flags(CLI::App& app, Config& c, std::string& every, std::string& mtbf,
               std::string& min_interval, std::string& backoff, std::string& backoff_max,
               std::string& timeout, std::string& snapshot) {
  app.add_option("-c,--config", c.config_file,
                 "TOML configuration file (default " + std::string(kDefaultConfig) +
                     "; ignored when that default is missing)");
  app.add_option("--socket", c.socket, "Control socket path")->capture_default_str();
  app.add_option("--storage-root", c.storage_root,
                 "Where job images go by default (<root>/<uid>/<job>)")
      ->capture_default_str();
  app.add_option("--storage-local", c.storage_local,
                 "Node-local staging: checkpoints are committed under <dir>/<uid>/<job> first and "
                 "copied to the job's images directory in the background (\"\": none)");
  app.add_option_function<std::string>(
      "--flush-bandwidth",
      [&c](const std::string& v) { c.flush_bandwidth = parse_bandwidth(v, "--flush-bandwidth"); },
      "Bandwidth of the background copy to shared storage (200MB/s; 0: unlimited)");
  app.add_option("--local-keep", c.local_keep,
                 "Checkpoints of a job kept on local storage once copied to shared storage")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option_function<std::string>(
      "--local-max-bytes",
      [&c](const std::string& v) { c.local_max_bytes = parse_size(v, "--local-max-bytes"); },
      "Local staging footprint of the node (4GiB; 0: no limit); a checkpoint that does not fit "
      "goes directly to shared storage");
  app.add_option("--state-file", c.state_file,
                 "Jobs persisted across restarts (default <storage-root>/crestd-state.json)");
  app.add_option("--metrics-file", c.metrics_file,
                 "Node metrics in Prometheus text format, for node_exporter's textfile collector "
                 "(written only when its directory exists; \"\" for none)")
      ->capture_default_str();
  app.add_option("--log", c.log, "Log destination: stderr or a file")->capture_default_str();
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error, critical, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--concurrency", c.concurrency, "Checkpoints and restores running at once")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--snapshot-buffer-mib", c.snapshot_buffer_mib,
                 "Per checkpoint: MiB of pages read into memory while the job is frozen and "
                 "written after it runs again (0: none)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--init", c.init_path, "crest-init binary (default: next to crestd)");
  app.add_option("--max-request-bytes", c.max_request_bytes, "Largest request line accepted")
      ->check(CLI::Range(256, 64 << 20))
      ->capture_default_str();
  app.add_option("--request-timeout", timeout, "A request must arrive whole within this time");
  app.add_option("--max-connections", c.max_connections, "Clients connected at once")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--max-connections-per-user", c.max_connections_per_user,
                 "Clients of one non-root user connected at once")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--every", every, "Default checkpoint interval (30s, 10m, 2h) or auto");
  app.add_option("--mtbf", mtbf, "Mean time between failures for --every auto");
  app.add_option("--min-interval", min_interval, "Shortest interval --every auto may choose");
  app.add_option("--keep", c.defaults.keep, "Checkpoints kept per job")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--compact-after", c.defaults.compact_after,
                 "Compact a job's newest checkpoint in the background once its chain is this many "
                 "files long (0: never)")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_option("--full-every", c.defaults.full_every,
                 "Start a new chain with a full checkpoint after this many incremental ones "
                 "(0: never)")
      ->capture_default_str();
  app.add_option("--auto-restore", c.defaults.auto_restore,
                 "Automatic restores per job after a failure (0: never)")
      ->capture_default_str();
  app.add_option("--restore-backoff", backoff, "Wait before the first automatic restore");
  app.add_option("--restore-backoff-max", backoff_max, "Longest wait between automatic restores");
  app.add_flag("--restore-on-nonzero", c.defaults.restore_on_nonzero,
               "A non-zero exit is a failure too (default: only death by a signal)");
  app.add_flag("--lazy-restore", c.defaults.lazy_restore,
               "Restore jobs lazily: they run again at once while crestd serves their memory from "
               "the image (crest restore --lazy); checkpoints wait until it is all in place");
  app.add_flag(
      "--remove-images-on-success{true}", c.defaults.remove_images_on_success,
      "Remove a job's images when it ends normally (default: keep them)");
  app.add_option("--snapshot", snapshot, "Snapshot mode: auto, stop-copy or cow");
  app.add_option_function<std::string>(
      "--time-limit-margin",
      [&c](const std::string& v) { c.defaults.set_time_limit_margin(v); },
      "A job with a time limit (Slurm) gets its last checkpoint this long before it, then is "
      "requeued; auto: 3 x its checkpoint time + 60s");
  app.add_option("--scontrol", c.scontrol,
                 "Slurm's scontrol, to requeue a job at its time limit and note its last "
                 "checkpoint in its AdminComment")
      ->capture_default_str();
  app.add_option_function<std::string>(
      "--slurm-poll",
      [&c](const std::string& v) { c.slurm_poll = parse_duration(v, "--slurm-poll"); },
      "How often a running Slurm job's end (its time limit, which scontrol update may change) "
      "is asked of Slurm again (default 30s)");
}

void apply_flag_strings(Config& c, const std::string& every, const std::string& mtbf,
                        const std::string& min_interval, const std::string& backoff,
                        const std::string& backoff_max, const std::string& timeout,
                        const std::string& snapshot) {
  if (!every.empty()) c.defaults.set_every(every);
  if (!mtbf.empty()) c.defaults.mtbf = parse_duration(mtbf, "--mtbf");
  if (!min_interval.empty()) c.defaults.min_interval = parse_duration(min_interval, "--min-interval");
  if (!backoff.empty()) c.defaults.backoff = parse_duration(backoff, "--restore-backoff");
  if (!backoff_max.empty())
    c.defaults.backoff_max = parse_duration(backoff_max, "--restore-backoff-max");
  if (!timeout.empty()) c.request_timeout = parse_duration(timeout, "--request-timeout");
  if (!snapshot.empty()) c.defaults.snapshot = parse_snapshot(snapshot);
}

std::string config_path_from_args(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc) return argv[i + 1];
    if (a.rfind("--config=", 0) == 0) return a.substr(9);
    if (a == "--") break;
  }
  return "";
}

}  // namespace crest::agent
