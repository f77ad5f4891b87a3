#include "core/fds/sock_diag.h"

#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>

#include <cerrno>
#include <vector>

#include "core/util/error.h"

namespace crest::fds {

UniqueFd sock_diag_socket(const std::string& what) {
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) throw_errno(what + ": socket(NETLINK_SOCK_DIAG)", errno, Errc::kernel);
  return nl;
}

int sock_diag_ask(int nl, const void* req, size_t len, const std::string& what,
                  const std::function<void(const void* msg, size_t len)>& each) {
  const bool dump = static_cast<const nlmsghdr*>(req)->nlmsg_flags & NLM_F_DUMP;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(nl, req, len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) !=
      static_cast<ssize_t>(len))
    throw_errno(what + ": NETLINK_SOCK_DIAG request", errno, Errc::kernel);
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t got = ::recv(nl, buf.data(), buf.size(), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw_errno(what + ": NETLINK_SOCK_DIAG answer", errno, Errc::kernel);
    size_t left = static_cast<size_t>(got);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) return -static_cast<const nlmsgerr*>(NLMSG_DATA(h))->error;
      if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY) each(NLMSG_DATA(h), h->nlmsg_len - NLMSG_HDRLEN);
    }
    if (!dump) return 0;
  }
}

}  // namespace crest::fds
