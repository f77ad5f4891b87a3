// NETLINK_SOCK_DIAG requests, shared by the socket kinds that ask the kernel what no getsockopt
// shows (unix_diag, netlink_diag).
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "core/util/unique_fd.h"

namespace crest::fds {

// A NETLINK_SOCK_DIAG socket. Throws naming `what` when it cannot be made.
UniqueFd sock_diag_socket(const std::string& what);

// Sends `req` (an nlmsghdr and its request, nlmsg_len set) and calls `each` with the payload and
// length of every answer message of type SOCK_DIAG_BY_FAMILY, until NLMSG_DONE (a dump) or the
// first message (a single answer). Returns the errno of an NLMSG_ERROR answer, 0 if none; throws
// naming `what` when the socket fails.
int sock_diag_ask(int nl, const void* req, size_t len, const std::string& what,
                  const std::function<void(const void* msg, size_t len)>& each);

// Whether this kernel answers netlink_diag (CONFIG_NETLINK_DIAG), which a netlink socket's dump
// needs (netlink_socket.cpp).
bool netlink_diag_works();

}  // namespace crest::fds
