/* TCP over loopback, IPv4 and IPv6, with data queued both ways and socket options on either end:
 *   L4  (root) listener on 127.0.0.1, port chosen by the kernel, backlog 5; SO_REUSEADDR,
 *       TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE 900 and IP_TOS 0x08, all of which a socket
 *       accepted from it inherits (SO_PRIORITY is not inherited: an accepted socket has 0).
 *   L6  (root) listener on ::1, port chosen by the kernel, backlog 5; SO_REUSEADDR, IPV6_V6ONLY.
 *   c4  (child "client") SO_SNDBUF 16384, SO_RCVBUF 16384 (both locked, read back doubled) and
 *       IP_TOS 0x10 (which also sets SO_PRIORITY) before connecting to L4; s4 (root) its accepted
 *       end: inherits L4's options, then gets TCP_KEEPINTVL 45, TCP_KEEPCNT 3 and O_NONBLOCK.
 *   c6  (child) SO_KEEPALIVE, TCP_KEEPIDLE 600, TCP_KEEPINTVL 30, TCP_KEEPCNT 4, IPV6_TCLASS 0x20
 *       before connecting to L6, O_NONBLOCK after; s6 (root) its accepted end, TCP_NODELAY.
 * In each of the four directions the sender wrote 1, 17 and 300 bytes, then 200 KiB with
 * non-blocking sends, stopping early when the send buffer stayed full for 200 ms (the receiver's
 * window closed), and recorded how many bytes were accepted; the stream's byte at offset i is a
 * function of (direction, i), so a lost, duplicated or reordered byte shows. Nothing is read:
 * c4's small receive buffer leaves most of s4's 200 KiB in s4's send queue, c4's small send
 * buffer stops its own writes early (with about 32 KiB in its send queue), and the 200 KiB sent
 * over the IPv6 connection each way exceed what the receiver's default buffer admits (about
 * 125 KiB), so every direction has bytes in both the sender's and the receiver's queue.
 * At setup each socket's state is recorded: TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT,
 * SO_REUSEADDR, SO_ACCEPTCONN, SO_PRIORITY, IP_TOS or IPV6_TCLASS, IPV6_V6ONLY, O_NONBLOCK,
 * SO_ERROR, and from TCP_INFO the state, the negotiated options (timestamps, SACK, window
 * scaling, ECN) and both window scales; for listeners the backlog (tcpi_sacked) and the accept
 * queue length (tcpi_unacked, 0); c4's SO_SNDBUF and SO_RCVBUF (the other sockets' buffers are
 * not locked and the kernel tunes them); getsockname and getpeername.
 * On request, each process finds its sockets as recorded, then reads exactly the bytes the peer
 * recorded, intact and in order. The root checks that its accepted ends' peers are the child's
 * sockets' names, connects a new client to each listener, accepts it (it inherits the listener's
 * options exactly as s4/s6 did at setup) and exchanges a message each way on it. Over each old
 * connection the root sends "ping4"/"ping6"; the child reads it right after the queued bytes and
 * answers "pong4"/"pong6", after which the root finds nothing more queued and closes its ends;
 * the child then reads EOF. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

#define BIG_LEN (200 * 1024)
#define CHUNK (64 * 1024)
#define SEED_DOWN4 41 /* root to child */
#define SEED_UP4 42   /* child to root */
#define SEED_DOWN6 61
#define SEED_UP6 62

struct addr {
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_storage ss;
  } u;
  socklen_t len; /* 0: the call failed (err says why) */
  int err;
};

enum {
  F_DOMAIN,
  F_NODELAY,
  F_KEEPALIVE,
  F_KEEPIDLE,
  F_KEEPINTVL,
  F_KEEPCNT,
  F_REUSEADDR,
  F_ACCEPTCONN,
  F_PRIORITY,
  F_TOS,
  F_V6ONLY,
  F_NONBLOCK,
  F_ERROR,
  F_STATE,
  F_OPTIONS,
  F_SND_WSCALE,
  F_RCV_WSCALE,
  F_BACKLOG,
  F_ACCEPTQ,
  F_SNDBUF,
  F_RCVBUF,
  NFIELDS
};

static const char* const field_name[NFIELDS] = {
    [F_DOMAIN] = "SO_DOMAIN",
    [F_NODELAY] = "TCP_NODELAY",
    [F_KEEPALIVE] = "SO_KEEPALIVE",
    [F_KEEPIDLE] = "TCP_KEEPIDLE",
    [F_KEEPINTVL] = "TCP_KEEPINTVL",
    [F_KEEPCNT] = "TCP_KEEPCNT",
    [F_REUSEADDR] = "SO_REUSEADDR",
    [F_ACCEPTCONN] = "SO_ACCEPTCONN",
    [F_PRIORITY] = "SO_PRIORITY",
    [F_TOS] = "IP_TOS/IPV6_TCLASS",
    [F_V6ONLY] = "IPV6_V6ONLY",
    [F_NONBLOCK] = "O_NONBLOCK",
    [F_ERROR] = "SO_ERROR",
    [F_STATE] = "tcpi_state",
    [F_OPTIONS] = "tcpi_options",
    [F_SND_WSCALE] = "tcpi_snd_wscale",
    [F_RCV_WSCALE] = "tcpi_rcv_wscale",
    [F_BACKLOG] = "backlog (tcpi_sacked)",
    [F_ACCEPTQ] = "accept queue (tcpi_unacked)",
    [F_SNDBUF] = "SO_SNDBUF",
    [F_RCVBUF] = "SO_RCVBUF",
};

#define BIT(f) (1u << (f))
#define CMP_NAMES BIT(NFIELDS) /* getsockname and getpeername */
/* What every socket is compared on; buffers only where they were set. */
#define CMP_ALL (CMP_NAMES | (BIT(NFIELDS) - 1 - BIT(F_SNDBUF) - BIT(F_RCVBUF)))
#define CMP_BUFS (BIT(F_SNDBUF) | BIT(F_RCVBUF))
/* What a socket accepted from a listener takes from it. */
#define CMP_INHERITED                                                                       \
  (BIT(F_DOMAIN) | BIT(F_NODELAY) | BIT(F_KEEPALIVE) | BIT(F_KEEPIDLE) | BIT(F_KEEPINTVL) | \
   BIT(F_KEEPCNT) | BIT(F_REUSEADDR) | BIT(F_ACCEPTCONN) | BIT(F_PRIORITY) | BIT(F_TOS) |   \
   BIT(F_V6ONLY) | BIT(F_NONBLOCK) | BIT(F_ERROR) | BIT(F_STATE) | BIT(F_OPTIONS))

/* TCPI_OPT_* that belong to the connection rather than to its recent traffic. */
#define TCPI_OPT_STABLE (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE | TCPI_OPT_ECN)

struct prof {
  int v[NFIELDS];
  struct addr name, peer;
};

/* What the child tells the root at setup, and the root the child. */
struct up {
  size_t total4, total6;
  struct addr name4, name6;
};
struct down {
  size_t total4, total6;
};

/* What a call that returned n reports: errno's text if it failed. */
static const char* outcome(ssize_t n) { return n < 0 ? strerror(errno) : "no error"; }

static int get_int(int fd, int level, int opt) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, opt, &v, &len) != 0) return -errno;
  return v;
}

static void set_int(int fd, int level, int opt, int v, const char* what) {
  if (setsockopt(fd, level, opt, &v, sizeof v) != 0) wl_die("setsockopt %s: %m", what);
}

static struct addr get_name(int fd, bool peer) {
  struct addr a;
  memset(&a, 0, sizeof a);
  a.len = sizeof a.u;
  int r = peer ? getpeername(fd, &a.u.sa, &a.len) : getsockname(fd, &a.u.sa, &a.len);
  if (r != 0) {
    a.err = errno;
    a.len = 0;
  }
  return a;
}

static bool same_addr(const struct addr* a, const struct addr* b) {
  return a->len == b->len && a->err == b->err && memcmp(&a->u, &b->u, a->len) == 0;
}

static const char* fmt_addr(const struct addr* a, char* buf, size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a->len == 0) {
    snprintf(buf, len, "(%s)", strerror(a->err));
  } else if (a->u.sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &a->u.in.sin_addr, host, sizeof host);
    snprintf(buf, len, "%s:%u", host, ntohs(a->u.in.sin_port));
  } else if (a->u.sa.sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof host);
    snprintf(buf, len, "[%s]:%u flow %u scope %u", host, ntohs(a->u.in6.sin6_port),
             ntohl(a->u.in6.sin6_flowinfo), a->u.in6.sin6_scope_id);
  } else {
    snprintf(buf, len, "family %d length %u", a->u.sa.sa_family, (unsigned)a->len);
  }
  return buf;
}

static void get_prof(int fd, struct prof* p) {
  int* v = p->v;
  v[F_DOMAIN] = get_int(fd, SOL_SOCKET, SO_DOMAIN);
  bool v6 = v[F_DOMAIN] == AF_INET6;
  v[F_NODELAY] = get_int(fd, IPPROTO_TCP, TCP_NODELAY);
  v[F_KEEPALIVE] = get_int(fd, SOL_SOCKET, SO_KEEPALIVE);
  v[F_KEEPIDLE] = get_int(fd, IPPROTO_TCP, TCP_KEEPIDLE);
  v[F_KEEPINTVL] = get_int(fd, IPPROTO_TCP, TCP_KEEPINTVL);
  v[F_KEEPCNT] = get_int(fd, IPPROTO_TCP, TCP_KEEPCNT);
  v[F_REUSEADDR] = get_int(fd, SOL_SOCKET, SO_REUSEADDR);
  v[F_ACCEPTCONN] = get_int(fd, SOL_SOCKET, SO_ACCEPTCONN);
  v[F_PRIORITY] = get_int(fd, SOL_SOCKET, SO_PRIORITY);
  v[F_TOS] = v6 ? get_int(fd, IPPROTO_IPV6, IPV6_TCLASS) : get_int(fd, IPPROTO_IP, IP_TOS);
  v[F_V6ONLY] = v6 ? get_int(fd, IPPROTO_IPV6, IPV6_V6ONLY) : -1;
  v[F_NONBLOCK] = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
  v[F_ERROR] = get_int(fd, SOL_SOCKET, SO_ERROR);
  v[F_SNDBUF] = get_int(fd, SOL_SOCKET, SO_SNDBUF);
  v[F_RCVBUF] = get_int(fd, SOL_SOCKET, SO_RCVBUF);
  struct tcp_info ti;
  memset(&ti, 0, sizeof ti);
  socklen_t len = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) memset(&ti, 0xff, sizeof ti);
  v[F_STATE] = ti.tcpi_state;
  v[F_OPTIONS] = ti.tcpi_options & TCPI_OPT_STABLE;
  v[F_SND_WSCALE] = ti.tcpi_snd_wscale;
  v[F_RCV_WSCALE] = ti.tcpi_rcv_wscale;
  bool listening = ti.tcpi_state == TCP_LISTEN;
  v[F_BACKLOG] = listening ? (int)ti.tcpi_sacked : -1;
  v[F_ACCEPTQ] = listening ? (int)ti.tcpi_unacked : -1;
  p->name = get_name(fd, false);
  p->peer = get_name(fd, true);
}

static void expect_prof(int fd, const struct prof* want, unsigned fields, const char* what) {
  struct prof got;
  get_prof(fd, &got);
  for (int f = 0; f < NFIELDS; f++) {
    if (fields & BIT(f)) {
      wl_expect(got.v[f] == want->v[f], "%s: %s %d, was %d", what, field_name[f], got.v[f],
                want->v[f]);
    }
  }
  if (fields & CMP_NAMES) {
    char a[96], b[96];
    wl_expect(same_addr(&got.name, &want->name), "%s: getsockname %s, was %s", what,
              fmt_addr(&got.name, a, sizeof a), fmt_addr(&want->name, b, sizeof b));
    wl_expect(same_addr(&got.peer, &want->peer), "%s: getpeername %s, was %s", what,
              fmt_addr(&got.peer, a, sizeof a), fmt_addr(&want->peer, b, sizeof b));
  }
}

static void note_prof(const char* what, const struct prof* p) {
  char a[96], b[96];
  wl_note(
      "%s: %s -> %s, state %d, nodelay %d, keepalive %d/%d/%d/%d, prio %d, tos %d, "
      "wscale %d/%d, bufs %d/%d",
      what, fmt_addr(&p->name, a, sizeof a), fmt_addr(&p->peer, b, sizeof b), p->v[F_STATE],
      p->v[F_NODELAY], p->v[F_KEEPALIVE], p->v[F_KEEPIDLE], p->v[F_KEEPINTVL], p->v[F_KEEPCNT],
      p->v[F_PRIORITY], p->v[F_TOS], p->v[F_SND_WSCALE], p->v[F_RCV_WSCALE], p->v[F_SNDBUF],
      p->v[F_RCVBUF]);
}

/* The byte at offset `off` of the stream `seed`. */
static unsigned char pat(uint64_t seed, size_t off) {
  return (unsigned char)(wl_mix64((seed << 40) ^ (off / 8)) >> (off % 8 * 8));
}

static void pat_fill(unsigned char* buf, size_t len, uint64_t seed, size_t off) {
  for (size_t i = 0; i < len; i++) buf[i] = pat(seed, off + i);
}

static int sock_queue(int fd, unsigned long req) {
  int n = -1;
  return ioctl(fd, req, &n) == 0 ? n : -errno;
}

/* Queues a few small writes and as much of 200 KiB as non-blocking sends take until the send
 * buffer stays full (the receiver's window closed) for 200 ms; returns the number of bytes
 * accepted in all. */
static size_t queue_stream(int fd, uint64_t seed, const char* what) {
  static const size_t small[] = {1, 17, 300};
  unsigned char* buf = malloc(BIG_LEN);
  if (!buf) wl_die("malloc");
  size_t off = 0;
  for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
    pat_fill(buf, small[i], seed, off);
    ssize_t n = send(fd, buf, small[i], MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n != (ssize_t)small[i]) wl_die("%s: small send of %zu gave %zd: %m", what, small[i], n);
    off += small[i];
  }
  pat_fill(buf, BIG_LEN, seed, off);
  size_t big = 0;
  while (big < BIG_LEN) {
    ssize_t n = send(fd, buf + big, BIG_LEN - big, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      big += (size_t)n;
    } else if (n < 0 && errno == EAGAIN) {
      /* Full for now; it stays full once the receiver's window is closed too. */
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      if (poll(&p, 1, 200) == 0) break;
    } else if (!(n < 0 && errno == EINTR)) {
      wl_die("%s: send: %m", what);
    }
  }
  free(buf);
  wl_note("%s: %zu bytes queued (%zu of the 200 KiB); send queue %d", what, off + big, big,
          sock_queue(fd, SIOCOUTQ));
  return off + big;
}

static bool wait_for(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

/* Receives up to len bytes, waiting at most 5 s for each piece; returns the count. */
static size_t recv_upto(int fd, void* buf, size_t len) {
  size_t got = 0;
  while (got < len && wait_for(fd, POLLIN)) {
    ssize_t n = recv(fd, (char*)buf + got, len - got, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  return got;
}

/* Exactly `total` bytes of the stream `seed`, from offset 0. */
static void expect_stream(int fd, uint64_t seed, size_t total, const char* what) {
  unsigned char* buf = malloc(CHUNK);
  if (!buf) wl_die("malloc");
  size_t off = 0;
  long bad = -1;
  while (off < total) {
    size_t want = total - off < CHUNK ? total - off : CHUNK;
    size_t got = recv_upto(fd, buf, want);
    for (size_t i = 0; i < got && bad < 0; i++) {
      if (buf[i] != pat(seed, off + i)) bad = (long)(off + i);
    }
    off += got;
    if (got < want) break;
  }
  free(buf);
  wl_expect(off == total, "%s: %zu of the %zu queued bytes arrived", what, off, total);
  wl_expect(bad < 0, "%s: byte %ld of the queued stream differs", what, bad);
}

/* Exactly `text` next (within 5 s). */
static void expect_text(int fd, const char* text, const char* what) {
  size_t len = strlen(text);
  char buf[64];
  size_t got = recv_upto(fd, buf, len);
  wl_expect(got == len && memcmp(buf, text, len) == 0,
            "%s: received %zu bytes \"%.*s\", expected \"%s\"", what, got, (int)got, buf, text);
}

static void expect_nothing(int fd, const char* what) {
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  wl_expect(n < 0 && errno == EAGAIN, "%s: %zd (%s) where nothing more was queued", what, n,
            outcome(n));
}

static void expect_eof(int fd, const char* what) {
  char c;
  ssize_t n = -1;
  if (wait_for(fd, POLLIN)) n = recv(fd, &c, 1, MSG_DONTWAIT);
  wl_expect(n == 0, "%s: %zd (%s), expected EOF", what, n, outcome(n));
}

static void send_text(int fd, const char* text, const char* what) {
  size_t len = strlen(text), sent = 0;
  while (sent < len && wait_for(fd, POLLOUT)) {
    ssize_t n = send(fd, text + sent, len - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    sent += (size_t)n;
  }
  wl_expect(sent == len, "%s: sent %zu of \"%s\": %m", what, sent, text);
}

static struct addr loopback(int family) {
  struct addr a;
  memset(&a, 0, sizeof a);
  if (family == AF_INET) {
    a.u.in.sin_family = AF_INET;
    a.u.in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.len = sizeof a.u.in;
  } else {
    a.u.in6.sin6_family = AF_INET6;
    a.u.in6.sin6_addr = in6addr_loopback;
    a.len = sizeof a.u.in6;
  }
  return a;
}

static int accept_one(int l) {
  if (!wait_for(l, POLLIN)) return -1;
  int fd;
  do {
    fd = accept(l, NULL, NULL);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

/* A new client for listener `l` (whose address is `at`): accepted with the options `inherited`
 * and carrying a message each way. */
static void check_new_connection(int l, const struct addr* at, const struct prof* inherited,
                                 const char* what) {
  struct pollfd p = {.fd = l, .events = POLLIN};
  wl_expect(poll(&p, 1, 0) == 0, "%s: a connection is waiting (revents 0x%x)", what, p.revents);
  int c = socket(at->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (!wl_expect(c >= 0 && connect(c, &at->u.sa, at->len) == 0, "%s: connect: %m", what)) {
    if (c >= 0) close(c);
    return;
  }
  int s = accept_one(l);
  if (wl_expect(s >= 0, "%s: the new client was not accepted: %m", what)) {
    char who[64];
    snprintf(who, sizeof who, "%s: accepted after the check began", what);
    expect_prof(s, inherited, CMP_INHERITED, who);
    struct addr cn = get_name(c, false), sp = get_name(s, true);
    wl_expect(same_addr(&cn, &sp), "%s: the accepted end's peer is not the client", what);
    send_text(c, "hello", what);
    expect_text(s, "hello", what);
    send_text(s, "welcome", what);
    expect_text(c, "welcome", what);
    close(s);
  }
  close(c);
}

static int listener(int family) {
  struct addr a = loopback(family);
  int l = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0) wl_die("socket: %m");
  set_int(l, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
  if (family == AF_INET) {
    set_int(l, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    set_int(l, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
    set_int(l, IPPROTO_TCP, TCP_KEEPIDLE, 900, "TCP_KEEPIDLE");
    set_int(l, IPPROTO_IP, IP_TOS, IPTOS_THROUGHPUT, "IP_TOS");
  } else {
    set_int(l, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
  }
  if (bind(l, &a.u.sa, a.len) != 0 || listen(l, 5) != 0) wl_die("listener: %m");
  return l;
}

static void child_main(const struct addr* at4, const struct addr* at6, struct wl_sync* up_sync,
                       struct wl_sync* down_sync, struct wl_sync* ready_sync) {
  int c4 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int c6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c4 < 0 || c6 < 0) wl_die("socket: %m");
  set_int(c4, SOL_SOCKET, SO_SNDBUF, 16384, "SO_SNDBUF");
  set_int(c4, SOL_SOCKET, SO_RCVBUF, 16384, "SO_RCVBUF");
  set_int(c4, IPPROTO_IP, IP_TOS, IPTOS_LOWDELAY, "IP_TOS");
  if (connect(c4, &at4->u.sa, at4->len) != 0) wl_die("connect to L4: %m");
  set_int(c6, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
  set_int(c6, IPPROTO_TCP, TCP_KEEPIDLE, 600, "TCP_KEEPIDLE");
  set_int(c6, IPPROTO_TCP, TCP_KEEPINTVL, 30, "TCP_KEEPINTVL");
  set_int(c6, IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT");
  set_int(c6, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS");
  if (connect(c6, &at6->u.sa, at6->len) != 0) wl_die("connect to L6: %m");
  if (fcntl(c6, F_SETFL, O_NONBLOCK) != 0) wl_die("fcntl: %m");

  struct up up;
  memset(&up, 0, sizeof up);
  up.total4 = queue_stream(c4, SEED_UP4, "c4");
  up.total6 = queue_stream(c6, SEED_UP6, "c6");
  up.name4 = get_name(c4, false);
  up.name6 = get_name(c6, false);
  wl_sync_post(up_sync, &up, sizeof up);
  struct down down;
  if (!wl_sync_wait(down_sync, 1, &down, sizeof down)) wl_die("root died during setup");
  struct prof p4, p6;
  get_prof(c4, &p4);
  get_prof(c6, &p6);
  note_prof("c4", &p4);
  note_prof("c6", &p6);
  wl_sync_post(ready_sync, NULL, 0);
  wl_wait_term();

  expect_prof(c4, &p4, CMP_ALL | CMP_BUFS, "c4");
  expect_prof(c6, &p6, CMP_ALL, "c6");
  expect_stream(c4, SEED_DOWN4, down.total4, "c4");
  expect_text(c4, "ping4", "c4");
  send_text(c4, "pong4", "c4");
  expect_stream(c6, SEED_DOWN6, down.total6, "c6");
  expect_text(c6, "ping6", "c6");
  send_text(c6, "pong6", "c6");
  expect_eof(c4, "c4");
  expect_eof(c6, "c6");
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int l4 = listener(AF_INET), l6 = listener(AF_INET6);
  struct addr at4 = get_name(l4, false), at6 = get_name(l6, false);

  struct wl_sync up_sync, down_sync, ready_sync;
  wl_sync_init(&up_sync);
  wl_sync_init(&down_sync);
  wl_sync_init(&ready_sync);
  pid_t child = wl_fork("client");
  if (child == 0) {
    close(l4);
    close(l6);
    child_main(&at4, &at6, &up_sync, &down_sync, &ready_sync);
  }

  int s4 = accept_one(l4), s6 = accept_one(l6);
  if (s4 < 0 || s6 < 0) wl_die("accept: %m");
  struct prof inherited4, inherited6;
  get_prof(s4, &inherited4);
  get_prof(s6, &inherited6);
  set_int(s4, IPPROTO_TCP, TCP_KEEPINTVL, 45, "TCP_KEEPINTVL");
  set_int(s4, IPPROTO_TCP, TCP_KEEPCNT, 3, "TCP_KEEPCNT");
  if (fcntl(s4, F_SETFL, O_NONBLOCK) != 0) wl_die("fcntl: %m");
  set_int(s6, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");

  struct down down;
  down.total4 = queue_stream(s4, SEED_DOWN4, "s4");
  down.total6 = queue_stream(s6, SEED_DOWN6, "s6");
  struct up up;
  if (!wl_sync_wait(&up_sync, 1, &up, sizeof up)) wl_die("client died during setup");
  wl_sync_post(&down_sync, &down, sizeof down);
  if (!wl_sync_wait(&ready_sync, 1, NULL, 0)) wl_die("client died during setup");
  struct prof pl4, pl6, ps4, ps6;
  get_prof(l4, &pl4);
  get_prof(l6, &pl6);
  get_prof(s4, &ps4);
  get_prof(s6, &ps6);
  note_prof("L4", &pl4);
  note_prof("L6", &pl6);
  note_prof("s4", &ps4);
  note_prof("s6", &ps6);
  wl_note("receive queues: s4 %d, s6 %d", sock_queue(s4, SIOCINQ), sock_queue(s6, SIOCINQ));
  char a[96], b[96];
  if (!same_addr(&ps4.peer, &up.name4) || !same_addr(&ps6.peer, &up.name6)) {
    wl_die("accepted peers %s, %s are not the client's sockets", fmt_addr(&ps4.peer, a, sizeof a),
           fmt_addr(&ps6.peer, b, sizeof b));
  }

  wl_ready();
  wl_wait_term();
  kill(child, SIGTERM);

  expect_prof(l4, &pl4, CMP_ALL, "L4");
  expect_prof(l6, &pl6, CMP_ALL, "L6");
  expect_prof(s4, &ps4, CMP_ALL, "s4");
  expect_prof(s6, &ps6, CMP_ALL, "s6");
  struct addr peer4 = get_name(s4, true), peer6 = get_name(s6, true);
  wl_expect(same_addr(&peer4, &up.name4), "s4: peer %s, the client's socket is %s",
            fmt_addr(&peer4, a, sizeof a), fmt_addr(&up.name4, b, sizeof b));
  wl_expect(same_addr(&peer6, &up.name6), "s6: peer %s, the client's socket is %s",
            fmt_addr(&peer6, a, sizeof a), fmt_addr(&up.name6, b, sizeof b));
  expect_stream(s4, SEED_UP4, up.total4, "s4");
  expect_stream(s6, SEED_UP6, up.total6, "s6");

  check_new_connection(l4, &at4, &inherited4, "L4");
  check_new_connection(l6, &at6, &inherited6, "L6");

  send_text(s4, "ping4", "s4");
  expect_text(s4, "pong4", "s4");
  expect_nothing(s4, "s4");
  send_text(s6, "ping6", "s6");
  expect_text(s6, "pong6", "s6");
  expect_nothing(s6, "s6");
  close(s4);
  close(s6);
  wl_reap(child, "client");
  wl_finish();
}
