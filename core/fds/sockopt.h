// Socket options of any family: saved as (level, name, value) triples and set again where they
// differ from a new socket's, each read back after setting.
#ifndef CREST_CORE_FDS_SOCKOPT_H
#define CREST_CORE_FDS_SOCKOPT_H

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace crest::fds {

// Pseudo SOL_SOCKET option numbers for values that are not one int.
inline constexpr int kOptRcvTimeo = 1000, kOptSndTimeo = 1001, kOptLinger = 1002;

// One int option; ok tells whether the kernel has it for this socket.
int64_t get_int_option(int fd, int level, int name, bool& ok);

// Appends (level, name, value) for each of `names` this socket shows.
void save_int_options(int fd, int level, std::span<const int> names, std::vector<int64_t>& out);

// Every SOL_SOCKET option getsockopt shows and setsockopt takes (the rest are read-only: type,
// protocol, domain, SO_ACCEPTCONN, peer credentials and name, SO_ERROR, cookies, statistics),
// the timeouts and SO_LINGER. SO_PEEK_OFF and SO_PASSCRED come last.
void save_socket_options(int fd, std::vector<int64_t>& out);

// The value saved for (level, name), or `dflt`.
int64_t saved_option(const std::vector<int64_t>& triples, int level, int name, int64_t dflt);

// Sets each saved option that differs from the socket's now, in the saved order; an option
// this kernel lacks is skipped if it was 0. Throws naming `what` when one cannot be set or does
// not read back as saved.
void restore_options(int fd, const std::vector<int64_t>& triples, const std::string& what);

// A socket's own inode (fstat; sock_diag's UID) gets the owner and mode it had: a new one has
// its maker's and 0777.
void restore_socket_owner(int fd, uint32_t uid, uint32_t gid, uint32_t mode, const std::string& what);

}  // namespace crest::fds

#endif
