// crestd: the node agent. Checkpoints jobs on a timer, incrementally; restores them when they
// fail; serves the crest CLI, crest run and the Slurm plugin on a Unix socket.
//
//   crestd [--config FILE] [--socket PATH] [--storage-root DIR] [...]   (crestd --help)
//
// Stopping crestd (SIGTERM, SIGINT) stops its timers and its socket, never its jobs: they run on,
// and a crestd started later re-adopts them from its state file.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <thread>

#include "agent/crestd/config.h"
#include "agent/crestd/server.h"
#include "agent/crestd/supervisor.h"
#include "core/netlock.h"
#include "core/util/error.h"
#include "core/util/log.h"
#include "core/kernel/features.h"

namespace {

int run(int argc, char** argv) {
  using namespace crest::agent;
  Config cfg;
  std::string explicit_config = config_path_from_args(argc, argv);
  try {
    load_toml(cfg, explicit_config.empty() ? kDefaultConfig : explicit_config);
  } catch (const crest::Error& e) {
    // The default file is optional; one named on the command line is not.
    if (e.kind() != crest::Errc::not_found || !explicit_config.empty()) throw;
  }

  CLI::App app{"crestd: the crest node agent (periodic incremental checkpoints, automatic "
               "restore after a failure, the control socket of crest run and crest jobs).",
               "crestd"};
  app.set_version_flag("--version", std::string("crestd ") + CREST_VERSION);
  std::string every, mtbf, min_interval, backoff, backoff_max, timeout, snapshot;
  add_flags(app, cfg, every, mtbf, min_interval, backoff, backoff_max, timeout, snapshot);
  app.footer(
      "Settings come from the TOML file, then from these flags. Logs name the job and pid on\n"
      "every line. SIGTERM/SIGINT stop the agent; its jobs keep running and are re-adopted by the\n"
      "next crestd from the state file.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  apply_flag_strings(cfg, every, mtbf, min_interval, backoff, backoff_max, timeout, snapshot);

  crest::log::set_level(spdlog::level::from_str(cfg.log_level));
  if (cfg.log != "stderr") crest::log::set_file(cfg.log);
  spdlog::flush_every(std::chrono::seconds(1));
  auto log = crest::log::get("agent.main");

  // Signals are taken by one thread; every other thread (the supervisor's, TBB's, the
  // connections') inherits them blocked. SIGPIPE is not wanted at all: writes use MSG_NOSIGNAL
  // or report EPIPE.
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) sigaddset(&set, s);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::umask(022);

  SupervisorOptions so;
  so.concurrency = cfg.concurrency;
  so.buffer_bytes = cfg.snapshot_buffer_mib << 20;
  so.init_path = cfg.init_path;
  so.scontrol = cfg.scontrol;
  so.slurm_poll = cfg.slurm_poll;
  so.storage_root = cfg.storage_root;
  so.storage_local = cfg.storage_local;
  so.flush_bandwidth = cfg.flush_bandwidth;
  so.local_keep = cfg.local_keep;
  so.local_max_bytes = cfg.local_max_bytes;
  if (!cfg.storage_local.empty() && ::mkdir(cfg.storage_local.c_str(), 0755) != 0 &&
      errno != EEXIST)
    crest::throw_errno("cannot create the local staging root " + cfg.storage_local);
  so.state_file = cfg.state_path();
  so.metrics_file = cfg.metrics_file;
  so.defaults = cfg.defaults;
  so.control_socket = cfg.socket;
  if (::mkdir(cfg.storage_root.c_str(), 0755) != 0 && errno != EEXIST)
    crest::throw_errno("cannot create the storage root " + cfg.storage_root);

  Supervisor sup(so);
  sup.recover();
  // A dump that died between keeping its network lock and killing its tree left the running
  // job's connections to the outside blocked.
  crest::netlock::remove_stale();
  Server server(cfg, sup);
  server.listen();
  sup.start();
  log->info("crestd {} pid {}: ready ({} jobs re-adopted or known; storage {}, every {}, keep {}, "
            "concurrency {})",
            CREST_VERSION, ::getpid(), sup.job_count(), cfg.storage_root, cfg.defaults.every(),
            cfg.defaults.keep, cfg.concurrency);

  std::thread signals([&] {
    for (;;) {
      siginfo_t info;
      int sig = ::sigwaitinfo(&set, &info);
      if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
        log->info("crestd pid {}: {} received; stopping (jobs keep running)", ::getpid(),
                  ::sigabbrev_np(sig));
        server.request_stop();
        return;
      }
    }
  });
  server.serve();
  sup.stop();
  if (signals.joinable()) {
    // serve() may also have ended without a signal; make the signal thread leave.
    ::kill(::getpid(), SIGTERM);
    signals.join();
  }
  log->info("crestd pid {}: stopped", ::getpid());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    crest::kernel::check_disable_list();
    return run(argc, argv);
  } catch (const crest::Error& e) {
    std::cerr << "crestd: " << crest::kind_name(e.kind()) << ": " << e.what() << "\n";
    return e.kind() == crest::Errc::usage ? 2 : 1;
  } catch (const std::exception& e) {
    std::cerr << "crestd: internal: " << e.what() << "\n";
    return 1;
  }
}
