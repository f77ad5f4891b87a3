#include "core/fds/sockopt.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>

#include "core/util/error.h"

namespace crest::fds {
namespace {

// asm-generic/socket.h values newer than the build's headers.
constexpr int kSoPreferBusyPoll = 69, kSoBusyPollBudget = 70, kSoBufLock = 72,
              kSoReserveMem = 73, kSoTxRehash = 74, kSoRcvMark = 75, kSoPassPidfd = 76,
              kSoRcvPriority = 82, kSoPassRights = 83;

// SO_BUF_LOCK after the buffer sizes, which set it; SO_PEEK_OFF and SO_PASSCRED last (a
// refill of the queues needs them off).
constexpr int kSocketOptions[] = {
    SO_SNDBUF,      SO_RCVBUF,       kSoBufLock,     SO_PRIORITY,        SO_RCVLOWAT,
    SO_MARK,        SO_KEEPALIVE,    SO_BROADCAST,   SO_DEBUG,           SO_PASSSEC,
    SO_REUSEADDR,   SO_REUSEPORT,    SO_DONTROUTE,   SO_OOBINLINE,       SO_NO_CHECK,
    SO_TIMESTAMP,   SO_TIMESTAMPNS,  SO_TIMESTAMPING, SO_RXQ_OVFL,       SO_SELECT_ERR_QUEUE,
    SO_WIFI_STATUS, SO_NOFCS,        SO_LOCK_FILTER, SO_BINDTOIFINDEX,   SO_INCOMING_CPU,
    SO_BUSY_POLL,   kSoPreferBusyPoll, kSoBusyPollBudget, SO_MAX_PACING_RATE, kSoReserveMem,
    kSoTxRehash,    kSoRcvMark,      kSoRcvPriority, kSoPassPidfd,       kSoPassRights,
    SO_PEEK_OFF,    SO_PASSCRED};

std::string option_name(int level, int name) {
  return "option " + std::to_string(name) + " of level " + std::to_string(level);
}

}  // namespace

int64_t get_int_option(int fd, int level, int name, bool& ok) {
  int v = 0;
  socklen_t len = sizeof v;
  ok = ::getsockopt(fd, level, name, &v, &len) == 0;
  return v;
}

void save_int_options(int fd, int level, std::span<const int> names, std::vector<int64_t>& out) {
  for (int name : names) {
    bool ok = false;
    const int64_t v = get_int_option(fd, level, name, ok);
    if (ok) out.insert(out.end(), {level, name, v});
  }
}

void save_socket_options(int fd, std::vector<int64_t>& out) {
  save_int_options(fd, SOL_SOCKET, kSocketOptions, out);
  for (auto [opt, name] : {std::pair{kOptRcvTimeo, SO_RCVTIMEO}, {kOptSndTimeo, SO_SNDTIMEO}}) {
    timeval tv{};
    socklen_t len = sizeof tv;
    if (::getsockopt(fd, SOL_SOCKET, name, &tv, &len) == 0)
      out.insert(out.end(), {SOL_SOCKET, opt, tv.tv_sec * 1000000ll + tv.tv_usec});
  }
  linger l{};
  socklen_t len = sizeof l;
  if (::getsockopt(fd, SOL_SOCKET, SO_LINGER, &l, &len) == 0)
    out.insert(out.end(), {SOL_SOCKET, kOptLinger, (static_cast<int64_t>(l.l_onoff) << 32) | l.l_linger});
}

int64_t saved_option(const std::vector<int64_t>& triples, int level, int name, int64_t dflt) {
  for (size_t i = 0; i + 2 < triples.size(); i += 3)
    if (triples[i] == level && triples[i + 1] == name) return triples[i + 2];
  return dflt;
}

void restore_options(int fd, const std::vector<int64_t>& triples, const std::string& what) {
  for (size_t i = 0; i + 2 < triples.size(); i += 3) {
    const int level = static_cast<int>(triples[i]), name = static_cast<int>(triples[i + 1]);
    const int64_t want = triples[i + 2];
    if (level == SOL_SOCKET && (name == kOptRcvTimeo || name == kOptSndTimeo)) {
      timeval tv{static_cast<time_t>(want / 1000000), static_cast<suseconds_t>(want % 1000000)};
      if (::setsockopt(fd, SOL_SOCKET, name == kOptRcvTimeo ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, sizeof tv) != 0)
        throw_errno(what + ": cannot set its timeout", errno, Errc::kernel);
      continue;
    }
    if (level == SOL_SOCKET && name == kOptLinger) {
      linger l{static_cast<int>(want >> 32), static_cast<int>(want & 0xffffffff)};
      if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0)
        throw_errno(what + ": cannot set SO_LINGER", errno, Errc::kernel);
      continue;
    }
    bool ok = false;
    const int64_t now = get_int_option(fd, level, name, ok);
    if (!ok && want == 0) continue;  // an option newer than this kernel, left at its default
    if (!ok) throw_errno(what + ": this kernel lacks socket " + option_name(level, name), errno, Errc::kernel);
    const bool buffer = level == SOL_SOCKET && (name == SO_SNDBUF || name == SO_RCVBUF);
    if (now == want && !buffer) continue;
    int v = static_cast<int>(want);
    int set_name = name;
    // A buffer size the program did not lock (SO_BUF_LOCK, as saved) is the kernel's to tune: TCP
    // autotuning sets any size, an odd one too, which setsockopt cannot give (it keeps twice
    // what it is given). Such a size is given back rounded up to even, and tuned on from there.
    bool tuned = false;
    if (buffer) {  // the kernel keeps twice what it is given
      const int64_t lock_bit = name == SO_SNDBUF ? 1 : 2;  // SOCK_SNDBUF_LOCK, SOCK_RCVBUF_LOCK
      tuned = (saved_option(triples, SOL_SOCKET, kSoBufLock, lock_bit) & lock_bit) == 0 && (want & 1);
      v = static_cast<int>((want + 1) / 2);
      set_name = name == SO_SNDBUF ? SO_SNDBUFFORCE : SO_RCVBUFFORCE;
    }
    if (::setsockopt(fd, level, set_name, &v, sizeof v) != 0)
      throw_errno(what + ": cannot set socket " + option_name(level, name), errno, Errc::kernel);
    const int64_t got = get_int_option(fd, level, name, ok);
    if (got != want && !(tuned && got == want + 1))
      fail(Errc::kernel, what + ": socket " + option_name(level, name) + " is " + std::to_string(got) +
                             " after setting " + std::to_string(want));
  }
}

void restore_socket_owner(int fd, uint32_t uid, uint32_t gid, uint32_t mode, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno(what + ": fstat", errno, Errc::kernel);
  if ((st.st_uid != uid || st.st_gid != gid) && ::fchown(fd, uid, gid) != 0)
    throw_errno(what + ": cannot give the socket its owner again", errno, Errc::kernel);
  if ((st.st_mode & 07777) != (mode & 07777) && ::fchmod(fd, mode & 07777) != 0)
    throw_errno(what + ": cannot give the socket its mode again", errno, Errc::kernel);
}

}  // namespace crest::fds
