// TCP sockets, IPv4 and IPv6. Dump and restore side by side.
//
// Dump. Listeners and sockets not connected: their names and options. A connection: through
// our own copy of the descriptor, put in repair mode (TCP_REPAIR, CAP_NET_ADMIN) for the few
// microseconds it takes to read it and taken out without a window probe, its sequence numbers
// (TCP_QUEUE_SEQ of each queue), both queues (peeked: the send queue's bytes sent and not yet
// acknowledged, then those never sent; the receive queue's bytes not read), the options
// negotiated (MSS, window scales, SACK, timestamps), the timestamp clock and the windows. A FIN
// sent or received is part of the sequence numbers; the state tells which. The kernel moves
// bytes between frozen tasks' sockets all the while, so every send queue is read before any
// receive queue: a byte is then in its sender's copy, or its receiver's, or both (sent twice,
// dropped once by its sequence number), never in neither. Both ends of a connection are in the
// tree, or with --tcp-established its peer is outside: such connections are locked first (an
// nftables table of the checkpoint's own drops their packets both ways, core/netlock.h), so that
// nothing moves on them while they are read; a dump that kills the tree puts them in repair mode
// before the kill (they end without a packet) and leaves the lock in place for the restore.
// A listener's waiting connections (made by the kernel, not accepted: no process holds them)
// are found by inet_diag and matched to their clients, which must be in the tree; their accept
// order, which only accept() shows, is learnt by accepting them through our copy of the
// listener and having each client drop its connection and connect again from the same address
// and port, in that order (what a restore does too). The clients are not read by repair.
//
// Restore, once every task exists (a deferred kind): each socket is made by a task that holds
// it (so that it is charged to the task's cgroup), then worked on through our copy. Listeners
// bind and listen again with their backlog first. A connection is made in repair mode: sequence numbers, bind and connect (which send nothing),
// options, the queues written back, the windows; only when every connection of the tree exists
// does any leave repair mode (a connection's first packet would otherwise meet no socket and be
// answered by a reset). The network lock of the checkpoint, if any, is removed then, just before
// they leave repair mode: the peers outside send again what was dropped, and are answered. Then the bytes never sent are sent, FINs are sent again with
// shutdown(SHUT_WR), and crest waits until every socket that had received a FIN has it again.
// Before any connection, the clients of a listener's waiting connections connect to it again,
// one after the other, from their own address and port, with the listener's options set first
// (but TCP_DEFER_ACCEPT after). Last, options and flags.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include "core/fds/fd_kind.h"
#include "core/fds/in_task.h"
#include "core/fds/inet.h"
#include "core/fds/inet_diag.h"
#include "core/fds/peer_process.h"
#include "core/fds/sockopt.h"
#include "core/netlock.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

using schema::SocketRecord;
using schema::SocketState;
using schema::TcpRecord;

constexpr int kRepairOffNoWindowProbe = -1;  // TCP_REPAIR_OFF_NO_WP

// IPPROTO_TCP options a program sets. Not saved: TCP_QUICKACK (the kernel's own passing
// state), and for a connection TCP_MAXSEG and TCP_WINDOW_CLAMP (negotiated and computed for
// the connection, made again by repair).
constexpr int kTcpOptions[] = {TCP_NODELAY,  TCP_CORK,       TCP_KEEPIDLE,     TCP_KEEPINTVL,
                               TCP_KEEPCNT,  TCP_SYNCNT,     TCP_LINGER2,      TCP_DEFER_ACCEPT,
                               TCP_USER_TIMEOUT, TCP_NOTSENT_LOWAT, TCP_THIN_LINEAR_TIMEOUTS,
                               TCP_FASTOPEN, TCP_FASTOPEN_CONNECT, TCP_FASTOPEN_NO_COOKIE,
                               TCP_SAVE_SYN, TCP_TX_DELAY,   TCP_INQ};
constexpr int kTcpUnconnectedOptions[] = {TCP_MAXSEG, TCP_WINDOW_CLAMP};

const char* state_name(int s) {
  static const char* names[] = {"?",          "ESTABLISHED", "SYN_SENT",  "SYN_RECV",
                                "FIN_WAIT1",  "FIN_WAIT2",   "TIME_WAIT", "CLOSE",
                                "CLOSE_WAIT", "LAST_ACK",    "LISTEN",    "CLOSING"};
  return s >= 0 && s < 12 ? names[s] : "?";
}

bool fin_sent_in(int state) {
  return state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING || state == TCP_LAST_ACK;
}
bool fin_received_in(int state) {
  return state == TCP_CLOSE_WAIT || state == TCP_CLOSING || state == TCP_LAST_ACK;
}

int set_int(int fd, int level, int name, int v) { return ::setsockopt(fd, level, name, &v, sizeof v); }

// Repair mode on our copy of a connection for the while; left without a window probe, so the
// peer sees nothing. Leaving repair mode clears SO_REUSEADDR (the kernel resets sk_reuse): it
// is set back as it was.
class Repair {
 public:
  explicit Repair(int fd) : fd_(fd) {
    bool ok = false;
    reuse_ = static_cast<int>(get_int_option(fd_, SOL_SOCKET, SO_REUSEADDR, ok));
    if (!ok || set_int(fd_, IPPROTO_TCP, TCP_REPAIR, 1) != 0) fd_ = -1;
  }
  Repair(const Repair&) = delete;
  Repair& operator=(const Repair&) = delete;
  ~Repair() {
    if (fd_ < 0) return;
    set_int(fd_, IPPROTO_TCP, TCP_REPAIR, kRepairOffNoWindowProbe);
    set_int(fd_, SOL_SOCKET, SO_REUSEADDR, reuse_);
  }
  bool on() const { return fd_ >= 0; }

 private:
  int fd_;
  int reuse_ = 0;
};

// One queue of a connection in repair mode: its sequence number and its bytes.
bool read_queue(int s, int queue, uint32_t& seq, std::vector<uint8_t>& bytes, size_t size) {
  if (set_int(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, queue) != 0) return false;
  socklen_t len = sizeof seq;
  if (::getsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, &len) != 0) return false;
  bytes.resize(size);
  if (size == 0) return true;
  ssize_t n = ::recv(s, bytes.data(), size, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0) return false;
  bytes.resize(static_cast<size_t>(n));
  return true;
}

// "TCP_NODELAY", or "option 12 of level 1" for those without a name here.
std::string option_printable(int64_t level, int64_t name) {
  static const std::map<std::pair<int64_t, int64_t>, const char*> names = {
      {{IPPROTO_TCP, TCP_NODELAY}, "TCP_NODELAY"},       {{IPPROTO_TCP, TCP_CORK}, "TCP_CORK"},
      {{IPPROTO_TCP, TCP_KEEPIDLE}, "TCP_KEEPIDLE"},     {{IPPROTO_TCP, TCP_KEEPINTVL}, "TCP_KEEPINTVL"},
      {{IPPROTO_TCP, TCP_KEEPCNT}, "TCP_KEEPCNT"},       {{IPPROTO_TCP, TCP_SYNCNT}, "TCP_SYNCNT"},
      {{IPPROTO_TCP, TCP_LINGER2}, "TCP_LINGER2"},       {{IPPROTO_TCP, TCP_USER_TIMEOUT}, "TCP_USER_TIMEOUT"},
      {{IPPROTO_TCP, TCP_NOTSENT_LOWAT}, "TCP_NOTSENT_LOWAT"}, {{IPPROTO_TCP, TCP_SAVE_SYN}, "TCP_SAVE_SYN"},
      {{IPPROTO_TCP, TCP_INQ}, "TCP_INQ"},               {{SOL_SOCKET, SO_KEEPALIVE}, "SO_KEEPALIVE"},
      {{SOL_SOCKET, SO_PRIORITY}, "SO_PRIORITY"},         {{SOL_SOCKET, SO_RCVLOWAT}, "SO_RCVLOWAT"},
      {{SOL_SOCKET, SO_MARK}, "SO_MARK"},                 {{SOL_SOCKET, kOptLinger}, "SO_LINGER"},
      {{SOL_SOCKET, SO_OOBINLINE}, "SO_OOBINLINE"},       {{SOL_SOCKET, SO_REUSEADDR}, "SO_REUSEADDR"},
      {{IPPROTO_IP, IP_TOS}, "IP_TOS"},                   {{IPPROTO_IP, IP_TTL}, "IP_TTL"},
      {{IPPROTO_IPV6, IPV6_TCLASS}, "IPV6_TCLASS"},       {{IPPROTO_IPV6, IPV6_UNICAST_HOPS}, "IPV6_UNICAST_HOPS"}};
  auto it = names.find({level, name});
  return it != names.end() ? it->second
                           : "option " + std::to_string(name) + " of level " + std::to_string(level);
}

// An end as an IPv6 address (IPv4 mapped) and a port, so that ends compare across families (a
// dual-stack listener's connections from IPv4 show mapped addresses).
using EndKey = std::pair<std::array<uint8_t, 16>, uint16_t>;
EndKey end_key(const std::vector<uint8_t>& addr) {
  EndKey k{};
  if (addr.size() >= sizeof(sockaddr_in6) && reinterpret_cast<const sockaddr*>(addr.data())->sa_family == AF_INET6) {
    sockaddr_in6 a;
    std::memcpy(&a, addr.data(), sizeof a);
    std::memcpy(k.first.data(), &a.sin6_addr, 16);
  } else if (addr.size() >= sizeof(sockaddr_in)) {
    sockaddr_in a;
    std::memcpy(&a, addr.data(), sizeof a);
    k.first[10] = k.first[11] = 0xff;
    std::memcpy(k.first.data() + 12, &a.sin_addr, 4);
  }
  k.second = inet_port(addr);
  return k;
}

// Whether a connection's local end is on a listener's: its port, and its address unless the
// listener's is a wildcard.
bool of_listener(const std::vector<uint8_t>& listener, const std::vector<uint8_t>& local) {
  const EndKey l = end_key(listener), c = end_key(local);
  static const std::array<uint8_t, 16> any6{}, any4{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0};
  return l.second == c.second && (l.first == any6 || l.first == any4 || l.first == c.first);
}

// A socket's file flags for the while: without O_ASYNC (no SIGIO reaches the tree from what crest
// does), with O_NONBLOCK if asked; as they were after.
class QuietSocket {
 public:
  QuietSocket(int fd, bool nonblock) : fd_(fd), flags_(::fcntl(fd, F_GETFL)) {
    if (flags_ >= 0) ::fcntl(fd_, F_SETFL, (flags_ & ~O_ASYNC) | (nonblock ? O_NONBLOCK : 0));
  }
  QuietSocket(const QuietSocket&) = delete;
  QuietSocket& operator=(const QuietSocket&) = delete;
  ~QuietSocket() {
    if (flags_ >= 0) ::fcntl(fd_, F_SETFL, flags_);
  }

 private:
  int fd_, flags_;
};

// A listener's TCP_DEFER_ACCEPT off for the while (connections made meanwhile enter its queue at
// once), as it was after.
class DeferAcceptOff {
 public:
  DeferAcceptOff(int fd, const std::string& what) : fd_(fd) {
    bool ok = false;
    secs_ = static_cast<int>(get_int_option(fd_, IPPROTO_TCP, TCP_DEFER_ACCEPT, ok));
    if (ok && secs_ > 0 && set_int(fd_, IPPROTO_TCP, TCP_DEFER_ACCEPT, 0) != 0)
      throw_errno(what + ": TCP_DEFER_ACCEPT off", errno, Errc::kernel);
    if (!ok) secs_ = 0;
  }
  DeferAcceptOff(const DeferAcceptOff&) = delete;
  DeferAcceptOff& operator=(const DeferAcceptOff&) = delete;
  ~DeferAcceptOff() {
    if (secs_ > 0) set_int(fd_, IPPROTO_TCP, TCP_DEFER_ACCEPT, secs_);
  }

 private:
  int fd_;
  int secs_ = 0;
};

// The address a socket binds to before it connects from `name`: an IPv6 socket bound to an
// address of its own becomes IPv6-only, so one that was not is bound to the port alone and gets
// its address from the route, as connect() gave it.
std::vector<uint8_t> bind_name(const SocketRecord& r) {
  std::vector<uint8_t> local = r.name;
  if (r.family == AF_INET6 && saved_option(r.options, IPPROTO_IPV6, IPV6_V6ONLY, 0) == 0 &&
      local.size() >= sizeof(sockaddr_in6)) {
    sockaddr_in6 a;
    std::memcpy(&a, local.data(), sizeof a);
    a.sin6_addr = in6addr_any;
    std::memcpy(local.data(), &a, sizeof a);
  }
  return local;
}

// A waiting connection's client connects again to its listener, from its own address and port
// (bound first, unless it still is), through `c` (O_NONBLOCK for the while); done once the
// handshake is. At restore, sockets the job's last life left on its port (a time-wait, an orphan)
// are ended if they are in the way.
void connect_again(int c, const SocketRecord& r, const std::string& what, bool free_leftovers) {
  const std::vector<uint8_t> local = bind_name(r);
  auto bind_it = [&] {
    return ::bind(c, reinterpret_cast<const sockaddr*>(local.data()), static_cast<socklen_t>(local.size())) == 0;
  };
  // Bound in repair mode, which takes the port whatever shares it: a port connect() chose may be
  // another connection's too (even of another family, for a dual-stack socket bound to the port
  // alone), which a plain bind would run into. EINVAL: still bound (bound by the program, a
  // disconnect keeps the port); a port the kernel chose was released, though getsockname still
  // shows it.
  {
    Repair repair(c);
    if (!repair.on()) throw_errno(what + ": repair mode to bind it (TCP_REPAIR, needs CAP_NET_ADMIN)", errno, Errc::kernel);
    if (!bind_it() && errno != EINVAL) throw_errno(what + ": bind to its port again", errno, Errc::kernel);
  }
  auto connect_it = [&] {
    return ::connect(c, reinterpret_cast<const sockaddr*>(r.peer_name.data()),
                     static_cast<socklen_t>(r.peer_name.size())) == 0 || errno == EINPROGRESS;
  };
  if (!connect_it() &&
      !(free_leftovers && errno == EADDRNOTAVAIL && end_leftover_connections(r.family, inet_port(r.name)) > 0 && connect_it()))
    throw_errno(what + ": connecting again to " + inet_printable(r.peer_name), errno, Errc::kernel);
  pollfd pf{c, POLLOUT, 0};
  int n;
  do n = ::poll(&pf, 1, 5000);
  while (n < 0 && errno == EINTR);
  bool ok = false;
  const int err = static_cast<int>(get_int_option(c, SOL_SOCKET, SO_ERROR, ok));
  if (n != 1 || err != 0)
    throw_errno(what + ": connecting again to " + inet_printable(r.peer_name), n != 1 ? ETIMEDOUT : err, Errc::kernel);
  if (inet_name(c, false) != r.name || inet_name(c, true) != r.peer_name)
    fail(Errc::kernel, what + ": connected again as " + inet_printable(inet_name(c, false)) + " to " +
                           inet_printable(inet_name(c, true)) + ", not as before");
}

// Waits (up to 5 s) until `n` connections wait in listener `l`'s queue: the handshake's last ACK
// has reached it.
void wait_queued(int l, uint32_t n, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    tcp_info ti{};
    socklen_t len = sizeof ti;
    if (::getsockopt(l, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) throw_errno(what + ": TCP_INFO of its listener", errno, Errc::kernel);
    if (ti.tcpi_unacked == n) return;
    if (ti.tcpi_unacked > n || std::chrono::steady_clock::now() > deadline)
      fail(Errc::kernel, what + ": its listener's queue holds " + std::to_string(ti.tcpi_unacked) +
                             " connections, expected " + std::to_string(n));
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

class TcpSocketKind : public FdKind {
 public:
  const char* name() const override { return "TCP socket"; }
  bool claims(const FdProbe& p) const override {
    return (p.sock_domain == AF_INET || p.sock_domain == AF_INET6) && p.sock_type == SOCK_STREAM &&
           p.sock_protocol == IPPROTO_TCP;
  }

  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::tcp_socket);
    UniqueFd s = proc::copy_fd(probe.pidfd, probe.fd);
    tcp_info ti{};
    socklen_t tlen = sizeof ti;
    if (!s || ::getsockopt(s.get(), IPPROTO_TCP, TCP_INFO, &ti, &tlen) != 0) {
      ctx.refuse(probe.where + ": cannot read its TCP state: " + std::strerror(errno));
      return false;
    }
    SocketRecord r;
    r.file_id = static_cast<int64_t>(ctx.meta.files.size());
    r.family = probe.sock_domain;
    r.type = SOCK_STREAM;
    r.protocol = IPPROTO_TCP;
    r.ino = probe.st.st_ino;
    r.name = inet_name(s.get(), false);
    r.peer_name = inet_name(s.get(), true);
    const int state = ti.tcpi_state;
    const std::string where = probe.where + " (TCP socket " + inet_printable(r.name) +
                              (r.peer_name.empty() ? "" : " to " + inet_printable(r.peer_name)) + ", " +
                              state_name(state) + ")";
    pollfd pf{s.get(), POLLIN | POLLRDHUP, 0};
    ::poll(&pf, 1, 0);
    if (pf.revents & POLLERR) {
      ctx.refuse(where + ": an error is pending on it (SO_ERROR), which cannot be read without "
                 "clearing it");
      return false;
    }
    std::string refusal = save_inet_options(s.get(), r.family, SOCK_STREAM, r.options);
    if (!refusal.empty()) {
      ctx.refuse(where + ": " + refusal);
      return false;
    }
    save_int_options(s.get(), IPPROTO_TCP, kTcpOptions, r.options);
    save_socket_options(s.get(), r.options);
    char cc[64] = {};
    socklen_t cclen = sizeof cc;
    if (::getsockopt(s.get(), IPPROTO_TCP, TCP_CONGESTION, cc, &cclen) == 0) r.congestion = cc;
    char ulp[64] = {};
    socklen_t ulplen = sizeof ulp;
    if (::getsockopt(s.get(), IPPROTO_TCP, TCP_ULP, ulp, &ulplen) == 0 && ulp[0]) {
      ctx.refuse(where + ": an upper-layer protocol (TCP_ULP " + ulp + ") is attached; not supported yet");
      return false;
    }
    socklen_t flen = 0;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_GET_FILTER, nullptr, &flen) == 0 && flen > 0) {
      ctx.refuse(where + ": a socket filter is attached (SO_ATTACH_FILTER); not supported yet");
      return false;
    }

    switch (state) {
      case TCP_LISTEN:
        r.state = static_cast<uint32_t>(SocketState::listening);
        r.backlog = ti.tcpi_sacked;
        save_int_options(s.get(), IPPROTO_TCP, kTcpUnconnectedOptions, r.options);
        // Connections waiting in its queue are found and matched to their clients once every
        // socket of the tree is known (finish_dump).
        if (ti.tcpi_unacked > 0) pending(ctx).listeners.push_back({std::move(s), r.file_id, where, ti.tcpi_unacked});
        break;
      case TCP_CLOSE:
        if (pf.revents & POLLRDHUP) {
          ctx.refuse(where + ": a connection that has ended with the socket still open; not "
                     "supported yet");
          return false;
        }
        r.state = static_cast<uint32_t>(SocketState::unconnected);
        save_int_options(s.get(), IPPROTO_TCP, kTcpUnconnectedOptions, r.options);
        break;
      case TCP_ESTABLISHED:
      case TCP_FIN_WAIT1:
      case TCP_FIN_WAIT2:
      case TCP_CLOSE_WAIT:
      case TCP_LAST_ACK:
      case TCP_CLOSING:
        r.state = static_cast<uint32_t>(SocketState::connected);
        if (!dump_connection(ctx, where, std::move(s), ti, r)) return false;
        break;
      case TCP_SYN_SENT:
        ctx.refuse(where + ": connecting, its SYN not answered yet (SYN_SENT; as when the "
                   "listener's queue is full); not supported yet");
        return false;
      default:
        ctx.refuse(where + ": a TCP socket in state " + state_name(state) + "; not supported yet");
        return false;
    }
    ctx.meta.sockets.push_back(std::move(r));
    return true;
  }

  // Every connection's peer must be a connection of the tree, the other way round, a
  // connection waiting in a listener of the tree, or with --tcp-established a peer outside it:
  // those connections are locked (netlock.h) before any queue is read, so that nothing moves on
  // them until the dump is over. Then both passes, and last the waiting connections' order.
  void finish_dump(DumpContext& ctx) const override {
    auto it = ctx.kind_state.find(&tcp_socket_kind());
    Pending* pending = it == ctx.kind_state.end() ? nullptr : static_cast<Pending*>(it->second.get());
    if (pending) find_waiting(ctx, *pending);
    std::map<std::pair<std::vector<uint8_t>, std::vector<uint8_t>>, SocketRecord*> by_ends;
    for (auto& r : ctx.meta.sockets)
      if (r.protocol == IPPROTO_TCP && static_cast<SocketState>(r.state) == SocketState::connected &&
          !(pending && pending->waiting_clients.count(r.file_id)))
        by_ends[{r.name, r.peer_name}] = &r;
    std::set<int64_t> external;
    std::vector<netlock::Connection> to_lock;
    // Who holds the far end of each connection to the outside that stays on this host (a
    // loopback peer): named in its refusal, and slurmstepd (the PMIx server of ranks srun
    // started) refused whatever the options.
    std::vector<const SocketRecord*> outside;
    for (auto& [ends, r] : by_ends)
      if (by_ends.find({ends.second, ends.first}) == by_ends.end()) outside.push_back(r);
    const std::map<const SocketRecord*, PeerProcess> peers = loopback_peers(ctx, outside);
    for (auto& [ends, r] : by_ends) {
      auto peer = by_ends.find({ends.second, ends.first});
      if (peer != by_ends.end()) {
        r->peer_id = peer->second->file_id;
        continue;
      }
      PeerProcess far;
      if (auto it = peers.find(r); it != peers.end()) far = it->second;
      const std::string holder = holder_of(ctx, r->file_id);
      bool to_listener = false;  // the peer's port is a listener's of the tree
      for (auto& l : ctx.meta.sockets)
        if (l.protocol == IPPROTO_TCP && static_cast<SocketState>(l.state) == SocketState::listening &&
            inet_port(l.name) == inet_port(r->peer_name))
          to_listener = true;
      if (to_listener) {
        ctx.refuse(holder + " (TCP " + inet_printable(r->name) + "): connected to " +
                   inet_printable(r->peer_name) +
                   ", the port of a listener of the tree, whose end of it is neither a socket of "
                   "the tree nor a connection waiting in the listener's queue; not supported yet");
      } else if (std::string launcher = launcher_peer_reason(far); !launcher.empty()) {
        ctx.refuse(holder + " (TCP " + inet_printable(r->name) + "): connected to " +
                   inet_printable(r->peer_name) + ", which is not a socket of the tree" +
                   peer_label(far) + ": " + launcher);
      } else if (!ctx.tcp_established) {
        ctx.refuse(holder + " (TCP " + inet_printable(r->name) + "): connected to " +
                   inet_printable(r->peer_name) + ", which is not a socket of the tree" +
                   peer_label(far) + "; a connection to the outside is dumped only with "
                   "--tcp-established");
      } else {
        external.insert(r->file_id);
        to_lock.emplace_back(r->name, r->peer_name);
      }
    }
    if (!pending) return;
    for (auto& [s, row, where, file_id] : pending->connections)
      if (external.count(file_id)) ctx.meta.tcp[row].external = 1;
    if (!to_lock.empty() && !ctx.refused() && !ctx.net_lock_table.empty()) {
      try {
        ctx.net_lock.take(ctx.net_lock_table, to_lock);
        ctx.meta.info.net_lock = ctx.net_lock_table;
      } catch (const Error& e) {
        ctx.refuse(e.what());
      }
    }
    dump_sending(ctx, *pending);
    dump_receiving(ctx, *pending);
    // Our copies of the connections to the outside stay until the dump is over: a dump that
    // kills the tree puts them in repair mode first (core/dump.cpp), so that they end silently.
    for (auto& [s, row, where, file_id] : pending->connections)
      if (external.count(file_id)) ctx.external_tcp.push_back(std::move(s));
    // Only a dump that will be written learns the accept order (it changes the connections,
    // for an equal state; `crest check` leaves them); a waiting client has no TCP row: it
    // connects again. (`crest check` is the dump that may take no network lock.)
    if (!ctx.refused() && !ctx.net_lock_table.empty()) requeue_waiting(ctx, *pending);
    std::erase_if(ctx.meta.tcp, [&](const TcpRecord& t) { return pending->waiting_clients.count(t.file_id) > 0; });
    ctx.kind_state.erase(it);
  }

  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  bool deferred() const override { return true; }
  UniqueFd open_late(RestoreContext& ctx, const schema::FileRecord& f) const override;

  std::vector<std::string> restored() const override {
    return {"IPv4 and IPv6 listeners with their backlog; sockets bound or not",
            "connections waiting in a listener's queue whose clients are in the tree: each client "
            "connects again from its address and port, in the accept order (learnt at dump by "
            "accepting them and connecting them again the same way)",
            "connections with both ends in the tree, by TCP_REPAIR: sequence numbers, both queues "
            "(bytes not acknowledged and not sent), MSS, window scales, SACK, timestamps, windows",
            "with --tcp-established, connections to peers outside the tree the same way, their "
            "packets dropped by an nftables lock while frozen and until the restore",
            "FINs sent and received (FIN_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING), SHUT_RD",
            "IP, IPv6, TCP and SOL_SOCKET options, TCP_CONGESTION",
            "O_NONBLOCK, owner, F_SETSIG, O_ASYNC; the socket's owner and mode"};
  }
  std::vector<std::string> refused() const override {
    return {"a connection to a peer outside the tree without --tcp-established",
            "with it, one whose peer outside has ended its side (a FIN received)",
            "a connection waiting in a listener's queue that holds data its client sent, whose "
            "client is outside the tree, that is half-open (SYN_RECV) or ended by its client "
            "(CLOSE_WAIT); a waiting client with bytes unacknowledged, SHUT_RD, TCP_FASTOPEN_CONNECT "
            "or its MSS set before it connected (TCP_MAXSEG); connections waiting in a listener "
            "that shares its port with another listener of the tree",
            "a connection being made (SYN_SENT) or ended while open (CLOSE after a connection)",
            "urgent data (MSG_OOB)", "a pending error", "a socket filter", "TCP_ULP (kTLS)",
            "IP_OPTIONS"};
  }

 private:
  // Connections read in the first pass, kept for the second (finish_dump): our copy of each and
  // its row in ctx.meta.tcp.
  struct Pending {
    std::vector<std::tuple<UniqueFd, size_t, std::string, int64_t>> connections;  // copy, row, where, file
    // Listeners with connections waiting to be accepted: our copy, files row, where, how many.
    struct Listener {
      UniqueFd s;
      int64_t file_id;
      std::string where;
      uint32_t waiting;
      std::vector<int64_t> clients = {};  // the clients of its waiting connections, in no order
    };
    std::vector<Listener> listeners;
    // The clients of those connections: our copies, moved out of `connections`.
    std::map<int64_t, UniqueFd> waiting_clients;
  };
  static Pending& pending(DumpContext& ctx) {
    auto& state = ctx.kind_state[&tcp_socket_kind()];
    if (!state) state = std::make_shared<Pending>();
    return *static_cast<Pending*>(state.get());
  }

  // As each connection is met: what it negotiated, and our copy of it for finish_dump, which
  // reads the queues once it knows which connections reach outside the tree and has locked
  // those.
  static bool dump_connection(DumpContext& ctx, const std::string& where, UniqueFd s,
                              const tcp_info& ti, SocketRecord& r) {
    const int fd = s.get();
    char oob;
    if (::recv(fd, &oob, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT) >= 0) {
      ctx.refuse(where + ": urgent data (MSG_OOB) is pending; not supported yet");
      return false;
    }
    TcpRecord t;
    t.file_id = r.file_id;
    t.tcp_state = ti.tcpi_state;
    t.fin_sent = fin_sent_in(ti.tcpi_state);
    if (t.fin_sent) r.shutdown |= 2;
    t.options = ti.tcpi_options;
    t.snd_wscale = ti.tcpi_snd_wscale;
    t.rcv_wscale = ti.tcpi_rcv_wscale;
    pending(ctx).connections.emplace_back(std::move(s), ctx.meta.tcp.size(), where, r.file_id);
    ctx.meta.tcp.push_back(std::move(t));
    return true;
  }

  static SocketRecord* record(DumpContext& ctx, int64_t file_id) {
    for (auto& r : ctx.meta.sockets)
      if (r.file_id == file_id) return &r;
    return nullptr;
  }
  // "127.0.0.1:80" for an IPv4-mapped IPv6 address too, so that both ends of a connection
  // between an IPv4 and a dual-stack socket compare equal.
  static std::string canonical(const std::vector<uint8_t>& addr) {
    std::string s = inet_printable(addr);
    if (s.rfind("[::ffff:", 0) == 0 && s.find('.') != std::string::npos) {
      auto close = s.find("]:");
      if (close != std::string::npos) return s.substr(8, close - 8) + s.substr(close + 1);
    }
    return s;
  }
  static bool loopback(const std::string& canon) {
    return canon.rfind("127.", 0) == 0 || canon.rfind("[::1]:", 0) == 0;
  }
  // The processes outside the tree holding the far ends of these connections, for those whose
  // peer is on loopback (only those can be held on this host): one socket listing per family,
  // one scan of /proc. Ends not found are missing from the map.
  static std::map<const SocketRecord*, PeerProcess> loopback_peers(
      const DumpContext& ctx, const std::vector<const SocketRecord*>& conns) {
    std::map<const SocketRecord*, PeerProcess> out;
    std::map<std::pair<std::string, std::string>, const SocketRecord*> wanted;  // (far, near)
    for (const SocketRecord* r : conns) {
      std::string far = canonical(r->peer_name);
      if (loopback(far)) wanted[{far, canonical(r->name)}] = r;
    }
    if (wanted.empty()) return out;
    std::map<const SocketRecord*, uint64_t> inode_of;
    std::set<uint64_t> inodes;
    for (int family : {AF_INET, AF_INET6}) {
      std::vector<TcpDiagEntry> listed;
      try {
        listed = list_tcp_sockets(family, 1u << TCP_ESTABLISHED);
      } catch (const Error&) {
        continue;  // only names the peer: never a reason to fail
      }
      for (auto& e : listed) {
        auto it = wanted.find({canonical(e.local), canonical(e.remote)});
        if (it == wanted.end() || e.inode == 0) continue;
        inode_of[it->second] = e.inode;
        inodes.insert(e.inode);
      }
    }
    std::vector<pid_t> tree;
    for (auto& [host, recorded] : ctx.ns_pid) tree.push_back(host);
    auto holders = socket_holders(inodes, tree);
    for (auto& [r, inode] : inode_of)
      if (auto it = holders.find(inode); it != holders.end()) out[r] = it->second;
    return out;
  }

  static std::string holder_of(const DumpContext& ctx, int64_t file_id) {
    for (auto& fd : ctx.meta.fds)
      if (fd.file_id == file_id) return "process " + std::to_string(fd.pid) + ": fd " + std::to_string(fd.fd);
    return "a socket";
  }

  // The connections waiting in the tree's listeners. inet_diag lists them: connections on a
  // listener's port (and address) that no process holds (no inode), ESTABLISHED; half-open ones
  // (SYN_RECV) and ones their client ended (CLOSE_WAIT) are listed too, and refused. Each must
  // hold no data (what its client sent sits in the listener's end, which only accept() reads)
  // and have its client in the tree, ESTABLISHED with nothing unacknowledged; their number must
  // be the listener's queue length. Our copies of their clients move out of the connections
  // read by repair: they connect again instead.
  static void find_waiting(DumpContext& ctx, Pending& pending) {
    std::map<int, std::vector<TcpDiagEntry>> listed;
    const uint32_t states = (1u << TCP_ESTABLISHED) | (1u << TCP_SYN_RECV) | (1u << TCP_CLOSE_WAIT);
    for (auto& l : pending.listeners) {
      SocketRecord* lr = record(ctx, l.file_id);
      if (!lr) continue;
      bool shared = false;
      for (auto& o : ctx.meta.sockets)
        if (o.file_id != lr->file_id && o.protocol == IPPROTO_TCP && o.family == lr->family &&
            static_cast<SocketState>(o.state) == SocketState::listening && inet_port(o.name) == inet_port(lr->name))
          shared = true;
      if (shared) {
        ctx.refuse(l.where + ": connections wait in its queue and another listener of the tree listens "
                   "on its port too (SO_REUSEPORT, or another address): which queue holds which "
                   "connection cannot be told; not supported");
        continue;
      }
      if (!listed.count(lr->family)) {
        try {
          listed[lr->family] = list_tcp_sockets(lr->family, states);
        } catch (const Error& e) {
          ctx.refuse(l.where + ": cannot list the connections waiting in its queue: " + e.what());
          continue;
        }
      }
      uint32_t found = 0;
      for (auto& e : listed[lr->family]) {
        if (e.inode != 0 || !of_listener(lr->name, e.local)) continue;
        if (e.state != TCP_SYN_RECV) ++found;
        const std::string from = "the connection from " + inet_printable(e.remote) + " waiting in its queue";
        SocketRecord* client = nullptr;
        for (auto& c : ctx.meta.sockets)
          if (c.protocol == IPPROTO_TCP && static_cast<SocketState>(c.state) == SocketState::connected &&
              end_key(c.name) == end_key(e.remote) && end_key(c.peer_name) == end_key(e.local))
            client = &c;
        if (e.state == TCP_SYN_RECV) {
          ctx.refuse(l.where + ": " + from + " is half-open (SYN_RECV: its handshake is not "
                     "complete, as when the backlog is full or TCP_DEFER_ACCEPT waits for data); "
                     "not supported yet");
        } else if (e.state == TCP_CLOSE_WAIT) {
          ctx.refuse(l.where + ": " + from + " was ended by its client (a FIN received before "
                     "it was accepted, CLOSE_WAIT); not supported yet");
        } else if (e.rqueue > 0) {
          ctx.refuse(l.where + ": " + std::to_string(e.rqueue) + " bytes its client " +
                     inet_printable(e.remote) + " sent into a connection not accepted yet, which "
                     "only accept() can read, and a new connection would not hold them; not "
                     "supported");
        } else if (!client) {
          ctx.refuse(l.where + ": " + from + ": its client is not a socket of the tree; a waiting "
                     "connection is carried only with its client, by connecting again "
                     "(--tcp-established or not)");
        }
        if (!client) continue;
        auto conn = std::find_if(pending.connections.begin(), pending.connections.end(),
                                 [&](auto& c) { return std::get<3>(c) == client->file_id; });
        if (conn == pending.connections.end()) continue;
        const std::string cwhere = std::get<2>(*conn);
        UniqueFd copy = std::move(std::get<0>(*conn));
        pending.connections.erase(conn);
        tcp_info ti{};
        socklen_t tlen = sizeof ti;
        int outq = 0;
        pollfd pf{copy.get(), POLLRDHUP, 0};
        ::poll(&pf, 1, 0);
        if (::getsockopt(copy.get(), IPPROTO_TCP, TCP_INFO, &ti, &tlen) != 0 || ::ioctl(copy.get(), SIOCOUTQ, &outq) != 0) {
          ctx.refuse(cwhere + ": cannot read its state: " + std::strerror(errno));
        } else if (ti.tcpi_state != TCP_ESTABLISHED) {
          ctx.refuse(cwhere + ": its connection waits in the queue of a listener of the tree, and "
                     "it is " + state_name(ti.tcpi_state) + "; only an ESTABLISHED client connects "
                     "again");
        } else if (outq > 0) {
          ctx.refuse(cwhere + ": " + std::to_string(outq) + " bytes it sent into a connection not "
                     "accepted yet are not acknowledged; not supported");
        } else if (pf.revents & POLLRDHUP) {
          ctx.refuse(cwhere + ": shut down for reading (SHUT_RD) while its connection waits to be "
                     "accepted; not supported yet");
        } else if (e.has_info && ti.tcpi_advmss < e.info.tcpi_advmss) {
          // Its own MSS is below what its listener's end has for the same route: a TCP_MAXSEG
          // set before it connected, which a connected socket does not show and a disconnect
          // clears.
          ctx.refuse(cwhere + ": its MSS (" + std::to_string(ti.tcpi_advmss) + ") is below its "
                     "route's (" + std::to_string(e.info.tcpi_advmss) + " at the listener's end): "
                     "TCP_MAXSEG set before it connected, which connecting again would lose; not "
                     "supported");
        } else if (saved_option(client->options, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 0) != 0) {
          // It would put the new handshake off until the program writes, and the kernel takes it
          // only on a socket not connected.
          ctx.refuse(cwhere + ": TCP_FASTOPEN_CONNECT is set on it while its connection waits to be "
                     "accepted; not supported yet");
        }
        l.clients.push_back(client->file_id);
        pending.waiting_clients[client->file_id] = std::move(copy);
      }
      if (found != l.waiting)
        ctx.refuse(l.where + ": " + std::to_string(l.waiting) + " connection" + (l.waiting == 1 ? " waits" : "s wait") +
                   " in its queue (tcpi_unacked), crest found " + std::to_string(found) +
                   " on its port that no process holds; not supported");
    }
  }

  // The accept order of each listener's waiting connections, which nothing shows but accept()
  // itself: they are accepted through our copy of the listener, in order; then each client in
  // turn drops its connection (connect(AF_UNSPEC), a reset to the end crest accepted) and
  // connects again from the same address and port, so that the queue holds the same clients in
  // the same order, as a restore makes it. Meanwhile the listener's TCP_DEFER_ACCEPT is off (the
  // connections would wait half-open) and no O_ASYNC signal reaches the tree.
  static void requeue_waiting(DumpContext& ctx, Pending& pending) {
    for (auto& l : pending.listeners) {
      SocketRecord* lr = record(ctx, l.file_id);
      if (!lr || l.clients.empty()) continue;
      const int ls = l.s.get();
      std::vector<std::string> later;  // refusals once the queue is as it was
      try {
        QuietSocket quiet_listener(ls, true);
        DeferAcceptOff defer(ls, l.where);
        struct Accepted {
          UniqueFd a;
          int64_t client;
          std::vector<std::array<int64_t, 4>> changed;  // options it did not inherit as they are now
        };
        std::vector<Accepted> accepted;
        // A failure stops the accepting, not the connecting again of those accepted: whatever
        // happens, every client crest took the connection of connects again.
        for (uint32_t k = 0; k < l.waiting; ++k) {
          pollfd pf{ls, POLLIN, 0};
          ::poll(&pf, 1, 1000);  // they are there: this is for the last ACK of one just made
          UniqueFd a(::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
          if (!a) {
            later.push_back("accepting its waiting connection " + std::to_string(k + 1) + " to learn their "
                            "order: " + std::strerror(errno));
            break;
          }
          const auto peer = end_key(inet_name(a.get(), true));
          auto c = std::find_if(l.clients.begin(), l.clients.end(), [&](int64_t id) {
            SocketRecord* cr = record(ctx, id);
            return cr && end_key(cr->name) == peer;
          });
          if (c == l.clients.end()) {
            later.push_back("a connection from " + inet_printable(inet_name(a.get(), true)) +
                            " came into its queue while crest read it, from no client of the tree; "
                            "it is lost");
            break;
          }
          auto changed = options_not_inherited(a.get(), *lr);
          for (auto& [level, name, had, now] : changed)
            later.push_back("its waiting connection from " + inet_printable(inet_name(a.get(), true)) +
                            " has " + option_printable(level, name) + " at " + std::to_string(had) + " where the listener has " + std::to_string(now) +
                            " (changed on the listener after the connection came); a connection made "
                            "again would inherit the listener's; not supported");
          accepted.push_back({std::move(a), *c, std::move(changed)});
        }
        for (auto& [a, id, changed] : accepted) {
          const SocketRecord& cr = *record(ctx, id);
          const int c = pending.waiting_clients.at(id).get();
          const std::string what = "its waiting client " + inet_printable(cr.name);
          try {
            QuietSocket quiet(c, true);
            sockaddr unspec{};
            unspec.sa_family = AF_UNSPEC;
            if (::connect(c, &unspec, sizeof unspec) != 0)
              throw_errno(what + ": dropping its connection (connect AF_UNSPEC)", errno, Errc::kernel);
            bool ok = false;
            get_int_option(c, SOL_SOCKET, SO_ERROR, ok);  // the reset it sent left ECONNRESET
            a.reset();
            // The running tree keeps what its connection had: the listener has those options
            // for the while (the dump is refused for them).
            restore_options(ls, option_values(changed, 2), l.where);
            connect_again(c, cr, what, false);
            wait_queued(ls, static_cast<uint32_t>(lr->waiting.size() + 1), what);
            restore_options(ls, option_values(changed, 3), l.where);
            lr->waiting.push_back(id);
          } catch (const Error& e) {
            later.push_back(e.what());
            try {
              restore_options(ls, option_values(changed, 3), l.where);
            } catch (const Error& e2) {
              later.push_back(e2.what());
            }
          }
        }
      } catch (const Error& e) {
        later.push_back(e.what());
      }
      for (auto& why : later) ctx.refuse(l.where + ": " + why);
    }
  }

  // (level, name, value) triples of `changed`, with the value from column `column` (2: the
  // connection's, 3: the listener's).
  static std::vector<int64_t> option_values(const std::vector<std::array<int64_t, 4>>& changed, size_t column) {
    std::vector<int64_t> out;
    for (auto& c : changed) out.insert(out.end(), {c[0], c[1], c[column]});
    return out;
  }

  // What a connection made by listener `l` shows of the listener's options, compared with them:
  // each (level, name, its value, the listener's) it did not inherit as the listener has it now.
  // Not compared: the buffer sizes (tuned for each connection unless locked), SO_INCOMING_CPU
  // (the CPU its packets came on), and TCP_DEFER_ACCEPT and TCP_FASTOPEN (the listener's own, 0
  // on a connection).
  static std::vector<std::array<int64_t, 4>> options_not_inherited(int conn, const SocketRecord& l) {
    std::vector<int64_t> got;
    std::vector<std::array<int64_t, 4>> out;
    save_inet_options(conn, l.family, SOCK_STREAM, got);  // IP_OPTIONS: the listener's were refused
    save_int_options(conn, IPPROTO_TCP, kTcpOptions, got);
    save_socket_options(conn, got);
    for (size_t i = 0; i + 2 < got.size(); i += 3) {
      const int64_t level = got[i], name = got[i + 1];
      if ((level == SOL_SOCKET && (name == SO_SNDBUF || name == SO_RCVBUF || name == SO_INCOMING_CPU)) ||
          (level == IPPROTO_TCP && (name == TCP_DEFER_ACCEPT || name == TCP_FASTOPEN)))
        continue;
      const int64_t now = saved_option(l.options, static_cast<int>(level), static_cast<int>(name), got[i + 2]);
      if (now != got[i + 2]) out.push_back({level, name, got[i + 2], now});
    }
    return out;
  }

  // The sending side of every connection (its send queue and sequence, the bytes never sent),
  // and what it negotiated. Read for all before any receiving side: the kernel keeps delivering
  // and acknowledging between frozen tasks' sockets, so a receive queue read before its peer's
  // send queue could miss bytes the peer dropped as acknowledged meanwhile.
  static void dump_sending(DumpContext& ctx, Pending& pending) {
    for (auto& [s, row, where, file_id] : pending.connections) {
      TcpRecord& t = ctx.meta.tcp[row];
      const int fd = s.get();
      int outq = 0, notsent = 0;
      if (::ioctl(fd, SIOCOUTQ, &outq) != 0 || ::ioctl(fd, SIOCOUTQNSD, &notsent) != 0) {
        ctx.refuse(where + ": cannot read the size of its send queue: " + std::strerror(errno));
        continue;
      }
      std::string failed;
      {
        Repair repair(fd);
        if (!repair.on()) {
          failed = std::string("cannot put it in repair mode (TCP_REPAIR, needs CAP_NET_ADMIN): ") +
                   std::strerror(errno);
        } else {
          socklen_t len = sizeof t.mss;
          socklen_t tslen = sizeof t.timestamp;
          if (::getsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &t.mss, &len) != 0 ||
              ::getsockopt(fd, IPPROTO_TCP, TCP_TIMESTAMP, &t.timestamp, &tslen) != 0 ||
              !read_queue(fd, TCP_SEND_QUEUE, t.snd_seq, t.send_queue, static_cast<size_t>(outq)))
            failed = std::string("cannot read it in repair mode: ") + std::strerror(errno);
          set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
        }
      }
      if (!failed.empty()) {
        ctx.refuse(where + ": " + failed);
        continue;
      }
      // Bytes never sent come last in the send queue; an unsent FIN is counted after them.
      const uint32_t unsent = static_cast<uint32_t>(notsent) - (t.fin_sent && notsent > 0 ? 1 : 0);
      t.unsent = std::min<uint32_t>(unsent, static_cast<uint32_t>(t.send_queue.size()));
    }
  }

  // The second pass: the receiving side (a FIN received, SHUT_RD, the receive queue and its
  // sequence, the windows).
  static void dump_receiving(DumpContext& ctx, Pending& pending) {
    for (auto& [s, row, where, file_id] : pending.connections) {
      TcpRecord& t = ctx.meta.tcp[row];
      SocketRecord* r = nullptr;
      for (auto& sr : ctx.meta.sockets)
        if (sr.file_id == file_id) r = &sr;
      const int fd = s.get();
      tcp_info ti{};
      socklen_t tlen = sizeof ti;
      int inq = 0;
      pollfd pf{fd, POLLIN | POLLRDHUP, 0};
      ::poll(&pf, 1, 0);
      if (!r || ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) != 0 || ::ioctl(fd, SIOCINQ, &inq) != 0) {
        ctx.refuse(where + ": cannot read its receiving side: " + std::strerror(errno));
        continue;
      }
      t.fin_received = fin_received_in(ti.tcpi_state);
      if (ti.tcpi_state == TCP_TIME_WAIT || ti.tcpi_state == TCP_CLOSE) {
        ctx.refuse(where + ": its connection ended while it was being saved");
        continue;
      }
      if (t.external && t.fin_received) {
        // Its FIN would have to come again from the peer at restore, which has had it
        // acknowledged already.
        ctx.refuse(where + ": its peer outside the tree has ended its side of the connection "
                   "(a FIN received, " + state_name(static_cast<int>(ti.tcpi_state)) +
                   "); a half-closed connection to the outside is not supported yet");
        continue;
      }
      if ((pf.revents & POLLRDHUP) && !t.fin_received) r->shutdown |= 1;  // SHUT_RD of its own
      bool ok = false;
      const int64_t peek_off = get_int_option(fd, SOL_SOCKET, SO_PEEK_OFF, ok);
      const bool peek_off_on = ok && peek_off >= 0;
      if (peek_off_on) set_int(fd, SOL_SOCKET, SO_PEEK_OFF, -1);
      std::string failed;
      {
        Repair repair(fd);
        tcp_repair_window w{};
        socklen_t wlen = sizeof w;
        if (!repair.on() || ::getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &wlen) != 0 ||
            !read_queue(fd, TCP_RECV_QUEUE, t.rcv_seq, t.recv_queue, static_cast<size_t>(inq)))
          failed = std::string("cannot read it in repair mode: ") + std::strerror(errno);
        t.snd_wl1 = w.snd_wl1;
        t.snd_wnd = w.snd_wnd;
        t.max_window = w.max_window;
        t.rcv_wnd = w.rcv_wnd;
        t.rcv_wup = w.rcv_wup;
        if (repair.on()) set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
      }
      if (peek_off_on) set_int(fd, SOL_SOCKET, SO_PEEK_OFF, static_cast<int>(peek_off));
      if (failed.empty() && t.recv_queue.size() != static_cast<size_t>(inq))
        failed = "its receive queue holds " + std::to_string(inq) + " bytes, crest read " +
                 std::to_string(t.recv_queue.size());
      if (!failed.empty()) ctx.refuse(where + ": " + failed);
    }
  }
};

// ---- restore -------------------------------------------------------------------------------

class TcpRestore {
 public:
  explicit TcpRestore(RestoreContext& ctx) : ctx_(ctx) {
    for (auto& r : ctx.meta.sockets)
      if (r.protocol == IPPROTO_TCP) {
        rows_[r.file_id] = &r;
        if (state(r) == SocketState::listening) waiting_.insert(r.waiting.begin(), r.waiting.end());
      }
    for (auto& t : ctx.meta.tcp) tcp_[t.file_id] = &t;
  }

  void run() {
    for (auto& [id, r] : rows_) made_[id] = make_socket(*r);
    // Listeners and bound sockets first, as in the job's life: a connection's end bound to a
    // listener's port is bound in repair mode, which any later bind there would run into.
    for (auto& [id, r] : rows_) {
      if (state(*r) == SocketState::listening) listen_again(*r);
      if (state(*r) == SocketState::unconnected && inet_port(r->name) != 0) bind_plain(*r);
    }
    // The connections waiting in listeners: their clients connect again, in order.
    for (auto& [id, r] : rows_)
      if (state(*r) == SocketState::listening && !r->waiting.empty()) queue_again(*r);
    for (auto& [id, r] : rows_) {  // every connection in repair mode before any leaves it
      if (state(*r) != SocketState::connected || waiting_.count(id)) continue;
      if (!tcp_.count(id)) fail(Errc::corrupt, who(*r) + ": a connection without its TCP row");
      repair_connection(*r, *tcp_.at(id));
    }
    // Every connection to the outside exists again: the lock its dump left goes (the image of
    // a second restore finds none, which is no error).
    if (!ctx_.meta.info.net_lock.empty()) netlock::unlock(ctx_.meta.info.net_lock);
    for (auto& [id, r] : rows_)
      if (state(*r) == SocketState::connected && !waiting_.count(id)) resume_connection(*r, *tcp_.at(id));
    wait_for_fins();
    for (auto& [id, r] : rows_) finish(*r);
  }
  UniqueFd take(int64_t id) const { return dup_made(made_, id, "TCP socket"); }

 private:
  static SocketState state(const SocketRecord& r) { return static_cast<SocketState>(r.state); }
  int fd(int64_t id) const { return made_.at(id).get(); }
  static std::string who(const SocketRecord& r) {
    return "TCP socket " + inet_printable(r.name) +
           (r.peer_name.empty() ? "" : " to " + inet_printable(r.peer_name)) + " (files row " +
           std::to_string(r.file_id) + ")";
  }

  // Made by the first task that holds it, so that its cgroup and memory accounting are the
  // task's; options that bind() looks at are set before it.
  UniqueFd make_socket(const SocketRecord& r) {
    RestoredProcess* holder = nullptr;
    for (auto& fd : ctx_.meta.fds)
      if (fd.file_id == r.file_id && ctx_.by_pid.count(fd.pid) &&
          ctx_.by_pid.at(fd.pid)->role == RestoredProcess::Role::process) {
        holder = ctx_.by_pid.at(fd.pid);
        break;
      }
    if (!holder) fail(Errc::corrupt, who(r) + ": no process holds it");
    InTask t(ctx_, *holder);
    const int remote = static_cast<int>(
        t.call("socket", SYS_socket, static_cast<uint64_t>(r.family), SOCK_STREAM, IPPROTO_TCP));
    UniqueFd s = t.take(remote);
    restore_options(s.get(), pre_bind_options(r.options), who(r));
    return s;
  }

  static void set(int s, int level, int name, int v, const std::string& what) {
    if (set_int(s, level, name, v) != 0) throw_errno(what, errno, Errc::kernel);
  }
  static void send_all(int s, const uint8_t* data, size_t len, const std::string& what) {
    size_t off = 0;
    while (off < len) {
      ssize_t n = ::send(s, data + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw_errno(what, n < 0 ? errno : EIO, Errc::kernel);
      off += static_cast<size_t>(n);
    }
  }

  // Sequence numbers, bind, connect, negotiated options, timestamps, queues and windows, in
  // repair mode (nothing is sent).
  void repair_connection(const SocketRecord& r, const TcpRecord& t) {
    const int s = fd(r.file_id);
    const std::string what = who(r);
    set(s, IPPROTO_TCP, TCP_REPAIR, 1, what + ": repair mode (TCP_REPAIR, needs CAP_NET_ADMIN)");
    const uint32_t send_from = t.snd_seq - t.fin_sent - static_cast<uint32_t>(t.send_queue.size());
    const uint32_t recv_from = t.rcv_seq - t.fin_received - static_cast<uint32_t>(t.recv_queue.size());
    set(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, what + ": TCP_REPAIR_QUEUE");
    set(s, IPPROTO_TCP, TCP_QUEUE_SEQ, static_cast<int>(send_from), what + ": its send sequence");
    set(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, what + ": TCP_REPAIR_QUEUE");
    set(s, IPPROTO_TCP, TCP_QUEUE_SEQ, static_cast<int>(recv_from), what + ": its receive sequence");
    const std::vector<uint8_t> local = bind_name(r);
    if (::bind(s, reinterpret_cast<const sockaddr*>(local.data()), static_cast<socklen_t>(local.size())) != 0)
      throw_errno(what + ": bind", errno, Errc::kernel);
    if (::connect(s, reinterpret_cast<const sockaddr*>(r.peer_name.data()),
                  static_cast<socklen_t>(r.peer_name.size())) != 0)
      throw_errno(what + ": connect in repair mode (is the connection still open on this node?)",
                  errno, Errc::kernel);
    if (inet_name(s, false) != r.name)
      fail(Errc::kernel, what + ": connected from " + inet_printable(inet_name(s, false)) +
                             " instead (the route to its peer chose another address)");
    tcp_repair_opt opts[4];
    int n = 0;
    opts[n++] = {TCPOPT_MAXSEG, t.mss};
    if (t.options & TCPI_OPT_WSCALE) opts[n++] = {TCPOPT_WINDOW, t.snd_wscale | (t.rcv_wscale << 16)};
    if (t.options & TCPI_OPT_SACK) opts[n++] = {TCPOPT_SACK_PERMITTED, 0};
    if (t.options & TCPI_OPT_TIMESTAMPS) opts[n++] = {TCPOPT_TIMESTAMP, 0};
    if (::setsockopt(s, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts, static_cast<socklen_t>(n * sizeof opts[0])) != 0)
      throw_errno(what + ": TCP_REPAIR_OPTIONS", errno, Errc::kernel);
    if (t.options & TCPI_OPT_TIMESTAMPS)
      set(s, IPPROTO_TCP, TCP_TIMESTAMP, static_cast<int>(t.timestamp), what + ": TCP_TIMESTAMP");
    const int big = 64 << 20;
    ::setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    ::setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    set(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, what + ": TCP_REPAIR_QUEUE");
    send_all(s, t.recv_queue.data(), t.recv_queue.size(), what + ": writing back its receive queue");
    set(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, what + ": TCP_REPAIR_QUEUE");
    send_all(s, t.send_queue.data(), t.send_queue.size() - t.unsent, what + ": writing back its send queue");
    set(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, what + ": TCP_REPAIR_QUEUE");
    // The receive window's left edge cannot be past what was received (a FIN comes again).
    const uint32_t rcv_nxt = t.rcv_seq - t.fin_received;
    tcp_repair_window w{t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd,
                        static_cast<int32_t>(t.rcv_wup - rcv_nxt) > 0 ? rcv_nxt : t.rcv_wup};
    if (::setsockopt(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof w) != 0)
      throw_errno(what + ": TCP_REPAIR_WINDOW", errno, Errc::kernel);
  }

  // Out of repair mode: the bytes never sent, then the FIN and a shutdown of its own.
  void resume_connection(const SocketRecord& r, const TcpRecord& t) {
    const int s = fd(r.file_id);
    const std::string what = who(r);
    set(s, IPPROTO_TCP, TCP_REPAIR, 0, what + ": leaving repair mode");
    send_all(s, t.send_queue.data() + (t.send_queue.size() - t.unsent), t.unsent,
             what + ": sending the bytes it had not sent");
    if ((r.shutdown & 2) && ::shutdown(s, SHUT_WR) != 0) throw_errno(what + ": shutdown(SHUT_WR)", errno, Errc::kernel);
    if ((r.shutdown & 1) && ::shutdown(s, SHUT_RD) != 0) throw_errno(what + ": shutdown(SHUT_RD)", errno, Errc::kernel);
  }

  // A FIN a socket had received comes again from its peer's shutdown, and a FIN it had sent
  // whose acknowledgement it had (FIN_WAIT2) is acknowledged again: the tree runs only once each
  // socket is back in its state.
  void wait_for_fins() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (auto& [id, t] : tcp_) {
      auto back = [&, id = id, t = t] {
        if (t->tcp_state == TCP_FIN_WAIT2) {
          tcp_info ti{};
          socklen_t len = sizeof ti;
          if (::getsockopt(fd(id), IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 || ti.tcpi_state != TCP_FIN_WAIT2)
            return false;
        }
        if (!t->fin_received) return true;
        pollfd pf{fd(id), POLLRDHUP, 0};
        return ::poll(&pf, 1, 0) > 0 && (pf.revents & POLLRDHUP);
      };
      while (!back()) {
        if (std::chrono::steady_clock::now() > deadline)
          fail(Errc::kernel, who(*rows_.at(id)) + ": not back in " + state_name(static_cast<int>(t->tcp_state)) +
                                 " after 5 s (a FIN it had received did not come again, or the "
                                 "one it sent again was not acknowledged)");
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }

  // A listener: bound (reusing the port for the while: sockets of the job's last life may
  // still be closing on it), listening with its backlog; SO_REUSEADDR as saved after.
  void listen_again(const SocketRecord& r) {
    bind_plain(r);
    const int s = fd(r.file_id);
    if (::listen(s, static_cast<int>(r.backlog)) != 0)
      throw_errno(who(r) + ": listen (another socket listens on its port?)", errno, Errc::kernel);
  }
  // A port still held by the job's last life (TIME_WAITs and orphaned closing connections of
  // a killed job, without SO_REUSEADDR) is freed of them, and bound again.
  void bind_plain(const SocketRecord& r) {
    const int s = fd(r.file_id);
    set(s, SOL_SOCKET, SO_REUSEADDR, 1, who(r) + ": SO_REUSEADDR");
    auto bind_it = [&] {
      return ::bind(s, reinterpret_cast<const sockaddr*>(r.name.data()), static_cast<socklen_t>(r.name.size())) == 0;
    };
    if (bind_it()) return;
    if (errno == EADDRINUSE && end_leftover_connections(r.family, inet_port(r.name)) > 0 && bind_it()) return;
    throw_errno(who(r) + ": bind (another socket holds its port)", errno, Errc::kernel);
  }

  // A listener's waiting connections, made again in their order: its options first (what its
  // connections inherit from it when they are made), but TCP_DEFER_ACCEPT only after them (they
  // would wait half-open for data); then each client connects again from its own address and
  // port, and is in the queue before the next one connects.
  void queue_again(const SocketRecord& r) {
    const int l = fd(r.file_id);
    std::vector<int64_t> opts;
    for (size_t i = 0; i + 2 < r.options.size(); i += 3)
      if (!(r.options[i] == IPPROTO_TCP && r.options[i + 1] == TCP_DEFER_ACCEPT))
        opts.insert(opts.end(), r.options.begin() + static_cast<std::ptrdiff_t>(i),
                    r.options.begin() + static_cast<std::ptrdiff_t>(i + 3));
    set_congestion(l, r);
    restore_options(l, opts, who(r));
    uint32_t queued = 0;
    for (int64_t id : r.waiting) {
      if (!rows_.count(id) || state(*rows_.at(id)) != SocketState::connected)
        fail(Errc::corrupt, who(r) + ": a waiting connection's client (files row " + std::to_string(id) +
                                ") is not a TCP connection of the image");
      const SocketRecord& c = *rows_.at(id);
      const int s = fd(id);
      const std::string what = who(c) + ", waiting in " + inet_printable(r.name) + "'s queue";
      QuietSocket quiet(s, true);
      connect_again(s, c, what, true);
      wait_queued(l, ++queued, what);
    }
  }

  void set_congestion(int s, const SocketRecord& r) {
    if (r.congestion.empty()) return;
    char now[64] = {};
    socklen_t len = sizeof now;
    if (::getsockopt(s, IPPROTO_TCP, TCP_CONGESTION, now, &len) != 0 || r.congestion != now) {
      if (::setsockopt(s, IPPROTO_TCP, TCP_CONGESTION, r.congestion.data(),
                       static_cast<socklen_t>(r.congestion.size())) != 0)
        throw_errno(who(r) + ": TCP_CONGESTION " + r.congestion, errno, Errc::kernel);
    }
  }

  void finish(const SocketRecord& r) {
    const int s = fd(r.file_id);
    const std::string what = who(r);
    set_congestion(s, r);
    restore_options(s, r.options, what);
    const auto& f = ctx_.file(r.file_id);
    restore_socket_owner(s, f.uid, f.gid, f.mode, what);
    if (::fcntl(s, F_SETFL, static_cast<int>(f.flags & ~O_ASYNC)) != 0)
      throw_errno(what + ": cannot set its flags", errno, Errc::kernel);
  }

  RestoreContext& ctx_;
  std::map<int64_t, const SocketRecord*> rows_;
  std::map<int64_t, const TcpRecord*> tcp_;
  std::map<int64_t, UniqueFd> made_;
  std::set<int64_t> waiting_;  // clients whose connection waits in a listener
};

UniqueFd TcpSocketKind::open_late(RestoreContext& ctx, const schema::FileRecord& f) const {
  return take_made<TcpRestore>(this, ctx, f);
}

}  // namespace

const FdKind& tcp_socket_kind() {
  static const TcpSocketKind kind;
  return kind;
}

}  // namespace crest::fds
