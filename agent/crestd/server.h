// crestd's control socket: accepts clients, reads line-delimited JSON requests (protocol.h),
// checks who asks (SO_PEERCRED) and answers from the supervisor.
//
// Every connection has its own thread, so a slow request (a checkpoint the client waits for)
// or a client that watches a job never holds up another client. Requests are capped in size
// (max_request_bytes) and nesting (kMaxRequestDepth) and must arrive whole within the request
// timeout; a reply not taken by the client within that timeout ends the connection; clients
// at once are capped (max_connections, plus kRootReserve for root; max_connections_per_user for
// each non-root uid),
// those past a cap get a "busy" error and are closed at once. Anything malformed gets an error
// reply and the daemon carries on.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/crestd/config.h"
#include "agent/crestd/supervisor.h"
#include "core/util/unique_fd.h"

namespace crest::agent {

// Who is asking, from the socket (fixed when the client connected).
struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  bool root() const { return uid == 0; }
};

// Connections root may open beyond max_connections: however many clients users hold, the Slurm
// plugin and the administrator still get in.
inline constexpr unsigned kRootReserve = 16;

class Server {
 public:
  Server(const Config& config, Supervisor& supervisor);
  ~Server();

  // Binds the socket (replacing a stale one nobody listens on; refusing a live one), mode 0666:
  // every user may connect, the requests are authorized one by one.
  void listen();
  // Accepts until request_stop(); then closes every connection and returns.
  void serve();
  // Safe from any thread.
  void request_stop();

 private:
  class Connection;
  // Serves one client; counted_uid is the uid its connection was counted under.
  void handle(UniqueFd sock, uid_t counted_uid);
  nlohmann::json dispatch(Connection& conn, const nlohmann::json& request);
  // A checkpoint asked for with "ticket": its result as a symlink in tickets_dir() (see
  // dispatch); the path of the ticket.
  std::string new_ticket();
  std::string tickets_dir() const { return cfg_.socket + ".tickets"; }

  const Config& cfg_;
  Supervisor& sup_;
  UniqueFd listen_fd_;
  UniqueFd stop_fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned connections_ = 0;
  std::map<uid_t, unsigned> per_user_;  // connections of each uid
  uint64_t refused_logged_ = 0;         // clients refused for a limit (the log says every 100th)
  std::vector<int> open_socks_;
  bool stopping_ = false;
};

}  // namespace crest::agent
