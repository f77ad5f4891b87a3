// Unix sockets (stream, datagram, seqpacket). Dump and restore side by side.
//
// Dump. The kernel's socket diagnostics (unix_diag.h) give what no getsockopt shows: the peer's
// inode, the connections waiting in a listener's backlog, the shutdown state and the bytes
// queued. Through our own copy of the descriptor (pidfd_getfd) come the options, the SO_PEERCRED
// of whoever made the connection, and the receive queue, read without consuming it (SO_PEEK_OFF
// from 0, MSG_PEEK, the original offset put back): one row per datagram or record, and per run
// of stream bytes sent with the same credentials, with its sender's address and SCM_CREDENTIALS
// (SO_PASSCRED is turned on for the reading and back off). A peek hands crest copies of the
// descriptors a message carries (SCM_RIGHTS); a stream message that carries some is told apart
// from the messages glued before it (stream_message_start); the descriptions are found among the
// tree's, or dumped as held only in flight, once every descriptor is known (fds/table.cpp).
// Every peer must be in the tree.
//
// Restore, once every task exists (a deferred kind): the kernel stamps a connection with the
// pid and credentials of the task that makes it (SO_PEERCRED), so connections are made by the
// task the checkpoint names, with its credentials of then, by injected system calls:
// socketpair for pairs without names; otherwise a listener on the name of one end (made and
// listening by the task the other end names) that the other end connects to, accepted and
// closed. Listeners are made by their task, and their waiting connections connect again in
// order. A name whose file is gone or is another file now is bound where nobody sees it (under
// a private root, chroot) so that the socket has its name and no file; a stale socket file of
// the job's own (same inode as at the dump) is removed first. Queues are refilled from the
// peer, or from a socket with the sender's name, with the credentials and the descriptors each
// message carried (the restored descriptions, in order among the other messages);
// then datagram sockets connect, shutdowns are made, and options set. A peer outside the tree is
// refused unless --ext-unix-sk (unix_outside.h: datagram sockets connect to its name again,
// streams make a new connection to its listener). Refused, by name: a Unix socket (or a kind set
// up by its holder) held only in flight, an out-of-band byte, a pending error, a socket filter,
// a relative path name, a waiting connection that already holds data or descriptors, messages
// whose credentials name a process outside the tree.
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/fds/fd_kind.h"
#include "core/fds/in_task.h"
#include "core/fds/sockopt.h"
#include "core/fds/unix_diag.h"
#include "core/fds/unix_outside.h"
#include "core/inject.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

using schema::SocketRecord;
using schema::SocketState;

std::string printable(const std::vector<uint8_t>& name) {
  if (name.empty()) return "(unnamed)";
  if (name[0] == 0) return "@" + std::string(name.begin() + 1, name.end());
  std::string s(name.begin(), name.end());
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}
std::string path_of(const std::vector<uint8_t>& name) {
  std::string s(name.begin(), name.end());
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}
bool is_path(const std::vector<uint8_t>& name) { return !name.empty() && name[0] != 0; }

socklen_t make_addr(const std::vector<uint8_t>& name, sockaddr_un& a) {
  std::memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (!name.empty())  // an unnamed socket: no bytes, and data() may be null
    std::memcpy(a.sun_path, name.data(), std::min(name.size(), sizeof a.sun_path));
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
}

uint64_t put_addr(InTask& t, const std::vector<uint8_t>& name, size_t slot, socklen_t& len) {
  sockaddr_un a;
  len = make_addr(name, a);
  return t.put(&a, len, slot);
}

const char* type_name(int type) {
  return type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "datagram" : "seqpacket";
}

// ---- dump ----------------------------------------------------------------------------------

int64_t option(const SocketRecord& r, int name, int64_t dflt) {
  return saved_option(r.options, SOL_SOCKET, name, dflt);
}

// Our copies of the descriptors a received message carries (SCM_RIGHTS), closed when dropped.
void take_rights(msghdr& m, std::vector<UniqueFd>& out) {
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfds; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof fd, sizeof fd);
      out.emplace_back(fd);
    }
  }
}

// In a stream, the `n` bytes a peek at `off` returned with descriptors end with the message
// that carries them, and may begin with earlier messages of the same sender: the kernel glues
// them in one read, while the program's own reads get the descriptors with the first byte of
// their message. Where that message starts: the kernel copies each message into the reader's
// buffer whole or not at all and stops at the first that faults, so a peek at the same offset
// into a buffer whose first n-1 bytes are writable and whose next byte is not returns exactly
// the messages before the last. Returns that length, or -1 (errno set).
ssize_t stream_message_start(int s, uint64_t off, size_t n) {
  if (n <= 1) return 0;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t room = (n - 1 + page - 1) / page * page;
  void* map = ::mmap(nullptr, room + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return -1;
  struct Unmap {
    void* p;
    size_t len;
    ~Unmap() { ::munmap(p, len); }
  } unmap{map, room + page};
  char* base = static_cast<char*>(map);
  if (::mprotect(base + room, page, PROT_NONE) != 0) return -1;
  const int at = static_cast<int>(off);
  if (::setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &at, sizeof at) != 0) return -1;
  alignas(cmsghdr) char control[4096];
  iovec io{base + room - (n - 1), n};
  msghdr m{};
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ssize_t got;
  do {
    got = ::recvmsg(s, &m, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (got < 0 && errno == EINTR);
  if (got >= 0) {
    std::vector<UniqueFd> none;  // earlier messages carry none; closed if they did
    take_rights(m, none);
    if (!none.empty()) {
      errno = EPROTO;
      return -1;
    }
  }
  if (got < 0 && errno == EFAULT) return 0;  // the message with descriptors comes first
  return got;
}

// Reads the receive queue of `s` without taking anything from it, and our copies of the
// descriptors each message carries (`carried`, one entry per row of `out`). Returns false
// after a refusal.
bool peek_queue(DumpContext& ctx, const std::string& where, int s, const UnixDiag& d,
                int64_t file_id, std::vector<schema::SocketQueueRecord>& out,
                std::vector<std::vector<UniqueFd>>& carried) {
  bool ok = false;
  const int64_t peek_off = get_int_option(s, SOL_SOCKET, SO_PEEK_OFF, ok);
  const int64_t passcred = get_int_option(s, SOL_SOCKET, SO_PASSCRED, ok);
  const int zero = 0, one = 1;
  if (::setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) != 0 ||
      ::setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
    ctx.refuse(where + ": cannot read its queue without taking it (SO_PEEK_OFF: " +
               std::strerror(errno) + ")");
    return false;
  }
  std::string refusal;
  // A stream's whole queue fits, so that no peek fills the buffer: one that does goes on past
  // it to the next message that carries descriptors, and hands those over with bytes before.
  std::vector<uint8_t> buf(d.type == SOCK_STREAM ? std::max<size_t>(1 << 16, d.rqueue + 1) : 1 << 16);
  uint64_t total = 0;
  for (;;) {
    alignas(cmsghdr) char control[4096];
    sockaddr_un from{};
    iovec io{buf.data(), buf.size()};
    msghdr m{};
    m.msg_name = &from;
    m.msg_namelen = sizeof from;
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(s, &m, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;  // EAGAIN: the end
    std::vector<UniqueFd> rights;
    take_rights(m, rights);
    if (d.type == SOCK_STREAM && n == 0) break;  // end of a shut-down stream
    // A seqpacket record always brings the credentials asked for above; its end does not.
    if (d.type == SOCK_SEQPACKET && n == 0 && m.msg_controllen == 0) break;
    if (static_cast<size_t>(n) > buf.size()) {    // a datagram larger than the buffer: again
      buf.resize(static_cast<size_t>(n));
      int back = static_cast<int>(total);
      ::setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &back, sizeof back);
      continue;
    }
    schema::SocketQueueRecord q;
    q.file_id = file_id;
    q.seq = static_cast<uint32_t>(out.size());
    q.data.assign(buf.begin(), buf.begin() + n);
    if (m.msg_namelen > offsetof(sockaddr_un, sun_path))
      q.sender.assign(reinterpret_cast<uint8_t*>(from.sun_path),
                      reinterpret_cast<uint8_t*>(from.sun_path) + m.msg_namelen -
                          offsetof(sockaddr_un, sun_path));
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_CREDENTIALS) continue;
      ucred u;
      std::memcpy(&u, CMSG_DATA(c), sizeof u);
      if (u.pid != 0) {
        q.cred_pid = ctx.recorded(u.pid);
        if (q.cred_pid == 0 && refusal.empty())
          refusal = "a message in its queue carries the credentials of process " +
                    std::to_string(u.pid) + ", which is not in the tree";
      }
      q.cred_uid = u.uid;
      q.cred_gid = u.gid;
    }
    if (m.msg_flags & MSG_CTRUNC && refusal.empty())
      refusal = "a message in its queue carries more control data than crest reads (or more "
                "descriptors than crest may hold)";
    if (d.type == SOCK_STREAM && !rights.empty()) {
      // The message that carries them starts where the messages glued before it end.
      if (static_cast<size_t>(n) == buf.size()) {
        if (refusal.empty()) refusal = "its queue grew while crest read it";
        break;
      }
      const ssize_t head = stream_message_start(s, total, static_cast<size_t>(n));
      const int next = static_cast<int>(total + static_cast<uint64_t>(n));
      ::setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &next, sizeof next);
      if (head < 0 || head >= n) {
        if (refusal.empty())
          refusal = "cannot tell where the message carrying descriptors starts in its queue (" +
                    std::string(std::strerror(head < 0 ? errno : ERANGE)) + ")";
        break;
      }
      if (head > 0) {
        schema::SocketQueueRecord before = q;
        before.data.resize(static_cast<size_t>(head));
        q.data.erase(q.data.begin(), q.data.begin() + head);
        out.push_back(std::move(before));
        carried.emplace_back();
        q.seq = static_cast<uint32_t>(out.size());
      }
    }
    total += static_cast<uint64_t>(n);
    out.push_back(std::move(q));
    carried.push_back(std::move(rights));
    if (out.size() > 1000000) {
      refusal = "more than a million messages queued";
      break;
    }
  }
  int back_off = static_cast<int>(peek_off), back_pass = static_cast<int>(passcred);
  ::setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &back_off, sizeof back_off);
  ::setsockopt(s, SOL_SOCKET, SO_PASSCRED, &back_pass, sizeof back_pass);
  if (refusal.empty() && d.type != SOCK_DGRAM && total != d.rqueue)
    refusal = "its queue holds " + std::to_string(d.rqueue) + " bytes, crest read " +
              std::to_string(total) + " of them";
  if (!refusal.empty()) {
    ctx.refuse(where + ": " + refusal);
    return false;
  }
  return true;
}

class UnixSocketKind : public FdKind {
 public:
  const char* name() const override { return "unix socket"; }
  bool claims(const FdProbe& p) const override { return p.sock_domain == AF_UNIX; }

  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    rec.kind = static_cast<uint32_t>(schema::FileKind::unix_socket);
    if (!ctx.unix_diag_read) {
      ctx.unix_diag = unix_sockets();
      ctx.unix_diag_read = true;
    }
    const auto ino = static_cast<uint32_t>(probe.st.st_ino);
    auto it = ctx.unix_diag.find(ino);
    UniqueFd s = proc::copy_fd(probe.pidfd, probe.fd);
    if (it == ctx.unix_diag.end() || !s) {
      ctx.refuse(probe.where + ": a Unix socket the kernel's socket diagnostics do not list");
      return false;
    }
    const UnixDiag& d = it->second;
    const std::string where = probe.where + " (unix " + std::string(type_name(d.type)) + " socket " +
                              printable({d.name.begin(), d.name.end()}) + ")";
    SocketRecord r;
    r.file_id = static_cast<int64_t>(ctx.meta.files.size());  // add_file's next row
    r.family = AF_UNIX;
    r.type = d.type;
    r.ino = d.ino;
    r.peer_ino = d.peer;
    r.name.assign(d.name.begin(), d.name.end());
    r.shutdown = d.shutdown;
    r.state = static_cast<uint32_t>(d.state == 10   ? SocketState::listening
                                    : d.state == 1  ? SocketState::connected
                                                    : SocketState::unconnected);
    if (d.state == 1 && d.peer == 0 && d.type != SOCK_DGRAM)
      r.state = static_cast<uint32_t>(SocketState::closed_peer);
    if (d.state == 1 && d.peer == 0 && d.type == SOCK_DGRAM) {
      // The kernel marks a datagram socket another one connected to as connected too; only
      // getpeername tells it from one whose own peer has closed.
      sockaddr_un peer{};
      socklen_t len = sizeof peer;
      if (::getpeername(s.get(), reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
        ctx.refuse(where + ": connected to a datagram socket that is closed");
        return false;
      }
      r.state = static_cast<uint32_t>(SocketState::unconnected);
    }
    if (r.state == static_cast<uint32_t>(SocketState::listening)) r.backlog = d.wqueue;
    if (is_path(r.name) && r.name[0] != '/') {
      ctx.refuse(where + ": bound to a relative path; not supported yet");
      return false;
    }
    // Its name's file, if the path still leads to it.
    if (is_path(r.name) && d.has_vfs) {
      r.vfs_dev = d.vfs_dev;
      r.vfs_ino = d.vfs_ino;
      struct stat st {};
      if (::stat(path_of(r.name).c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == d.vfs_ino &&
          st.st_dev == makedev(d.vfs_dev >> 20, d.vfs_dev & 0xfffff)) {
        r.reachable = 1;
        r.path_mode = st.st_mode & 07777;
        r.path_uid = st.st_uid;
        r.path_gid = st.st_gid;
      }
    }
    if (r.state == static_cast<uint32_t>(SocketState::closed_peer) ||
        (r.state == static_cast<uint32_t>(SocketState::connected) && d.type == SOCK_DGRAM)) {
      sockaddr_un peer{};
      socklen_t len = sizeof peer;
      if (::getpeername(s.get(), reinterpret_cast<sockaddr*>(&peer), &len) == 0 &&
          len > offsetof(sockaddr_un, sun_path))
        r.peer_name.assign(reinterpret_cast<uint8_t*>(peer.sun_path),
                           reinterpret_cast<uint8_t*>(peer.sun_path) + len - offsetof(sockaddr_un, sun_path));
    }
    // Who made the connection (the kernel's SO_PEERCRED), as the tree sees it.
    ucred cred{};
    socklen_t clen = sizeof cred;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 && cred.pid > 0) {
      r.cred_pid = ctx.recorded(cred.pid);
      // A connection to a listener outside the tree names its process: finish_dump decides once
      // it knows whether the peer is outside (unix_outside.cpp).
      const bool to_listener_outside =
          d.type != SOCK_DGRAM && (r.state == static_cast<uint32_t>(SocketState::connected) ||
                                   (r.state == static_cast<uint32_t>(SocketState::closed_peer) && d.shutdown == 0));
      if (r.cred_pid == 0 && to_listener_outside) {
        ctx.unix_outside_cred[d.ino] = cred.pid;
      } else if (r.cred_pid == 0) {
        ctx.refuse(where + ": its connection was made by process " + std::to_string(cred.pid) +
                   ", which is not in the tree (SO_PEERCRED)");
        return false;
      }
      r.cred_uid = cred.uid;
      r.cred_gid = cred.gid;
      std::vector<gid_t> groups(NGROUPS_MAX);
      socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
      if (::getsockopt(s.get(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0)
        r.cred_groups.assign(groups.begin(), groups.begin() + glen / sizeof(gid_t));
    }
    // What cannot be made again.
    pollfd pf{s.get(), POLLIN, 0};
    if (::poll(&pf, 1, 0) > 0 && (pf.revents & POLLERR)) {
      ctx.refuse(where + ": an error is pending on it (SO_ERROR), which cannot be read without "
                 "clearing it");
      return false;
    }
    socklen_t flen = 0;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_GET_FILTER, nullptr, &flen) == 0 && flen > 0) {
      ctx.refuse(where + ": a socket filter is attached (SO_ATTACH_FILTER); not supported yet");
      return false;
    }
    char oob;
    if (d.type == SOCK_STREAM && ::recv(s.get(), &oob, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT) >= 0) {
      ctx.refuse(where + ": an out-of-band byte (MSG_OOB) is pending; not supported yet");
      return false;
    }
    save_socket_options(s.get(), r.options);
    // The queue, unless it is a listener's (connections, handled in finish_dump).
    std::vector<schema::SocketQueueRecord> queue;
    std::vector<std::vector<UniqueFd>> carried;
    if (r.state != static_cast<uint32_t>(SocketState::listening) &&
        !peek_queue(ctx, where, s.get(), d, r.file_id, queue, carried))
      return false;
    if (!queue.empty() &&
        (option(r, SO_TIMESTAMP, 0) || option(r, SO_TIMESTAMPNS, 0) || option(r, SO_TIMESTAMPING, 0))) {
      ctx.refuse(where + ": messages are queued with receive timestamps (SO_TIMESTAMP), which "
                 "cannot be given again");
      return false;
    }
    for (size_t i = 0; i < queue.size(); ++i) {
      if (!carried[i].empty())  // found among the tree's descriptions once all are known
        ctx.in_flight.push_back({ctx.meta.socket_queues.size(), std::move(carried[i]), where});
      ctx.meta.socket_queues.push_back(std::move(queue[i]));
    }
    ctx.meta.sockets.push_back(std::move(r));
    return true;
  }

  // Peers: each must be a socket of the tree, or a connection waiting in a listener of the tree.
  void finish_dump(DumpContext& ctx) const override {
    std::map<uint64_t, SocketRecord*> by_ino;
    for (auto& r : ctx.meta.sockets)
      if (r.family == AF_UNIX) by_ino[r.ino] = &r;
    std::set<uint64_t> waiting_client;  // clients whose connection waits in a listener
    std::set<uint64_t> tree;            // every Unix socket of the tree, by inode
    std::set<uint64_t> outside;         // sockets whose peer is outside (unix_outside.cpp)
    for (auto& [ino, r] : by_ino) tree.insert(ino);
    auto holder = [&](const SocketRecord& r) {
      for (auto& fd : ctx.meta.fds)
        if (fd.file_id == r.file_id) return "process " + std::to_string(fd.pid) + ": fd " + std::to_string(fd.fd);
      return std::string("a socket");
    };
    // A listener's diagnostics name the clients of its waiting connections, in accept order.
    for (auto& [ino, r] : by_ino) {
      if (r->state != static_cast<uint32_t>(SocketState::listening)) continue;
      const UnixDiag& d = ctx.unix_diag.at(static_cast<uint32_t>(ino));
      for (uint32_t c : d.waiting) {
        auto client = by_ino.find(c);
        if (client == by_ino.end()) {
          ctx.refuse(holder(*r) + " (listening on " + printable(r->name) +
                     "): a connection from outside the tree waits to be accepted");
          continue;
        }
        // What a waiting client sent sits in the connection, charged to the client.
        client->second->state = static_cast<uint32_t>(SocketState::connected);
        const UnixDiag& cd = ctx.unix_diag.at(c);
        if (cd.wqueue != 0) {
          ctx.refuse(holder(*r) + " (listening on " + printable(r->name) + "): a connection waiting "
                     "to be accepted already holds data (or descriptors in flight) from its client (" + holder(*client->second) +
                     "), which cannot be read before it is accepted");
          continue;
        }
        r->waiting.push_back(client->second->file_id);
        waiting_client.insert(c);
      }
    }
    for (auto& [ino, r] : by_ino) {
      // A peer that closed shut the survivor down both ways; a client with no peer and no
      // shutdown waits in a listener.
      if (r->state == static_cast<uint32_t>(SocketState::closed_peer) && r->shutdown == 0) {
        dump_outside_peer(ctx, *r, holder(*r), tree);
        outside.insert(ino);
        continue;
      }
      if (r->peer_ino == 0 || waiting_client.count(ino)) continue;
      auto peer = by_ino.find(r->peer_ino);
      if (peer != by_ino.end()) {
        r->peer_id = peer->second->file_id;
        if (r->peer_name.empty()) r->peer_name = peer->second->name;
        continue;
      }
      dump_outside_peer(ctx, *r, holder(*r), tree);
      outside.insert(ino);
    }
    // A connection made by a process outside the tree whose peer is not outside (it came in
    // by SCM_RIGHTS...): the maker cannot make it again.
    for (auto& [ino, pid] : ctx.unix_outside_cred) {
      auto r = by_ino.find(ino);
      if (r != by_ino.end() && !outside.count(ino))
        ctx.refuse(holder(*r->second) + " (unix " + type_name(r->second->type) + " socket " +
                   printable(r->second->name) + "): its connection was made by process " +
                   std::to_string(pid) + ", which is not in the tree (SO_PEERCRED)");
    }
    // The task that made a connection must be one that can act at restore (not a zombie).
    for (auto& [ino, r] : by_ino) {
      if (r->cred_pid == 0) continue;
      for (auto& p : ctx.meta.processes)
        if (p.pid == r->cred_pid && (p.flags & schema::kProcessZombie))
          ctx.refuse(holder(*r) + ": its connection was made by process " + std::to_string(p.pid) +
                     ", which has exited (SO_PEERCRED names it)");
    }
    // Datagrams must be sendable again: from the peer, or to a name.
    for (auto& [ino, r] : by_ino) {
      if (r->type != SOCK_DGRAM || r->external) continue;  // external: unix_outside.cpp
      for (auto& q : ctx.meta.socket_queues) {
        if (q.file_id != r->file_id) continue;
        const bool from_peer = r->peer_id >= 0 || q.sender.empty();
        if (r->name.empty() && !from_peer) {
          ctx.refuse(holder(*r) + ": an unnamed datagram socket holds a message from " +
                     printable(q.sender) + ", which is not its peer");
          break;
        }
        if (is_path(r->name) && !r->reachable) {
          ctx.refuse(holder(*r) + ": a datagram socket holds messages and its name " +
                     printable(r->name) + " no longer leads to it; not supported yet");
          break;
        }
      }
    }
  }

  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  bool deferred() const override { return true; }
  UniqueFd open_late(RestoreContext& ctx, const schema::FileRecord& f) const override;

  std::vector<std::string> restored() const override {
    return {"stream, datagram and seqpacket sockets; socketpairs; connections with both ends in "
            "the tree",
            "names: paths (also removed or replaced: the name without its file), abstract",
            "listeners with their backlog and the connections waiting in it, in order",
            "queued data in order, with datagram and record boundaries, senders' names and "
            "SCM_CREDENTIALS",
            "descriptors in flight (SCM_RIGHTS): each message sent again with the restored "
            "descriptions it carried, in order (a stream message apart from those before it); "
            "one description carried twice stays one; one held only in flight (a file, pipe, "
            "memory object, eventfd, timerfd, signalfd, O_PATH or harmless device) made again",
            "SO_PEERCRED / SO_PEERGROUPS (the connection is made by the task that made it)",
            "shutdown in each direction; a stream whose peer has closed",
            "every settable SOL_SOCKET option: buffer sizes and locks, timeouts, SO_PASSCRED, "
            "SO_PEEK_OFF, SO_PRIORITY, SO_RCVLOWAT, SO_MARK, SO_LINGER, SO_PASSSEC, "
            "SO_PASSPIDFD, SO_PASSRIGHTS, timestamps (refused with messages queued), ...",
            "the mode and owner of a socket file and of the socket itself",
            "O_NONBLOCK, owner, F_SETSIG, O_ASYNC",
            "with --ext-unix-sk, a peer outside the tree reached by its name: a datagram socket "
            "connected to it again, a stream or seqpacket socket given a new connection to its "
            "listener (the listener sees a new client; bytes it had not read stay on the old "
            "connection)"};
  }
  std::vector<std::string> refused() const override {
    return {"a peer outside the tree without --ext-unix-sk",
            "a peer outside the tree without a name (socketpair end, accepted connection), or "
            "whose name no longer leads to it",
            "unread data from a listener outside the tree (a new connection cannot hold it)",
            "in flight (SCM_RIGHTS) and held by no process: a Unix socket (it may carry "
            "descriptors in turn: the garbage collector's cycles), any kind but a file, pipe, "
            "memory object, eventfd, timerfd, signalfd, O_PATH or harmless device, or one with a "
            "lock, a SIGIO owner, F_SETSIG or O_ASYNC",
            "an out-of-band byte", "a pending error", "a socket filter",
            "a name that is a relative path",
            "a waiting connection that already holds data (or descriptors)",
            "messages whose credentials name a process outside the tree"};
  }
};

// ---- restore -------------------------------------------------------------------------------

// A directory nobody else sees, to bind names whose file must not appear where it was.
class PrivateRoot {
 public:
  PrivateRoot() = default;
  PrivateRoot(const PrivateRoot&) = delete;
  PrivateRoot& operator=(const PrivateRoot&) = delete;
  ~PrivateRoot() {
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  // Root under which `path` can be bound (its directories made, open to anyone).
  const std::string& for_path(const std::string& path) {
    if (dir_.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/crest-names-XXXXXX";
      if (!::mkdtemp(templ.data())) throw_errno("mkdtemp " + templ, errno, Errc::io);
      dir_ = templ;
      ::chmod(dir_.c_str(), 0755);
    }
    std::filesystem::path parent = std::filesystem::path(path).parent_path();
    std::string at = dir_;
    for (auto& part : parent.relative_path()) {
      at += "/" + part.string();
      if (::mkdir(at.c_str(), 0777) == 0) ::chmod(at.c_str(), 01777);
    }
    std::filesystem::remove(dir_ + path);  // a name bound before under this root
    return dir_;
  }
  // Root under which a name bound by for_path is reached.
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

class UnixRestore {
 public:
  explicit UnixRestore(RestoreContext& ctx) : ctx_(ctx) {
    for (auto& r : ctx.meta.sockets)
      if (r.family == AF_UNIX) rows_[r.file_id] = &r;
  }

  void run() {
    clear_stale_names();
    // Connections first: their lent listeners borrow names the job's listeners hold after.
    for (auto& [id, r] : rows_)  // new connections to listeners outside the tree
      if (r->external && r->type != SOCK_DGRAM) connect_outside(*r);
    make_pairs();  // the pairs without names, many at once
    for (auto& [id, r] : rows_)
      if (!made(id) && r->type != SOCK_DGRAM && !waiting_.count(id) &&
          (state(*r) == SocketState::connected || state(*r) == SocketState::closed_peer))
        make_connection(*r);
    for (auto& [id, r] : rows_)  // listeners, and the connections waiting in them
      if (state(*r) == SocketState::listening) make_listener(*r);
    for (auto& [id, r] : rows_)  // the rest: made here, bound
      if (!made(id)) make_plain(*r);
    for (auto& [id, r] : rows_) refill(*r);
    for (auto& [id, r] : rows_)
      if (r->type == SOCK_DGRAM && state(*r) == SocketState::connected && !connected_.count(id))
        connect_dgram(*r);
    for (auto& [id, r] : rows_) finish(*r);
    for (auto& [id, r] : rows_) {
      const auto& f = ctx_.file(id);
      if (::fcntl(fd(id), F_SETFL, static_cast<int>(f.flags & ~O_ASYNC)) != 0)
        throw_errno("cannot set a socket's flags", errno, Errc::kernel);
    }
  }
  UniqueFd take(int64_t id) const { return dup_made(made_, id, "Unix socket"); }

 private:
  static SocketState state(const SocketRecord& r) { return static_cast<SocketState>(r.state); }
  bool made(int64_t id) const { return made_.count(id) != 0; }
  int fd(int64_t id) const { return made_.at(id).get(); }
  std::string who(const SocketRecord& r) const {
    return "unix socket " + printable(r.name) + " (files row " + std::to_string(r.file_id) + ")";
  }

  RestoredProcess& task(int32_t pid, const SocketRecord& r) {
    auto it = ctx_.by_pid.find(pid);
    if (it == ctx_.by_pid.end() || it->second->role != RestoredProcess::Role::process)
      fail(Errc::corrupt, who(r) + ": process " + std::to_string(pid) +
                              ", which made its connection, is not restored");
    return *it->second;
  }
  // The first process holding a socket: who connects a waiting connection again.
  RestoredProcess& holder(const SocketRecord& r) {
    for (auto& fd : ctx_.meta.fds)
      if (fd.file_id == r.file_id && ctx_.by_pid.count(fd.pid)) return task(fd.pid, r);
    fail(Errc::corrupt, who(r) + ": no process holds it");
  }
  static Creds creds_of(const SocketRecord& r) { return {r.cred_uid, r.cred_gid, r.cred_groups}; }
  static Creds creds_of(const RestoredProcess& p) { return {p.rec->euid, p.rec->egid, p.rec->groups}; }

  // Sockets bound again where they were: listeners and sockets nobody connected, whose path led
  // to them at the dump. The two ends of a connection keep their names without files (the file
  // a connected end was bound to is not its any more: it stays as it is).
  bool binds_in_place(const SocketRecord& r) const {
    return is_path(r.name) && r.reachable &&
           (state(r) == SocketState::listening || state(r) == SocketState::unconnected ||
            r.type == SOCK_DGRAM) &&
           !waiting_.count(r.file_id);
  }
  bool hidden(const SocketRecord& r) const { return is_path(r.name) && !binds_in_place(r); }

  // A name to bind in place whose file is a stale socket file of the job's own (the inode of
  // the dump, or a socket file nobody listens on) is freed; any other file there stops us.
  void clear_stale_names() {
    for (auto& [id, r] : rows_)
      if (state(*r) == SocketState::listening)
        for (int64_t c : r->waiting) waiting_.insert(c);
    for (auto& [id, r] : rows_) {
      if (!binds_in_place(*r)) continue;
      const std::string path = path_of(r->name);
      struct stat st {};
      if (::lstat(path.c_str(), &st) != 0) continue;
      const bool same = st.st_ino == r->vfs_ino && st.st_dev == makedev(r->vfs_dev >> 20, r->vfs_dev & 0xfffff);
      if (S_ISSOCK(st.st_mode) && (same || !listened(path))) {
        ::unlink(path.c_str());
        continue;
      }
      fail(Errc::busy, path + " exists and is not the job's socket (" + who(*r) +
                             " was bound there); crest will not remove it");
    }
  }
  static bool listened(const std::string& path) {
    std::vector<uint8_t> name(path.begin(), path.end());
    name.push_back(0);
    sockaddr_un a;
    const socklen_t len = make_addr(name, a);
    for (int type : {SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM}) {
      UniqueFd probe(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&a), len) == 0 || errno == EAGAIN) return true;
    }
    return false;
  }

  // Binds a socket of a task (remote descriptor) to r's name: in place, or under the private
  // root (entered for the while, unless the task is there already).
  void bind_in(InTask& t, int remote, const SocketRecord& r, bool in_root, size_t slot) {
    if (r.name.empty()) return;
    const bool hide = hidden(r);
    if (hide && !in_root) t.enter_root(root_.for_path(path_of(r.name)));
    if (hide && in_root) root_.for_path(path_of(r.name));
    socklen_t len;
    const uint64_t a = put_addr(t, r.name, slot, len);
    long rc = t.sys(SYS_bind, static_cast<uint64_t>(remote), a, len);
    if (hide && !in_root) t.leave_root();
    if (rc < 0)
      throw Error(Errc::kernel, who(r) + ": cannot bind it to its name again", static_cast<int>(-rc));
  }

  void after_bind(const SocketRecord& r) {
    if (!binds_in_place(r)) return;
    const std::string path = path_of(r.name);
    if (::chown(path.c_str(), r.path_uid, r.path_gid) != 0 || ::chmod(path.c_str(), r.path_mode) != 0)
      throw_errno(who(r) + ": cannot give its socket file its owner and mode", errno, Errc::io);
  }

  // A listener, made and listening by the task its SO_PEERCRED names, with its credentials;
  // then its waiting connections, in order, each connected by the task that holds its client.
  void make_listener(const SocketRecord& r) {
    const bool hide = hidden(r);
    {
      RestoredProcess& p = task(r.cred_pid, r);
      InTask t(ctx_, p);
      if (hide) t.enter_root(root_.for_path(path_of(r.name)));
      t.with_creds(creds_of(r));
      const int s = static_cast<int>(t.call("socket", SYS_socket, AF_UNIX, static_cast<uint64_t>(r.type), 0));
      bind_in(t, s, r, hide, 0);
      t.call("listen", SYS_listen, static_cast<uint64_t>(s), r.backlog);
      t.as_root();
      t.leave_root();
      made_[r.file_id] = t.take(s);
    }
    after_bind(r);
    for (int64_t client_id : r.waiting) {
      const SocketRecord& c = *rows_.at(client_id);
      RestoredProcess& cp = holder(c);
      InTask t(ctx_, cp);
      const int s = static_cast<int>(t.call("socket", SYS_socket, AF_UNIX, static_cast<uint64_t>(c.type), 0));
      bind_in(t, s, c, false, 1);
      if (hide) t.enter_root(root_.dir());
      t.with_creds(creds_of(cp));
      socklen_t len;
      const uint64_t a = put_addr(t, r.name, 0, len);
      t.call("connect to " + printable(r.name), SYS_connect, static_cast<uint64_t>(s), a, len);
      t.as_root();
      t.leave_root();
      made_[client_id] = t.take(s);
    }
  }

  // Connections whose two ends are rows without names (stream and seqpacket connections, and
  // datagram pairs each end of which is the other's peer): socketpairs, made by the task the
  // first end's SO_PEERCRED names with those credentials, many in one injection; those of one
  // task and credentials together.
  void make_pairs() {
    struct Pair {
      const SocketRecord* a;
      const SocketRecord* b;
    };
    std::set<int64_t> planned;
    std::map<std::tuple<int32_t, uint32_t, uint32_t, std::vector<uint32_t>>, std::vector<Pair>> by_maker;
    for (auto& [id, r] : rows_) {
      if (made(id) || planned.count(id) || !r->name.empty() || r->cred_pid == 0) continue;
      auto peer = rows_.find(r->peer_id);
      if (peer == rows_.end() || peer->first == id) continue;
      const SocketRecord* b = peer->second;
      if (made(b->file_id) || planned.count(b->file_id) || !b->name.empty()) continue;
      if (r->type != SOCK_DGRAM && b->cred_pid == 0) continue;  // make_connection names it
      if (r->type == SOCK_DGRAM ? b->peer_id != id
                                : waiting_.count(id) || (state(*r) != SocketState::connected &&
                                                         state(*r) != SocketState::closed_peer))
        continue;
      planned.insert(id);
      planned.insert(b->file_id);
      by_maker[{r->cred_pid, r->cred_uid, r->cred_gid, r->cred_groups}].push_back({r, b});
    }
    constexpr size_t kPerBatch = kScratchBatchArgsSize / (2 * sizeof(int));
    for (auto& [maker, pairs] : by_maker) {
      RestoredProcess& p = task(pairs.front().a->cred_pid, *pairs.front().a);
      InTask t(ctx_, p);
      t.with_creds(creds_of(*pairs.front().a));
      for (size_t i = 0; i < pairs.size(); i += kPerBatch) {
        const size_t n = std::min(kPerBatch, pairs.size() - i);
        SyscallBatch batch = batch_in(p);
        for (size_t k = 0; k < n; ++k)
          batch.add("socketpair", SYS_socketpair, AF_UNIX, static_cast<uint64_t>(pairs[i + k].a->type), 0,
                    p.scratch + kScratchBatchArgs + k * 2 * sizeof(int));
        batch.flush();
        std::vector<int> ends(2 * n);
        remote_read(p.pid, p.scratch + kScratchBatchArgs, ends.data(), ends.size() * sizeof(int));
        std::vector<UniqueFd> ours = t.take_all(ends);
        for (size_t k = 0; k < n; ++k) {
          const SocketRecord& a = *pairs[i + k].a;
          const SocketRecord& b = *pairs[i + k].b;
          made_[a.file_id] = std::move(ours[2 * k]);
          made_[b.file_id] = std::move(ours[2 * k + 1]);
          if (a.type == SOCK_DGRAM) {
            connected_.insert(a.file_id);
            connected_.insert(b.file_id);
          }
        }
      }
      t.as_root();
    }
  }

  // A connection: socketpair when neither end has a name; else a listener lent the name of
  // one end, listening as the task the other end's SO_PEERCRED names, and connected to by the
  // task this end's SO_PEERCRED names. A stream whose peer had closed gets a stand-in peer,
  // closed once its queue is refilled.
  void make_connection(const SocketRecord& a) {
    const SocketRecord* b = a.peer_id >= 0 && rows_.count(a.peer_id) ? rows_.at(a.peer_id) : nullptr;
    SocketRecord standin;
    if (!b) {
      standin.file_id = -1;
      standin.type = a.type;
      standin.state = static_cast<uint32_t>(SocketState::connected);
      standin.name = a.peer_name;
      standin.cred_pid = a.cred_pid;
      standin.cred_uid = a.cred_uid;
      standin.cred_gid = a.cred_gid;
      standin.cred_groups = a.cred_groups;
      b = &standin;
    }
    auto keep = [&](const SocketRecord& r, UniqueFd f) {
      if (r.file_id < 0)
        standin_[a.file_id] = std::move(f);
      else
        made_[r.file_id] = std::move(f);
    };
    if (a.cred_pid == 0 || b->cred_pid == 0)
      fail(Errc::corrupt, who(a) + ": a connection without the credentials of its maker");
    if (a.name.empty() && b->name.empty()) {
      RestoredProcess& p = task(a.cred_pid, a);
      InTask t(ctx_, p);
      t.with_creds(creds_of(a));
      int sv[2] = {-1, -1};
      const uint64_t out = t.put(sv, sizeof sv, 2);
      t.call("socketpair", SYS_socketpair, AF_UNIX, static_cast<uint64_t>(a.type), 0, out);
      remote_read(p.pid, out, sv, sizeof sv);
      t.as_root();
      auto [end_a, end_b] = t.take_pair(sv);
      keep(a, std::move(end_a));
      keep(*b, std::move(end_b));
      return;
    }
    // The accepted end takes the listener's name: the end with a name (b, if both have one).
    const SocketRecord& acc = b->name.empty() ? a : *b;
    const SocketRecord& con = &acc == &a ? *b : a;
    const bool hide = is_path(acc.name);  // a lent name never shows in the file system
    UniqueFd listener;
    {
      InTask t(ctx_, task(con.cred_pid, con));
      if (hide) t.enter_root(root_.for_path(path_of(acc.name)));
      t.with_creds(creds_of(con));
      const int l = static_cast<int>(t.call("socket", SYS_socket, AF_UNIX, static_cast<uint64_t>(acc.type), 0));
      socklen_t len;
      const uint64_t addr = put_addr(t, acc.name, 0, len);
      t.call("bind a lent name " + printable(acc.name), SYS_bind, static_cast<uint64_t>(l), addr, len);
      t.call("listen", SYS_listen, static_cast<uint64_t>(l), 1);
      t.as_root();
      t.leave_root();
      listener = t.take(l);
    }
    UniqueFd con_fd;
    {
      InTask t(ctx_, task(acc.cred_pid, acc));
      const int c = static_cast<int>(t.call("socket", SYS_socket, AF_UNIX, static_cast<uint64_t>(con.type), 0));
      if (!con.name.empty()) bind_in(t, c, con, false, 1);
      if (hide) t.enter_root(root_.dir());
      t.with_creds(creds_of(acc));
      socklen_t len;
      const uint64_t addr = put_addr(t, acc.name, 0, len);
      t.call("connect to " + printable(acc.name), SYS_connect, static_cast<uint64_t>(c), addr, len);
      t.as_root();
      t.leave_root();
      con_fd = t.take(c);
    }
    UniqueFd acc_fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!acc_fd) throw_errno(who(a) + ": accepting its connection again", errno, Errc::kernel);
    keep(con, std::move(con_fd));
    keep(acc, std::move(acc_fd));
  }

  // A connection to a listener outside the tree (--ext-unix-sk): a new one to its name, made by
  // the first process holding the socket, with its credentials (the listener's SO_PEERCRED
  // names it). Non-blocking, so that a full backlog fails rather than hangs.
  void connect_outside(const SocketRecord& r) {
    RestoredProcess& p = holder(r);
    InTask t(ctx_, p);
    const int s = static_cast<int>(
        t.call("socket", SYS_socket, AF_UNIX, static_cast<uint64_t>(r.type) | SOCK_NONBLOCK, 0));
    bind_in(t, s, r, false, 1);
    t.with_creds(creds_of(p));
    socklen_t len;
    const uint64_t a = put_addr(t, r.peer_name, 0, len);
    const long rc = t.sys(SYS_connect, static_cast<uint64_t>(s), a, len);
    t.as_root();
    if (rc < 0) {
      t.sys(SYS_close, static_cast<uint64_t>(s));
      throw Error(Errc::not_found, who(r) + ": its listener outside the tree, " + printable(r.peer_name) +
                                       ", cannot be connected to again (--ext-unix-sk)",
                  static_cast<int>(-rc));
    }
    made_[r.file_id] = t.take(s);
  }

  // A socket nobody connected (it has no SO_PEERCRED): made here, bound.
  void make_plain(const SocketRecord& r) {
    UniqueFd s(::socket(AF_UNIX, r.type | SOCK_CLOEXEC, 0));
    if (!s) throw_errno(who(r) + ": socket", errno, Errc::kernel);
    if (!r.name.empty()) bind_here(s.get(), r.name, hidden(r), who(r));
    after_bind(r);
    made_[r.file_id] = std::move(s);
  }

  // Binds one of our sockets; under the private root (by a child of ours that chroots) if the
  // name must have no file where it was.
  void bind_here(int s, const std::vector<uint8_t>& name, bool hide, const std::string& what) {
    sockaddr_un a;
    const socklen_t len = make_addr(name, a);
    if (!hide) {
      if (::bind(s, reinterpret_cast<sockaddr*>(&a), len) != 0)
        throw_errno(what + ": cannot bind it to its name again", errno, Errc::kernel);
      return;
    }
    const std::string root = root_.for_path(path_of(name));
    pid_t child = ::fork();
    if (child < 0) throw_errno("fork", errno, Errc::kernel);
    if (child == 0) {
      if (::chroot(root.c_str()) != 0 || ::chdir("/") != 0) ::_exit(errno);
      ::_exit(::bind(s, reinterpret_cast<sockaddr*>(&a), len) == 0 ? 0 : errno);
    }
    int st = 0;
    while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
      throw Error(Errc::kernel, what + ": cannot bind it to its name again (under a private root)",
                  WIFEXITED(st) ? WEXITSTATUS(st) : EIO);
  }

  // Our descriptions of what a message carries (SCM_RIGHTS), in order: the Unix sockets made
  // here, the rest as made for the tasks that hold them, or for no task (held only in flight).
  std::vector<int> carried(const schema::SocketQueueRecord& q, const std::string& what) {
    std::vector<int> out;
    for (int64_t id : q.fds) {
      if (id < 0 || id >= static_cast<int64_t>(ctx_.meta.files.size()))
        fail(Errc::corrupt, what + ": a queued message carries files row " + std::to_string(id) +
                                ", which does not exist");
      out.push_back(rows_.count(id) ? fd(id) : in_flight_description(ctx_, id));
    }
    return out;
  }

  // Sends one queued message again, with the credentials and the descriptors it carried: one
  // message (one datagram, record, or stream buffer), as the dump read it.
  void send_one(int from, const schema::SocketQueueRecord& q, const sockaddr_un* to,
                socklen_t tolen, const std::string& what) {
    iovec io{const_cast<uint8_t*>(q.data.data()), q.data.size()};
    msghdr m{};
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    if (to) {
      m.msg_name = const_cast<sockaddr_un*>(to);
      m.msg_namelen = tolen;
    }
    constexpr size_t kMaxRights = 253;  // the kernel's SCM_MAX_FD
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * kMaxRights)];
    std::memset(control, 0, sizeof control);
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    size_t used = 0;
    if (q.cred_pid != 0) {
      auto it = ctx_.by_pid.find(q.cred_pid);
      if (it == ctx_.by_pid.end())
        fail(Errc::corrupt, what + ": a message from process " + std::to_string(q.cred_pid) + ", not restored");
      ucred u{it->second->pid, q.cred_uid, q.cred_gid};
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_CREDENTIALS;
      c->cmsg_len = CMSG_LEN(sizeof u);
      std::memcpy(CMSG_DATA(c), &u, sizeof u);
      used += CMSG_SPACE(sizeof u);
      c = CMSG_NXTHDR(&m, c);
    }
    if (!q.fds.empty()) {
      const std::vector<int> rights = carried(q, what);
      if (rights.size() > kMaxRights)
        fail(Errc::corrupt, what + ": a queued message carries more than " +
                                std::to_string(kMaxRights) + " descriptors");
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * rights.size());
      std::memcpy(CMSG_DATA(c), rights.data(), sizeof(int) * rights.size());
      used += CMSG_SPACE(sizeof(int) * rights.size());
    }
    m.msg_controllen = used;
    if (used == 0) m.msg_control = nullptr;
    ssize_t n;
    do {
      n = ::sendmsg(from, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(q.data.size()))
      throw_errno(what + ": cannot queue a message of " + std::to_string(q.data.size()) + " bytes again",
                  n < 0 ? errno : EMSGSIZE, Errc::kernel);
  }

  // Streams: from the peer (or the stand-in of a closed one). Datagrams: from the peer, from
  // the socket of the tree with the sender's name, or from a socket lent that name.
  void refill(const SocketRecord& r) {
    std::vector<const schema::SocketQueueRecord*> queue;
    for (auto& q : ctx_.meta.socket_queues)
      if (q.file_id == r.file_id) queue.push_back(&q);
    if (queue.empty()) return;
    std::sort(queue.begin(), queue.end(), [](auto* x, auto* y) { return x->seq < y->seq; });
    const std::string what = who(r);
    grow(fd(r.file_id), SO_RCVBUFFORCE);
    if (r.type != SOCK_DGRAM) {
      int from = -1;
      if (r.peer_id >= 0 && made(r.peer_id))
        from = fd(r.peer_id);
      else if (standin_.count(r.file_id))
        from = standin_.at(r.file_id).get();
      if (from < 0) fail(Errc::corrupt, what + ": queued data and no peer to send it");
      grow(from, SO_SNDBUFFORCE);
      for (auto* q : queue) send_one(from, *q, nullptr, 0, what);
      return;
    }
    sockaddr_un to;
    const socklen_t tolen = make_addr(r.name, to);
    for (auto* q : queue) {
      const SocketRecord* sender = nullptr;
      if (r.peer_id >= 0 && rows_.at(r.peer_id)->name == q->sender) sender = rows_.at(r.peer_id);
      for (auto& [id, o] : rows_)
        if (!sender && !q->sender.empty() && o->name == q->sender && o->type == SOCK_DGRAM) sender = o;
      if (sender && connected_.count(sender->file_id) && sender->peer_id == r.file_id) {
        grow(fd(sender->file_id), SO_SNDBUFFORCE);
        send_one(fd(sender->file_id), *q, nullptr, 0, what);
      } else if (sender) {
        grow(fd(sender->file_id), SO_SNDBUFFORCE);
        send_one(fd(sender->file_id), *q, &to, tolen, what);
      } else {
        UniqueFd lent(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        if (!lent) throw_errno("socket", errno, Errc::kernel);
        if (::connect(lent.get(), reinterpret_cast<sockaddr*>(&to), tolen) != 0)
          throw_errno(what + ": cannot reach it by its name to queue a message again", errno, Errc::kernel);
        if (!q->sender.empty())
          bind_here(lent.get(), q->sender, is_path(q->sender), what + " (a sender's name)");
        grow(lent.get(), SO_SNDBUFFORCE);
        send_one(lent.get(), *q, nullptr, 0, what);
        lent_.push_back(std::move(lent));
      }
    }
  }
  static void grow(int s, int option) {
    const int big = 64 << 20;
    ::setsockopt(s, SOL_SOCKET, option, &big, sizeof big);
  }

  void connect_dgram(const SocketRecord& r) {
    sockaddr_un to;
    const socklen_t len = make_addr(r.peer_name, to);
    if (r.peer_name.empty() || ::connect(fd(r.file_id), reinterpret_cast<sockaddr*>(&to), len) != 0) {
      if (r.external)
        throw_errno(who(r) + ": its peer outside the tree, " + printable(r.peer_name) +
                        ", cannot be connected to again (--ext-unix-sk)",
                    errno, Errc::not_found);
      throw_errno(who(r) + ": cannot connect it again to " + printable(r.peer_name), errno, Errc::kernel);
    }
  }

  // Shutdowns (a stream whose peer had closed: its stand-in closed), then options.
  void finish(const SocketRecord& r) {
    const int s = fd(r.file_id);
    if (state(r) == SocketState::closed_peer) {
      standin_.erase(r.file_id);
    } else if (r.shutdown) {
      const int how = r.shutdown == 3 ? SHUT_RDWR : r.shutdown == 1 ? SHUT_RD : SHUT_WR;
      if (::shutdown(s, how) != 0) throw_errno(who(r) + ": shutdown", errno, Errc::kernel);
    }
    restore_options(s, r.options, who(r));
    const auto& f = ctx_.file(r.file_id);
    restore_socket_owner(s, f.uid, f.gid, f.mode, who(r));
  }

  RestoreContext& ctx_;
  std::map<int64_t, const SocketRecord*> rows_;
  std::map<int64_t, UniqueFd> made_;
  std::set<int64_t> connected_;          // datagram socketpairs
  std::set<int64_t> waiting_;            // clients whose connection waits in a listener
  std::map<int64_t, UniqueFd> standin_;  // closed-peer stream -> its stand-in peer
  std::vector<UniqueFd> lent_;           // senders lent a name (their messages name them)
  PrivateRoot root_;
};

// Every socket is made on the first call; each call hands out one.
UniqueFd UnixSocketKind::open_late(RestoreContext& ctx, const schema::FileRecord& f) const {
  return take_made<UnixRestore>(this, ctx, f);
}

}  // namespace

const FdKind& unix_socket_kind() {
  static const UnixSocketKind kind;
  return kind;
}

}  // namespace crest::fds
