// One NETLINK_SOCK_DIAG dump of every Unix socket (linux/unix_diag.h), parsed into UnixDiag.
#include "core/fds/unix_diag.h"

#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "core/fds/sock_diag.h"
#include "core/util/error.h"
#include "core/util/unique_fd.h"

namespace crest::fds {
namespace {

void parse(const unix_diag_msg* msg, size_t len, std::map<uint32_t, UnixDiag>& out) {
  UnixDiag d;
  d.ino = msg->udiag_ino;
  d.type = msg->udiag_type;
  d.state = msg->udiag_state;
  size_t off = NLMSG_ALIGN(sizeof *msg);
  while (off + sizeof(nlattr) <= len) {
    auto* a = reinterpret_cast<const nlattr*>(reinterpret_cast<const char*>(msg) + off);
    if (a->nla_len < sizeof(nlattr) || off + a->nla_len > len) break;
    const char* data = reinterpret_cast<const char*>(a) + NLA_HDRLEN;
    const size_t n = a->nla_len - NLA_HDRLEN;
    switch (a->nla_type) {
      case UNIX_DIAG_NAME:
        d.name.assign(data, n);
        break;
      case UNIX_DIAG_VFS:
        if (n >= sizeof(unix_diag_vfs)) {
          unix_diag_vfs v;
          std::memcpy(&v, data, sizeof v);
          d.has_vfs = true;
          d.vfs_dev = v.udiag_vfs_dev;
          d.vfs_ino = v.udiag_vfs_ino;
        }
        break;
      case UNIX_DIAG_PEER:
        if (n >= 4) std::memcpy(&d.peer, data, 4);
        break;
      case UNIX_DIAG_ICONS:
        for (size_t i = 0; i + 4 <= n; i += 4) {
          uint32_t ino;
          std::memcpy(&ino, data + i, 4);
          d.waiting.push_back(ino);
        }
        break;
      case UNIX_DIAG_RQLEN:
        if (n >= sizeof(unix_diag_rqlen)) {
          unix_diag_rqlen q;
          std::memcpy(&q, data, sizeof q);
          d.rqueue = q.udiag_rqueue;
          d.wqueue = q.udiag_wqueue;
        }
        break;
      case UNIX_DIAG_SHUTDOWN:
        if (n >= 1) d.shutdown = static_cast<uint8_t>(data[0]);
        break;
    }
    off += NLA_ALIGN(a->nla_len);
  }
  out[d.ino] = std::move(d);
}

}  // namespace

std::map<uint32_t, UnixDiag> unix_sockets() {
  UniqueFd nl = sock_diag_socket("unix_diag");
  struct {
    nlmsghdr h;
    unix_diag_req r;
  } req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.h.nlmsg_seq = 1;
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = ~0u;
  req.r.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS |
                     UDIAG_SHOW_RQLEN;
  std::map<uint32_t, UnixDiag> out;
  const int err = sock_diag_ask(nl.get(), &req, sizeof req, "unix_diag", [&](const void* m, size_t len) {
    parse(static_cast<const unix_diag_msg*>(m), len, out);
  });
  if (err) throw Error(Errc::kernel, "unix_diag: the kernel refused the dump", err);
  return out;
}

}  // namespace crest::fds
