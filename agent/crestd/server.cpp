#include "agent/crestd/server.h"

#include <poll.h>
#include <signal.h>
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <system_error>
#include <thread>

#include "agent/crestd/protocol.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace crest::agent {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

Peer peer_of(int sock) {
  Peer p;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    throw_errno("SO_PEERCRED", errno, Errc::kernel);
  p.pid = cred.pid;
  p.uid = cred.uid;
  p.gid = cred.gid;
  std::vector<gid_t> groups(64);
  for (;;) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE || groups.size() > 65536) {
      groups.clear();
      break;
    }
    groups.resize(glen / sizeof(gid_t) + 1);
  }
  p.groups = std::move(groups);
  return p;
}

// The four uids of /proc/PID/status (real, effective, saved, filesystem) all equal to uid.
bool process_owned_by(pid_t pid, uid_t uid) {
  auto ids = proc::status_numbers(proc::status(pid), "Uid");
  if (ids.empty()) return false;
  for (auto id : ids)
    if (id != uid) return false;
  return true;
}

// Every process of the tree below pid belongs to uid (a user may not checkpoint someone
// else's process, nor a setuid child of their own).
void check_tree_owner(pid_t pid, uid_t uid) {
  std::vector<pid_t> todo{pid};
  size_t seen = 0;
  while (!todo.empty() && seen < 100000) {
    pid_t p = todo.back();
    todo.pop_back();
    ++seen;
    try {
      if (!process_owned_by(p, uid))
        fail(Errc::refused, "process " + std::to_string(p) + " does not belong to uid " +
                                std::to_string(uid));
      for (pid_t c : proc::children(p)) todo.push_back(c);
    } catch (const Error& e) {
      if (e.kind() == Errc::refused) throw;
      if (p == pid) fail(Errc::not_found, "no process with pid " + std::to_string(pid));
    }
  }
}

// A directory a user names for their images must be theirs: an absolute path without "..",
// owned by them if it exists, else its parent is.
void check_user_dir(const std::string& dir, const Peer& peer) {
  if (dir.empty() || dir[0] != '/') fail(Errc::usage, "the images directory must be an absolute path");
  if (dir.find("/../") != std::string::npos || dir.ends_with("/.."))
    fail(Errc::usage, "the images directory may not contain '..'");
  if (peer.root()) return;
  struct stat st {};
  if (::lstat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode) || st.st_uid != peer.uid)
      fail(Errc::refused, dir + " is not a directory of uid " + std::to_string(peer.uid));
    return;
  }
  std::string parent = fs::dirname(dir);
  if (::lstat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != peer.uid)
    fail(Errc::refused, "cannot create " + dir + ": its parent is not a directory of uid " +
                            std::to_string(peer.uid));
}

// Whether two paths name the same directory (symlinks and trailing slashes aside).
bool same_dir(const std::string& a, const std::string& b) {
  auto canon = [](const std::string& p) {
    char buf[PATH_MAX];
    if (::realpath(p.c_str(), buf) != nullptr) return std::string(buf);
    std::string out = p;
    while (out.size() > 1 && out.back() == '/') out.pop_back();
    return out;
  };
  return canon(a) == canon(b);
}

// The result of a ticketed checkpoint, made atomically as the symlink `path` whose target is
// "checkpointed <checkpoint>" or "failed <kind>: <message>": a program in the job reads it with
// readlink(), holding no descriptor that a checkpoint of it would have to take.
void write_ticket(const std::string& path, const json& reply) {
  std::string target;
  if (reply.value("ok", false)) {
    target = "checkpointed " + reply.value("checkpoint", std::string("?"));
  } else {
    json err = reply.value("error", json::object());
    target = "failed " + err.value("kind", std::string("internal")) + ": " +
             err.value("message", std::string("unknown error"));
  }
  if (target.size() > 3000) target.resize(3000);
  for (char& c : target)
    if (c == '\0') c = ' ';
  std::string tmp = path + ".new";
  ::unlink(tmp.c_str());
  if (::symlink(target.c_str(), tmp.c_str()) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    log::get("agent.server")->warn("cannot write the checkpoint ticket {}: {}", path, std::strerror(errno));
    ::unlink(tmp.c_str());
  }
}

}  // namespace

// ---- one client ---------------------------------------------------------------------------------

class Server::Connection {
 public:
  Connection(UniqueFd sock, Peer peer, size_t max_line, Supervisor& sup)
      : sock(std::move(sock)), peer(std::move(peer)), reader(this->sock.get(), max_line),
        sup(sup), sink(std::make_shared<EventQueue>()) {}
  ~Connection() {
    for (auto t : tokens) sup.unsubscribe(t);
    sink->close();
  }

  Supervisor::Listener listener() {
    watching = true;
    auto s = sink;
    return [s](const json& ev) { s->push(ev); };
  }
  void flush_events() {
    for (auto& ev : sink->take()) send_line(sock.get(), ev);
  }
  void watch(const std::string& id) { tokens.push_back(sup.subscribe(id, listener())); }

  UniqueFd sock;
  Peer peer;
  LineReader reader;
  Supervisor& sup;
  std::shared_ptr<EventQueue> sink;
  std::vector<uint64_t> tokens;
  bool watching = false;
  // Checkpoints asked for with "ticket": (job, ticket path), queued once the client has closed
  // the connection, so that the job, when frozen, holds no connection to the agent.
  std::vector<std::pair<std::string, std::string>> on_close;
};

Server::Server(const Config& config, Supervisor& supervisor) : cfg_(config), sup_(supervisor) {
  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_) throw_errno("eventfd", errno, Errc::kernel);
}

Server::~Server() {
  if (listen_fd_) ::unlink(cfg_.socket.c_str());
}

void Server::listen() {
  auto log = log::get("agent.server");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (cfg_.socket.size() >= sizeof addr.sun_path) fail(Errc::usage, "socket path too long: " + cfg_.socket);
  std::memcpy(addr.sun_path, cfg_.socket.c_str(), cfg_.socket.size() + 1);
  std::string dir = fs::dirname(cfg_.socket);
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("cannot create " + dir);

  // A socket file left by a crestd that died: replace it, but never steal a live one.
  if (auto other = Client::try_connect(cfg_.socket))
    fail(Errc::busy, "another crestd is listening on " + cfg_.socket);
  ::unlink(cfg_.socket.c_str());

  listen_fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd_) throw_errno("socket");
  if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw_errno("cannot bind " + cfg_.socket);
  if (::chmod(cfg_.socket.c_str(), 0666) != 0) throw_errno("cannot chmod " + cfg_.socket);
  if (::listen(listen_fd_.get(), SOMAXCONN) != 0) throw_errno("cannot listen on " + cfg_.socket);
  log->info("listening on {}", cfg_.socket);
}

void Server::request_stop() {
  uint64_t one = 1;
  (void)!::write(stop_fd_.get(), &one, sizeof one);
}

void Server::serve() {
  auto log = log::get("agent.server");
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      throw_errno("poll", errno, Errc::kernel);
    }
    if (fds[1].revents) break;
    if (!fds[0].revents) continue;
    int s = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (s < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        log->warn("accept: {}", std::strerror(errno));
      continue;
    }
    UniqueFd sock(s);
    // Who connects decides which limit applies; a peer whose credentials cannot be read is
    // counted as nobody's and dropped by handle().
    ucred cred{};
    socklen_t clen = sizeof cred;
    uid_t uid = ::getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 ? cred.uid : 0;
    std::string refusal;
    {
      std::lock_guard lock(mu_);
      if (connections_ >= cfg_.max_connections + (uid == 0 ? kRootReserve : 0)) {
        refusal = "too many connections (" + std::to_string(cfg_.max_connections) +
                  ", max_connections)";
      } else if (uid != 0 && per_user_[uid] >= cfg_.max_connections_per_user) {
        refusal = "too many connections from uid " + std::to_string(uid) + " (" +
                  std::to_string(cfg_.max_connections_per_user) + ", max_connections_per_user)";
      } else {
        ++connections_;
        ++per_user_[uid];
        open_socks_.push_back(sock.get());
      }
    }
    if (!refusal.empty()) {
      // The socket is fresh: its buffer takes the line at once; never wait on this client.
      std::string line = error_reply(kind_name(Errc::busy), refusal).dump() + "\n";
      (void)!::send(s, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (refused_logged_++ % 100 == 0)
        log->warn("refused a client of uid {}: {} ({} refused so far)", uid, refusal,
                  refused_logged_);
      continue;
    }
    // A client that does not take its replies (or a watcher its events) within the request
    // timeout is disconnected, rather than holding its thread in send() for ever.
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(cfg_.request_timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((cfg_.request_timeout.count() % 1000) * 1000);
    ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    // The thread owns the socket from its first instruction; if there is no thread, we still do.
    int raw = sock.release();
    try {
      std::thread([this, uid, raw] { handle(UniqueFd(raw), uid); }).detach();
    } catch (const std::system_error& e) {
      // No thread to be had (memory, RLIMIT_NPROC): this client goes, crestd serves on.
      UniqueFd unserved(raw);
      log->warn("cannot serve a client of uid {}: {}", uid, e.what());
      std::string line = error_reply(kind_name(Errc::busy),
                                     std::string("crestd cannot serve: ") + e.what())
                             .dump() +
                         "\n";
      (void)!::send(raw, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      std::lock_guard lock(mu_);
      std::erase(open_socks_, raw);
      --connections_;
      if (--per_user_[uid] == 0) per_user_.erase(uid);
    }
  }
  // Shut every connection down and wait for their threads.
  std::unique_lock lock(mu_);
  stopping_ = true;
  for (int s : open_socks_) ::shutdown(s, SHUT_RDWR);
  cv_.wait(lock, [this] { return connections_ == 0; });
  log->info("stopped serving {}", cfg_.socket);
}

void Server::handle(UniqueFd sock_in, uid_t counted_uid) {
  auto log = log::get("agent.server");
  int raw = sock_in.get();
  std::unique_ptr<Connection> conn;
  try {
    Peer peer = peer_of(raw);
    conn = std::make_unique<Connection>(std::move(sock_in), std::move(peer), cfg_.max_request_bytes,
                                        sup_);
  } catch (const Error& e) {
    log->warn("connection dropped: {}", e.what());
  }

  if (conn) try {
      Clock::time_point deadline = Clock::now() + cfg_.request_timeout;
      bool open = true;
      while (open) {
        // Idle connections go after the timeout; a watching one may stay as long as it likes,
        // but a request, once started, must arrive whole in time.
        bool watching = conn->watching;
        int wait = -1;
        if (!watching || conn->reader.pending() > 0) {
          wait = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      deadline - Clock::now())
                                      .count());
          if (wait < 0) wait = 0;
        }
        pollfd fds[2] = {{conn->sock.get(), POLLIN, 0}, {conn->sink->fd(), POLLIN, 0}};
        int n = ::poll(fds, 2, wait);
        if (n < 0 && errno == EINTR) continue;
        if (fds[1].revents) conn->flush_events();
        if (n == 0) {
          if (conn->reader.pending() > 0) {
            log->warn("client pid {} uid {}: request not complete after {}; closing",
                      conn->peer.pid, conn->peer.uid, format_duration(cfg_.request_timeout));
            send_line(conn->sock.get(),
                      error_reply(kind_name(Errc::usage),
                                  "incomplete request: no end of line within " +
                                      format_duration(cfg_.request_timeout)));
          }
          break;
        }
        if (!fds[0].revents) continue;
        size_t before = conn->reader.pending();
        auto st = conn->reader.read_some();
        if (st == LineReader::Status::error) break;
        if (st == LineReader::Status::eof) {
          if (conn->reader.pending() > 0) {
            send_line(conn->sock.get(),
                      error_reply(kind_name(Errc::usage),
                                  "truncated request: the connection ended in the middle of a line"));
          }
          break;
        }
        if (before == 0 && conn->reader.pending() > 0) deadline = Clock::now() + cfg_.request_timeout;
        std::string line;
        while (open && conn->reader.pop_line(line)) {
          json reply;
          try {
            auto doc = parse_request(line);
            if (!doc) continue;  // blank lines are harmless
            reply = dispatch(*conn, *doc);
          } catch (const Error& e) {
            reply = error_reply(kind_name(e.kind()), e.what());
          } catch (const json::exception& e) {
            // A field of the wrong type that dispatch read without checking it first.
            reply = error_reply(kind_name(Errc::usage), std::string("malformed request: ") + e.what());
          } catch (const std::exception& e) {
            reply = error_reply(kind_name(Errc::internal), e.what());
          }
          conn->reader.drop_fds();  // descriptors belong to the request they came with
          send_line(conn->sock.get(), reply);
          deadline = Clock::now() + cfg_.request_timeout;
        }
        if (conn->reader.over_limit()) {
          send_line(conn->sock.get(),
                    error_reply(kind_name(Errc::usage),
                                "request longer than " + std::to_string(cfg_.max_request_bytes) +
                                    " bytes"));
          open = false;
        }
        if (fds[1].revents == 0) {
          pollfd e{conn->sink->fd(), POLLIN, 0};
          if (::poll(&e, 1, 0) > 0) conn->flush_events();
        }
      }
    } catch (const Error& e) {
      log->debug("client pid {}: {}", conn->peer.pid, e.what());
    }
  if (conn)
    for (auto& [id, ticket] : conn->on_close) {
      log->info("job {} pid -: checkpoint requested from inside the job (pid {}), ticket {}", id,
                conn->peer.pid, ticket);
      try {
        sup_.checkpoint(id, [path = ticket](const json& reply) { write_ticket(path, reply); });
      } catch (const Error& e) {
        write_ticket(ticket, error_reply(kind_name(e.kind()), e.what()));
      }
    }
  {
    std::lock_guard lock(mu_);
    std::erase(open_socks_, raw);
    conn.reset();
    --connections_;
    if (--per_user_[counted_uid] == 0) per_user_.erase(counted_uid);
  }
  cv_.notify_all();
}

std::string Server::new_ticket() {
  std::string dir = tickets_dir();
  // Searchable, not listable: a ticket is found by the name only its requester was told.
  if (::mkdir(dir.c_str(), 0711) != 0 && errno != EEXIST) throw_errno("cannot create " + dir);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid())
    fail(Errc::io, dir + " is not a directory of the agent's");
  ::chmod(dir.c_str(), 0711);
  // Tickets are read within moments of their checkpoint; those older than a day go.
  if (DIR* d = ::opendir(dir.c_str())) {
    time_t now = ::time(nullptr);
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::string p = dir + "/" + e->d_name;
      if (::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode) && now - st.st_mtime > 86400)
        ::unlink(p.c_str());
    }
    ::closedir(d);
  }
  unsigned char rnd[16];
  if (::getrandom(rnd, sizeof rnd, 0) != static_cast<ssize_t>(sizeof rnd))
    throw_errno("getrandom", errno, Errc::kernel);
  std::string name;
  for (unsigned char c : rnd) {
    name += "0123456789abcdef"[c >> 4];
    name += "0123456789abcdef"[c & 15];
  }
  return dir + "/" + name;
}

// ---- requests -----------------------------------------------------------------------------------

json Server::dispatch(Connection& conn, const json& req) {
  auto log = log::get("agent.server");
  const Peer& peer = conn.peer;
  std::string op = str_field(req, "op");

  // The job a request is about, if the requester may act on it.
  auto own_job = [&](const json& r) {
    // Root (the Slurm plugin) may name a job by its Slurm id: the running job registered for it.
    if (peer.root() && r.contains("slurm_job") && !r.contains("job")) {
      if (!r["slurm_job"].is_number_unsigned()) fail(Errc::usage, "'slurm_job' must be a Slurm job id");
      return sup_.find_scheduler_job("slurm:" + std::to_string(r["slurm_job"].get<uint64_t>()));
    }
    std::string id = sup_.resolve(job_ref(r), peer.uid);
    if (!peer.root() && sup_.owner(id) != peer.uid)
      fail(Errc::refused, "job " + id + " belongs to another user");
    return id;
  };
  // Waits for a reply the supervisor gives from its threads.
  auto wait_for = [&](auto start) {
    auto promise = std::make_shared<std::promise<json>>();
    auto future = promise->get_future();
    start([promise](const json& reply) {
      try {
        promise->set_value(reply);
      } catch (const std::future_error&) {
      }
    });
    return future.get();
  };

  if (op == "hello") {
    return {{"ok", true}, {"crestd", CREST_VERSION}, {"protocol", kProtocolVersion},
            {"uid", peer.uid}, {"gid", peer.gid}, {"pid", ::getpid()}};
  }
  if (op == "jobs") {
    auto rows = sup_.list(peer.root() ? std::nullopt : std::optional<uid_t>(peer.uid));
    return {{"ok", true}, {"jobs", rows}};
  }
  if (op == "status") {
    std::string id = own_job(req);
    return {{"ok", true}, {"job", sup_.status(id)}};
  }
  if (op == "checkpoint" && req.contains("ticket")) {
    if (!req["ticket"].is_boolean()) fail(Errc::usage, "'ticket' must be true or false");
  }
  if (op == "checkpoint" && req.contains("ticket") && req["ticket"].get<bool>()) {
    // From a program of the job itself (libcrest-mpi): the checkpoint starts once this
    // connection is closed, and its result is the ticket's symlink (write_ticket). Without
    // "job", the job whose tree holds the requester.
    std::string id;
    if (req.contains("job")) {
      id = own_job(req);
    } else {
      auto found = sup_.job_of(peer.pid);
      if (!found)
        fail(Errc::not_found, "process " + std::to_string(peer.pid) + " is in no job of this agent");
      id = *found;
      if (!peer.root() && sup_.owner(id) != peer.uid)
        fail(Errc::refused, "job " + id + " belongs to another user");
    }
    std::string ticket = new_ticket();
    conn.on_close.emplace_back(id, ticket);
    return {{"ok", true}, {"job", id}, {"ticket", ticket}};
  }
  if (op == "checkpoint") {
    std::string id = own_job(req);
    if (!bool_field(req, "wait", true)) {
      // Nobody waits: nothing is kept for this request (a flood of them queues one checkpoint).
      bool joined = sup_.checkpoint(id, nullptr);
      return {{"ok", true}, {"job", id}, {"queued", true}, {"coalesced", joined}};
    }
    log->info("job {} pid -: checkpoint requested by uid {} (pid {})", id, peer.uid, peer.pid);
    return wait_for([&](Supervisor::Done done) { sup_.checkpoint(id, std::move(done)); });
  }
  if (op == "pause" || op == "resume") {
    std::string id = own_job(req);
    sup_.set_paused(id, op == "pause");
    return {{"ok", true}, {"job", sup_.status(id)}};
  }
  if (op == "forget") {
    std::string id = own_job(req);
    bool remove = bool_field(req, "remove_images", false);
    sup_.forget(id, remove);
    return {{"ok", true}, {"job", id}, {"removed_images", remove}};
  }
  if (op == "signal") {
    std::string id = own_job(req);
    if (!req.contains("signal")) fail(Errc::usage, "missing 'signal'");
    sup_.send_signal(id, parse_signal(req["signal"]));
    return {{"ok", true}, {"job", id}};
  }
  if (op == "restore") {
    std::string id = own_job(req);
    log->info("job {} pid -: restore requested by uid {} (pid {})", id, peer.uid, peer.pid);
    return wait_for([&](Supervisor::Done done) { sup_.restore(id, std::move(done)); });
  }
  if (op == "watch") {
    std::string id = own_job(req);
    auto status = sup_.status(id);
    conn.watch(id);
    return {{"ok", true}, {"job", status}};
  }
  if (op == "register") {
    pid_t pid = pid_field(req);
    if (!peer.root()) check_tree_owner(pid, peer.uid);
    JobRequest jr;
    jr.name = str_field(req, "name", false);
    jr.uid = peer.root() ? id_field(req, "uid", peer.uid) : peer.uid;
    jr.gid = peer.root() ? id_field(req, "gid", peer.gid) : peer.gid;
    if (peer.root() && !req.contains("uid")) {
      // Root registering someone's job: the images go to the job's owner.
      try {
        auto ids = proc::status_numbers(proc::status(pid), "Uid");
        auto gids = proc::status_numbers(proc::status(pid), "Gid");
        if (!ids.empty()) jr.uid = static_cast<uid_t>(ids[0]);
        if (!gids.empty()) jr.gid = static_cast<gid_t>(gids[0]);
      } catch (const Error&) {
      }
    }
    jr.dir = str_field(req, "dir", false);
    if (!jr.dir.empty()) check_user_dir(jr.dir, peer);
    jr.policy = policy_from(req, cfg_.defaults);
    if (req.contains("slurm_job")) {
      // Set by the Slurm plugin, which runs as root in slurmstepd; a user may not label a tree
      // of theirs as some Slurm job.
      if (!req["slurm_job"].is_number_unsigned() || req["slurm_job"].get<uint64_t>() == 0 ||
          req["slurm_job"].get<uint64_t>() > 0xffffffffu)
        fail(Errc::usage, "'slurm_job' must be a Slurm job id");
      if (!peer.root()) fail(Errc::refused, "only root (the Slurm plugin) may give 'slurm_job'");
      jr.scheduler_job = "slurm:" + std::to_string(req["slurm_job"].get<uint64_t>());
      // The job's end (its time limit), in seconds since the epoch (0: none yet): crestd takes
      // a last checkpoint before it and requeues the job, and asks Slurm again for it while
      // the job runs (scontrol update may change the limit).
      if (req.contains("end_time")) {
        // Up to the year 2286 (10^10 s): nanoseconds of it fit in 64 bits.
        jr.end_time_ns = int_field(req, "end_time", 0, 9999999999, "seconds since the epoch") *
                         1000000000;
        jr.follow_time_limit = true;
      }
    }
    std::string id = sup_.adopt(std::move(jr), pid);
    if (bool_field(req, "watch", false)) conn.watch(id);
    return {{"ok", true}, {"job", sup_.status(id)}};
  }
  if (op == "snapshot") {
    // crest snapshot (cron): checkpoint a tree into a directory, keeping its dirty-page tracker
    // here between runs. A tree that is not a job yet becomes one, with no timer, no automatic
    // restore, forgotten when it ends; its first checkpoint builds on the newest one already in
    // the directory.
    std::optional<unsigned> keep;
    if (req.contains("keep")) {
      if (!req["keep"].is_number_unsigned() || req["keep"].get<uint64_t>() < 1 ||
          req["keep"].get<uint64_t>() > 100000)
        fail(Errc::usage, "'keep' must be an integer from 1 to 100000");
      keep = req["keep"].get<unsigned>();
    }
    std::string dir = str_field(req, "dir", false);
    if (!dir.empty()) check_user_dir(dir, peer);
    std::string id;
    std::string what;
    if (req.contains("job")) {
      id = own_job(req);
      what = "job " + id;
    } else {
      if (!req.contains("pid") || !req["pid"].is_number_integer() || req["pid"].get<pid_t>() <= 1)
        fail(Errc::usage, "'pid' must be a process id");
      pid_t pid = req["pid"].get<pid_t>();
      what = "pid " + std::to_string(pid);
      auto found = sup_.job_of_pid(pid);
      if (!found) {
        if (dir.empty()) fail(Errc::usage, "a snapshot of a process needs 'dir'");
        if (!peer.root()) check_tree_owner(pid, peer.uid);
        JobRequest jr;
        jr.name = str_field(req, "name", false);
        jr.uid = peer.uid;
        jr.gid = peer.gid;
        if (peer.root()) {
          // Root snapshotting someone's tree: the images go to the tree's owner.
          try {
            auto ids = proc::status_numbers(proc::status(pid), "Uid");
            auto gids = proc::status_numbers(proc::status(pid), "Gid");
            if (!ids.empty()) jr.uid = static_cast<uid_t>(ids[0]);
            if (!gids.empty()) jr.gid = static_cast<gid_t>(gids[0]);
          } catch (const Error&) {
          }
        }
        jr.dir = dir;
        jr.policy = policy_from(req, cfg_.defaults);
        jr.policy.never = true;
        jr.policy.auto_interval = false;
        jr.policy.auto_restore = 0;
        jr.policy.full_every = 0;
        jr.policy.remove_images_on_success = false;
        jr.policy.compact_after = std::max(2u, jr.policy.keep);
        jr.transient = true;
        jr.chain_on_newest = true;
        try {
          id = sup_.adopt(std::move(jr), pid);
          log->info("job {} pid {}: adopted for snapshots by uid {} (pid {})", id, pid, peer.uid,
                    peer.pid);
        } catch (const Error& e) {
          // Another snapshot of the same tree adopted it meanwhile.
          if (e.kind() != Errc::busy || !(found = sup_.job_of_pid(pid))) throw;
        }
      }
      if (found) {
        id = *found;
        if (!peer.root() && sup_.owner(id) != peer.uid)
          fail(Errc::refused, "pid " + std::to_string(pid) + " is job " + id + " of another user");
      }
    }
    std::string job_dir = sup_.images_dir(id);
    if (!dir.empty() && !same_dir(dir, job_dir))
      fail(Errc::refused, what + " is crestd job " + id + ", whose images go to " + job_dir +
                              ", not " + dir + " (snapshot it into " + job_dir + ")");
    return wait_for([&](Supervisor::Done done) { sup_.snapshot(id, keep, std::move(done)); });
  }
  if (op == "metrics") {
    return {{"ok", true},
            {"text", sup_.metrics_text(peer.root() ? std::nullopt : std::optional<uid_t>(peer.uid))}};
  }
  if (op == "run") {
    LaunchSpec spec;
    spec.argv = string_list(req, "argv", true);
    spec.env = string_list(req, "env", false);
    spec.cwd = str_field(req, "cwd", false);
    if (!spec.cwd.empty() && spec.cwd[0] != '/') fail(Errc::usage, "'cwd' must be absolute");
    if (conn.reader.fds_pending() != 3)
      fail(Errc::usage, "run needs the job's stdin, stdout and stderr attached (SCM_RIGHTS), got " +
                            std::to_string(conn.reader.fds_pending()) + " descriptors");
    auto fds = conn.reader.take_fds(3);
    std::array<UniqueFd, 3> stdio{std::move(fds[0]), std::move(fds[1]), std::move(fds[2])};
    // The job runs as the requester, whoever that is.
    spec.creds = Credentials{peer.uid, peer.gid, peer.groups};
    spec.new_session = true;
    spec.init_path = cfg_.init_path;
    JobRequest jr;
    jr.name = str_field(req, "name", false);
    jr.uid = peer.uid;
    jr.gid = peer.gid;
    jr.dir = str_field(req, "dir", false);
    if (!jr.dir.empty()) check_user_dir(jr.dir, peer);
    jr.policy = policy_from(req, cfg_.defaults);
    jr.transient = bool_field(req, "transient", true);
    // Subscribed before the job starts, so that even an immediate end is reported. The
    // supervisor drops the listener when the job ends; a client that leaves earlier only makes
    // it a no-op (the sink is closed).
    Supervisor::Listener listener;
    if (bool_field(req, "watch", true)) listener = conn.listener();
    std::string id = sup_.launch(std::move(jr), std::move(spec), std::move(stdio), listener);
    log->info("job {} pid -: launched for uid {} (client pid {})", id, peer.uid, peer.pid);
    json status;
    try {
      status = sup_.status(id);
    } catch (const Error&) {
      status = {{"id", id}, {"state", "ended"}};  // a transient job that has already ended
    }
    return {{"ok", true}, {"job", status}};
  }
  fail(Errc::usage, "unknown op '" + op + "' (hello, jobs, status, run, register, checkpoint, "
                    "pause, resume, forget, signal, restore, watch, snapshot, metrics)");
}

}  // namespace crest::agent
