// Unix sockets connected to a socket outside the tree: the dump's decision (unix_outside.h says
// what the restored program gets; unix_socket.cpp makes the sockets again).
#include "core/fds/unix_outside.h"
#include "core/fds/peer_process.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>

namespace crest::fds {
namespace {

constexpr uint8_t kListen = 10;  // TCP_LISTEN, as unix_diag gives a listener's state

std::string printable(const std::string& name) {
  if (name.empty()) return "(unnamed)";
  if (name[0] == '\0') return "@" + name.substr(1);
  std::string s = name;
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}
bool is_path(const std::string& name) { return !name.empty() && name[0] != '\0'; }

// Whether `name` (a path) still leads to the socket file the kernel lists with `d`.
bool leads_to(const std::string& name, const UnixDiag& d) {
  if (!d.has_vfs) return false;
  struct stat st {};
  return ::stat(printable(name).c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == d.vfs_ino &&
         st.st_dev == makedev(d.vfs_dev >> 20, d.vfs_dev & 0xfffff);
}

const char* type_name(int type) {
  return type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "datagram" : "seqpacket";
}

}  // namespace

void dump_outside_peer(DumpContext& ctx, schema::SocketRecord& r, const std::string& holder,
                       const std::set<uint64_t>& tree) {
  const bool dgram = r.type == SOCK_DGRAM;
  const std::string what = holder + " (unix " + type_name(r.type) + " socket " +
                           printable(std::string(r.name.begin(), r.name.end())) + ")";
  // The peer as the kernel lists it. A client whose connection waits in a listener's backlog has
  // none to list (its peer is the listener's embryo socket, which has no inode yet): getpeername
  // gave the listener's name.
  const UnixDiag* peer = nullptr;
  std::string name;
  if (r.peer_ino != 0) {
    auto it = ctx.unix_diag.find(static_cast<uint32_t>(r.peer_ino));
    if (it == ctx.unix_diag.end()) {
      ctx.refuse(what + ": connected to a socket outside the tree that the kernel's socket "
                 "diagnostics do not list (in another network namespace?)");
      return;
    }
    peer = &it->second;
    name = peer->name;
  } else {
    name.assign(r.peer_name.begin(), r.peer_name.end());
  }
  const std::string shown = printable(name);
  // The process holding the peer, named in refusals; slurmstepd (the PMIx server of ranks srun
  // started) is refused whatever the options.
  PeerProcess far;
  if (r.peer_ino != 0) {
    std::vector<pid_t> pids;
    for (auto& [host, recorded] : ctx.ns_pid) pids.push_back(host);
    far = socket_holder(r.peer_ino, pids);
  }
  if (std::string launcher = launcher_peer_reason(far); !launcher.empty()) {
    ctx.refuse(what + ": connected to a socket outside the tree (" + (name.empty() ? "(unnamed)" : shown) +
               ")" + peer_label(far) + ": " + launcher);
    return;
  }
  if (name.empty()) {
    ctx.refuse(what + ": connected to a socket outside the tree ((unnamed), an accepted connection "
               "or a socketpair end): nothing can reach it again, not even with --ext-unix-sk" +
               peer_label(far));
    return;
  }
  const bool waiting = peer == nullptr;
  if (!ctx.ext_unix_sk) {
    if (waiting)
      ctx.refuse(what + ": its connection waits to be accepted by a listener outside the tree (" +
                 shown + "); --ext-unix-sk would make a new connection to " + shown);
    else if (dgram)
      ctx.refuse(what + ": connected to a socket outside the tree (" + shown +
                 "); --ext-unix-sk would connect it again to " + shown + peer_label(far));
    else
      ctx.refuse(what + ": connected to a socket outside the tree (" + shown +
                 ", a listener's connection); --ext-unix-sk would make a new connection to " + shown +
                 peer_label(far));
    return;
  }
  if (is_path(name) && name[0] != '/') {
    ctx.refuse(what + ": connected to " + shown + " outside the tree, a name its peer bound as a "
               "relative path: it cannot be reached again by that name");
    return;
  }
  size_t queued = 0, queued_bytes = 0;
  bool from_abstract_peer = false;
  for (auto& q : ctx.meta.socket_queues)
    if (q.file_id == r.file_id) {
      ++queued;
      queued_bytes += q.data.size();
      if (!is_path(name) && std::string(q.sender.begin(), q.sender.end()) == name) from_abstract_peer = true;
    }

  if (dgram) {
    if (is_path(name) && !leads_to(name, *peer)) {
      ctx.refuse(what + ": connected to " + shown + " outside the tree, and that path no longer "
                 "leads to it (removed, or another socket bound there since): connecting again "
                 "would reach another socket");
      return;
    }
    if (queued != 0 && r.name.empty()) {
      ctx.refuse(what + ": " + std::to_string(queued) + " messages from its peer outside the tree (" +
                 shown + ") wait in its queue; only that peer can send to an unnamed socket, so "
                 "they cannot be queued again");
      return;
    }
    if (from_abstract_peer) {
      ctx.refuse(what + ": messages from its peer outside the tree (" + shown + ") wait in its "
                 "queue; they cannot be queued again from that abstract name, which the peer holds");
      return;
    }
    r.external = 1;
    r.peer_name.assign(name.begin(), name.end());
    ctx.warnings.push_back(what + ": connected to " + shown + " outside the tree; restored "
                           "connected again to " + shown + " (--ext-unix-sk), to whatever socket "
                           "is bound there at restore");
    return;
  }

  // Stream, seqpacket: the listener that accepted (or will accept) the connection, by its name
  // (an accepted socket carries its listener's name and socket file).
  const UnixDiag* listener = nullptr;
  for (auto& [ino, d] : ctx.unix_diag) {
    if (d.state != kListen || d.type != r.type || d.name != name) continue;
    if (peer && is_path(name) && !(d.has_vfs && peer->has_vfs && d.vfs_ino == peer->vfs_ino &&
                                   d.vfs_dev == peer->vfs_dev))
      continue;
    if (waiting && std::find(d.waiting.begin(), d.waiting.end(), static_cast<uint32_t>(r.ino)) ==
                       d.waiting.end())
      continue;
    listener = &d;
    break;
  }
  if (!listener) {
    ctx.refuse(what + ": connected to " + shown + " outside the tree, whose listener is gone or no "
               "longer has that name: a new connection could not be made");
    return;
  }
  if (tree.count(listener->ino)) {
    ctx.refuse(what + ": connected to a socket outside the tree that was accepted from the tree's "
               "own listener " + shown + "; not supported");
    return;
  }
  if (is_path(name) && !leads_to(name, *listener)) {
    ctx.refuse(what + ": connected to the listener " + shown + " outside the tree, and that path "
               "no longer leads to it (removed, or another socket bound there since)");
    return;
  }
  if (queued != 0) {
    ctx.refuse(what + ": " + std::to_string(queued_bytes) + " bytes that the listener's side (" +
               shown + ", outside the tree) sent wait unread in its queue; a new connection "
               "cannot bring them back, even with --ext-unix-sk (dump once the program has read "
               "them)");
    return;
  }
  r.external = 1;
  r.peer_name.assign(name.begin(), name.end());
  // A client waiting in the backlog is a connection as far as its program knows.
  r.state = static_cast<uint32_t>(schema::SocketState::connected);
  std::string note = what + ": connected to the listener " + shown + " outside the tree; restored "
                     "as a new connection to " + shown + " (--ext-unix-sk): the listener sees a "
                     "new client and the old connection ends with the tree";
  if (waiting)
    note += "; what it sent while waiting to be accepted stays on the old connection";
  else if (peer->rqueue != 0)
    note += "; " + std::to_string(peer->rqueue) + " bytes it sent that the listener's side has "
            "not read stay on the old connection (lost to the new one)";
  ctx.warnings.push_back(note);
}

}  // namespace crest::fds
