// crestd's settings: built-in defaults, then the TOML file (/etc/crest/crestd.toml unless
// --config names another), then command-line flags; every setting has a flag. agent/crestd.toml
// is the annotated example.
#pragma once

#include <cstddef>
#include <string>

#include "agent/crestd/policy.h"
#include "core/checkpoint.h"

namespace CLI {
class App;
}

namespace crest::agent {

inline constexpr const char* kDefaultSocket = "/run/crest/crestd.sock";
inline constexpr const char* kDefaultConfig = "/etc/crest/crestd.toml";

struct Config {
  std::string config_file = kDefaultConfig;
  std::string socket = kDefaultSocket;
  std::string storage_root = "/var/lib/crest/images";
  std::string state_file;  // empty: <storage_root>/crestd-state.json
  // Node metrics for node_exporter's textfile collector (Debian's prometheus-node-exporter reads
  // *.prom files in this directory); written only when the directory exists. "": none.
  std::string metrics_file = "/var/lib/prometheus/node-exporter/crest.prom";
  std::string log = "stderr";  // "stderr" or a file
  std::string log_level = "info";
  unsigned concurrency = 2;    // checkpoints and restores running at once
  // Per checkpoint: pages read into memory while the job is frozen, written after the thaw
  // (DumpOptions::buffer_bytes), in MiB.
  uint64_t snapshot_buffer_mib = kDefaultBufferBytes >> 20;
  std::string init_path;       // crest-init; empty: next to the crestd binary
  std::string scontrol = "scontrol";  // Slurm's scontrol (looked up in PATH unless a path)
  // How often the end of each running Slurm job with a time limit is asked of Slurm again
  // (scontrol show job), so that a limit changed while the job runs moves its last checkpoint.
  Millis slurm_poll{std::chrono::seconds(30)};
  // Limits of the control socket (server.h): a request line's size, the time it may take to
  // arrive (and a reply to be taken by the client), the clients connected at once (one thread
  // each), and those of any one non-root user, so that no user can lock the others out.
  size_t max_request_bytes = 64 * 1024;
  Millis request_timeout{std::chrono::seconds(10)};
  unsigned max_connections = 512;
  unsigned max_connections_per_user = 64;
  JobPolicy defaults;
  // Node-local staging ([storage] local): checkpoints are committed in <local>/<uid>/<job id>
  // first and copied to the job's images directory (the shared storage) by crestd in the
  // background. "": none (checkpoints are written to the images directory directly).
  std::string storage_local;
  uint64_t flush_bandwidth = 0;   // bytes per second of that copy; 0: unlimited
  unsigned local_keep = 1;        // checkpoints of a job kept locally once flushed (with chains)
  uint64_t local_max_bytes = 0;   // the node's local copies at most this size; 0: no limit

  std::string state_path() const;
};

// Reads a TOML file over `config`. Unknown keys and wrong types are errors (Errc::usage) naming
// the file and line; a missing file is Errc::not_found.
void load_toml(Config& config, const std::string& path);

// Adds one flag per setting, bound to `config` (so flags parsed after load_toml override it).
// The --config flag itself is read by config_path_from_args before parsing.
void add_flags(CLI::App& app, Config& config, std::string& every, std::string& mtbf,
               std::string& min_interval, std::string& backoff, std::string& backoff_max,
               std::string& timeout, std::string& snapshot);
// Applies the string-valued flags that add_flags bound (durations, modes) when given.
void apply_flag_strings(Config& config, const std::string& every, const std::string& mtbf,
                        const std::string& min_interval, const std::string& backoff,
                        const std::string& backoff_max, const std::string& timeout,
                        const std::string& snapshot);

// "200MB/s", "1.5GiB/s", "800M" (bytes per second; the "/s" is optional), "0" or "unlimited".
uint64_t parse_bandwidth(const std::string& text, const std::string& what);
// "4GiB", "512MB", "1073741824" (bytes); "0" for no limit.
uint64_t parse_size(const std::string& text, const std::string& what);

// --config PATH / --config=PATH / -c PATH from argv; empty when not given.
std::string config_path_from_args(int argc, char** argv);

}  // namespace crest::agent
