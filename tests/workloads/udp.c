/* UDP over loopback, IPv4 and IPv6 side by side (N = 4 on 127.0.0.1, N = 6 on ::1; every port
 * chosen by the kernel):
 *   srvN (root) bound, O_NONBLOCK, with options set before any traffic:
 *          srv4: SO_RCVBUF 100000, SO_BROADCAST 1, IP_TOS 0x28, IP_TTL 33, IP_PKTINFO,
 *                IP_RECVTOS, IP_RECVTTL;
 *          srv6: IPV6_V6ONLY, IPV6_TCLASS 0x48, IPV6_UNICAST_HOPS 17, IPV6_RECVPKTINFO,
 *                IPV6_RECVTCLASS, IPV6_RECVHOPLIMIT.
 *        Six datagrams queued, unread, in this order, from the child "senders"' bN (bound to
 *        the loopback address) and kN (connect()ed to srvN, so bound by the connect):
 *          #  sender  bytes
 *          0  bN      100
 *          1  kN      0
 *          2  bN      8192
 *          3  kN      1
 *          4  kN      1400
 *          5  bN      0
 *        Payloads are patterns seeded by family and number.
 *   pN   (root) bound, O_NONBLOCK; cuN (child) connect()ed to pN. cuN sent "from-cu" (queued at
 *        pN) and pN sent "to-cu" to cuN (queued at cuN).
 * At setup the root records every option above as getsockopt reads it back (SO_RCVBUF doubled,
 * SO_PRIORITY as IP_TOS left it), with SO_SNDBUF, SO_TYPE and O_NONBLOCK.
 * On request, root: srvN's options and name as recorded; FIONREAD before each receive gives the
 * size of the next datagram; recvmsg returns the six in order, each whole (no MSG_TRUNC), its
 * payload intact, its sender address exactly bN's or kN's name, with the cmsgs its options ask
 * for: packet info naming lo and the loopback address (IPv4: as ipi_addr and ipi_spec_dst),
 * TOS/traffic class 0 (the senders set none) and the TTL/hop limit of their senders (compared
 * with the datagrams those send after the check). Then EAGAIN. srvN sends a datagram to itself:
 * it arrives with TOS 0x28 and TTL 33 (traffic class 0x48 and hop limit 17). srvN answers
 * "reply-b" to bN and "reply-k" to kN; a stranger sends "stranger" to cuN, then pN sends "again"
 * to cuN; pN reads "from-cu" then "after" from cuN's name, then EAGAIN; srvN then gets one new
 * datagram each from bN and kN (either order) with their names. The child checks its sockets'
 * names (kN's and cuN's peers are srvN and pN), reads "to-cu" and then "again" (not "stranger":
 * a connected socket takes only its peer's datagrams) from pN's address on cuN, then EAGAIN;
 * send() "after" on cuN; receives "reply-b"/"reply-k" from srvN on bN/kN, then sends the new
 * datagrams. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

#define NQ 6
#define MAXLEN 16384
#define SRV4_TOS 0x28
#define SRV4_TTL 33
#define SRV6_TCLASS 0x48
#define SRV6_HOPS 17

enum { B, K }; /* the two senders of the queued datagrams */
static const struct {
  int sender;
  size_t len;
} g_queue[NQ] = {{B, 100}, {K, 0}, {B, 8192}, {K, 1}, {K, 1400}, {B, 0}};

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

struct optdef {
  int level, opt;
  const char* name;
};
#define OPT(l, o) \
  { .level = (l), .opt = (o), .name = #o }
static const struct optdef g_opts4[] = {
    OPT(SOL_SOCKET, SO_TYPE),      OPT(SOL_SOCKET, SO_RCVBUF),   OPT(SOL_SOCKET, SO_SNDBUF),
    OPT(SOL_SOCKET, SO_BROADCAST), OPT(SOL_SOCKET, SO_PRIORITY), OPT(IPPROTO_IP, IP_TOS),
    OPT(IPPROTO_IP, IP_TTL),       OPT(IPPROTO_IP, IP_PKTINFO),  OPT(IPPROTO_IP, IP_RECVTOS),
    OPT(IPPROTO_IP, IP_RECVTTL),
};
static const struct optdef g_opts6[] = {
    OPT(SOL_SOCKET, SO_TYPE),
    OPT(SOL_SOCKET, SO_RCVBUF),
    OPT(SOL_SOCKET, SO_SNDBUF),
    OPT(SOL_SOCKET, SO_BROADCAST),
    OPT(SOL_SOCKET, SO_PRIORITY),
    OPT(IPPROTO_IPV6, IPV6_V6ONLY),
    OPT(IPPROTO_IPV6, IPV6_TCLASS),
    OPT(IPPROTO_IPV6, IPV6_UNICAST_HOPS),
    OPT(IPPROTO_IPV6, IPV6_RECVPKTINFO),
    OPT(IPPROTO_IPV6, IPV6_RECVTCLASS),
    OPT(IPPROTO_IPV6, IPV6_RECVHOPLIMIT),
};
#define NOPTS 16

/* One family's half of the workload. */
struct fam {
  int family;
  const char* tag; /* "4" or "6" */
  const struct optdef* opts;
  size_t nopts;
  int opt_vals[NOPTS];
  int srv_fl;
  int srv, p;   /* root */
  int b, k, cu; /* child */
  struct addr srv_a, p_a;
};

/* Names of the child's sockets, sent to the root at setup. */
struct names {
  struct addr b, k, cu;
};

struct dgram {
  ssize_t len;
  int flags;
  struct addr from;
  bool has_pktinfo, has_tos, has_ttl;
  int ifindex, tos, ttl;
  struct addr dst, spec_dst; /* address fields of the packet info, port 0 */
  unsigned char data[MAXLEN];
};

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
    snprintf(buf, len, "(%s)", a->err ? strerror(a->err) : "no address");
  } else if (a->u.sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &a->u.in.sin_addr, host, sizeof host);
    snprintf(buf, len, "%s:%u", host, ntohs(a->u.in.sin_port));
  } else if (a->u.sa.sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof host);
    snprintf(buf, len, "[%s]:%u", host, ntohs(a->u.in6.sin6_port));
  } else {
    snprintf(buf, len, "family %d length %u", a->u.sa.sa_family, (unsigned)a->len);
  }
  return buf;
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

static void expect_name(int fd, bool peer, const struct addr* want, const char* what) {
  struct addr got = get_name(fd, peer);
  char a[64], b[64];
  wl_expect(same_addr(&got, want), "%s: %s %s, expected %s", what,
            peer ? "getpeername" : "getsockname", fmt_addr(&got, a, sizeof a),
            fmt_addr(want, b, sizeof b));
}

static int udp_socket(int family, int flags) {
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC | flags, 0);
  if (fd < 0) wl_die("socket: %m");
  return fd;
}

static void bind_loopback(int fd, int family) {
  struct addr a = loopback(family);
  if (bind(fd, &a.u.sa, a.len) != 0) wl_die("bind: %m");
}

static int bound(int family, int flags) {
  int fd = udp_socket(family, flags);
  bind_loopback(fd, family);
  return fd;
}

static int connected(int family, const struct addr* to) {
  int fd = udp_socket(family, 0);
  if (connect(fd, &to->u.sa, to->len) != 0) wl_die("connect: %m");
  return fd;
}

static bool wait_in(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&p, 1, 5000);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

/* Receives one datagram (waiting up to 5 s when `wait`) with its sender and control messages.
 * Returns false (errno set) when there is none. */
static bool recv_dgram(int fd, struct dgram* d, bool wait) {
  memset(d, 0, offsetof(struct dgram, data));
  if (wait) wait_in(fd);
  char ctl[512];
  struct iovec iov = {.iov_base = d->data, .iov_len = sizeof d->data};
  struct msghdr m = {.msg_name = &d->from.u,
                     .msg_namelen = sizeof d->from.u,
                     .msg_iov = &iov,
                     .msg_iovlen = 1,
                     .msg_control = ctl,
                     .msg_controllen = sizeof ctl};
  ssize_t n;
  do {
    n = recvmsg(fd, &m, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return false;
  d->len = n;
  d->flags = m.msg_flags;
  d->from.len = m.msg_namelen;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      struct in_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof pi);
      d->has_pktinfo = true;
      d->ifindex = pi.ipi_ifindex;
      d->dst = loopback(AF_INET);
      d->dst.u.in.sin_port = 0;
      d->dst.u.in.sin_addr = pi.ipi_addr;
      d->spec_dst = d->dst;
      d->spec_dst.u.in.sin_addr = pi.ipi_spec_dst;
    } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) {
      unsigned char tos;
      memcpy(&tos, CMSG_DATA(c), 1);
      d->has_tos = true;
      d->tos = tos;
    } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) {
      d->has_ttl = true;
      memcpy(&d->ttl, CMSG_DATA(c), sizeof d->ttl);
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      struct in6_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof pi);
      d->has_pktinfo = true;
      d->ifindex = (int)pi.ipi6_ifindex;
      d->dst = loopback(AF_INET6);
      d->dst.u.in6.sin6_addr = pi.ipi6_addr;
      d->spec_dst = d->dst;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_TCLASS) {
      d->has_tos = true;
      memcpy(&d->tos, CMSG_DATA(c), sizeof d->tos);
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_HOPLIMIT) {
      d->has_ttl = true;
      memcpy(&d->ttl, CMSG_DATA(c), sizeof d->ttl);
    }
  }
  return true;
}

/* A datagram for srvN: the packet info names the loopback interface and address; TOS (traffic
 * class) as given; TTL (hop limit) as given, or any when ttl < 0. */
static void expect_meta(const struct fam* F, const struct dgram* d, int tos, int ttl,
                        const char* what) {
  struct addr lo = loopback(F->family);
  int lo_index = (int)if_nametoindex("lo");
  char a[64], b[64];
  if (wl_expect(d->has_pktinfo, "%s: no packet info", what)) {
    wl_expect(d->ifindex == lo_index, "%s: packet info interface %d, lo is %d", what, d->ifindex,
              lo_index);
    wl_expect(same_addr(&d->dst, &lo) && same_addr(&d->spec_dst, &lo),
              "%s: packet info addresses %s and %s", what, fmt_addr(&d->dst, a, sizeof a),
              fmt_addr(&d->spec_dst, b, sizeof b));
  }
  wl_expect(d->has_tos && d->tos == tos, "%s: TOS/traffic class %s%d, expected %d", what,
            d->has_tos ? "" : "missing ", d->tos, tos);
  wl_expect(d->has_ttl && (ttl < 0 || d->ttl == ttl), "%s: TTL/hop limit %s%d, expected %d", what,
            d->has_ttl ? "" : "missing ", d->ttl, ttl);
}

/* Exactly `text` from `from`, within 5 s. */
static void expect_text(int fd, const char* text, const struct addr* from, const char* what) {
  static struct dgram d;
  char a[64], b[64];
  if (!wl_expect(recv_dgram(fd, &d, true), "%s: no datagram \"%s\": %m", what, text)) return;
  size_t len = strlen(text);
  wl_expect(d.len == (ssize_t)len && memcmp(d.data, text, len) == 0,
            "%s: received %zd bytes \"%.*s\", expected \"%s\"", what, d.len,
            (int)(d.len > 0 ? d.len : 0), (const char*)d.data, text);
  wl_expect(same_addr(&d.from, from), "%s: \"%s\" came from %s, expected %s", what, text,
            fmt_addr(&d.from, a, sizeof a), fmt_addr(from, b, sizeof b));
}

static void expect_none(int fd, const char* what) {
  static struct dgram d;
  bool got = recv_dgram(fd, &d, false);
  wl_expect(!got && errno == EAGAIN, "%s: another datagram (%zd bytes, %m), expected EAGAIN", what,
            got ? d.len : -1);
}

static void send_to(int fd, const char* text, const struct addr* to, const char* what) {
  ssize_t n =
      to ? sendto(fd, text, strlen(text), 0, &to->u.sa, to->len) : send(fd, text, strlen(text), 0);
  wl_expect(n == (ssize_t)strlen(text), "%s: sending \"%s\": %zd, %m", what, text, n);
}

static uint64_t seed_of(const struct fam* F, int i) { return (uint64_t)(F->family * 100 + i); }

static void child_setup(struct fam* F, struct names* nm) {
  F->b = bound(F->family, 0);
  F->k = connected(F->family, &F->srv_a);
  F->cu = connected(F->family, &F->p_a);
  unsigned char buf[MAXLEN];
  for (int i = 0; i < NQ; i++) {
    wl_fill(buf, g_queue[i].len, seed_of(F, i));
    ssize_t n = g_queue[i].sender == B
                    ? sendto(F->b, buf, g_queue[i].len, 0, &F->srv_a.u.sa, F->srv_a.len)
                    : send(F->k, buf, g_queue[i].len, 0);
    if (n != (ssize_t)g_queue[i].len) wl_die("udp%s: sending #%d: %m", F->tag, i);
  }
  if (send(F->cu, "from-cu", 7, 0) != 7) wl_die("udp%s: cu: %m", F->tag);
  nm->b = get_name(F->b, false);
  nm->k = get_name(F->k, false);
  nm->cu = get_name(F->cu, false);
}

static void child_check(struct fam* F, const struct names* nm) {
  char what[32];
  snprintf(what, sizeof what, "cu%s", F->tag);
  expect_name(F->b, false, &nm->b, "b");
  expect_name(F->k, false, &nm->k, "k");
  expect_name(F->k, true, &F->srv_a, "k");
  expect_name(F->cu, false, &nm->cu, what);
  expect_name(F->cu, true, &F->p_a, what);
  expect_text(F->cu, "to-cu", &F->p_a, what);
  expect_text(F->cu, "again", &F->p_a, what);
  expect_none(F->cu, what);
  send_to(F->cu, "after", NULL, what);
  snprintf(what, sizeof what, "b%s", F->tag);
  expect_text(F->b, "reply-b", &F->srv_a, what);
  snprintf(what, sizeof what, "k%s", F->tag);
  expect_text(F->k, "reply-k", &F->srv_a, what);
  send_to(F->b, "new-b", &F->srv_a, "b");
  send_to(F->k, "new-k", NULL, "k");
}

static void root_setup(struct fam* F) {
  F->srv = udp_socket(F->family, SOCK_NONBLOCK);
  if (F->family == AF_INET) {
    set_int(F->srv, SOL_SOCKET, SO_RCVBUF, 100000, "SO_RCVBUF");
    set_int(F->srv, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    set_int(F->srv, IPPROTO_IP, IP_TOS, SRV4_TOS, "IP_TOS");
    set_int(F->srv, IPPROTO_IP, IP_TTL, SRV4_TTL, "IP_TTL");
    set_int(F->srv, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
    set_int(F->srv, IPPROTO_IP, IP_RECVTOS, 1, "IP_RECVTOS");
    set_int(F->srv, IPPROTO_IP, IP_RECVTTL, 1, "IP_RECVTTL");
  } else {
    set_int(F->srv, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
    set_int(F->srv, IPPROTO_IPV6, IPV6_TCLASS, SRV6_TCLASS, "IPV6_TCLASS");
    set_int(F->srv, IPPROTO_IPV6, IPV6_UNICAST_HOPS, SRV6_HOPS, "IPV6_UNICAST_HOPS");
    set_int(F->srv, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
    set_int(F->srv, IPPROTO_IPV6, IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS");
    set_int(F->srv, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT");
  }
  bind_loopback(F->srv, F->family);
  F->p = bound(F->family, SOCK_NONBLOCK);
  F->srv_a = get_name(F->srv, false);
  F->p_a = get_name(F->p, false);
  for (size_t i = 0; i < F->nopts; i++) {
    F->opt_vals[i] = get_int(F->srv, F->opts[i].level, F->opts[i].opt);
  }
  F->srv_fl = fcntl(F->srv, F_GETFL) & O_NONBLOCK;
}

static void root_check(struct fam* F, const struct names* nm) {
  char what[64], a[64], b[64];
  snprintf(what, sizeof what, "srv%s", F->tag);
  for (size_t i = 0; i < F->nopts; i++) {
    int v = get_int(F->srv, F->opts[i].level, F->opts[i].opt);
    wl_expect(v == F->opt_vals[i], "%s: %s %d, was %d", what, F->opts[i].name, v, F->opt_vals[i]);
  }
  int fl = fcntl(F->srv, F_GETFL) & O_NONBLOCK;
  wl_expect(fl == F->srv_fl, "%s: O_NONBLOCK %d, was %d", what, fl != 0, F->srv_fl != 0);
  struct addr unconnected = {.len = 0, .err = ENOTCONN};
  expect_name(F->srv, false, &F->srv_a, what);
  expect_name(F->srv, true, &unconnected, what);

  static struct dgram d;
  int ttl[NQ];
  int got = 0;
  for (int i = 0; i < NQ; i++) {
    snprintf(what, sizeof what, "srv%s datagram #%d", F->tag, i);
    size_t len = g_queue[i].len;
    int inq = -1;
    ioctl(F->srv, FIONREAD, &inq);
    wl_expect(inq == (int)len, "%s: FIONREAD %d, expected %zu", what, inq, len);
    if (!wl_expect(recv_dgram(F->srv, &d, false), "%s: missing: %m", what)) break;
    got++;
    wl_expect(d.len == (ssize_t)len && !(d.flags & MSG_TRUNC),
              "%s: %zd bytes (flags 0x%x), expected %zu", what, d.len, d.flags, len);
    long bad = d.len == (ssize_t)len ? wl_check(d.data, len, seed_of(F, i)) : -1;
    wl_expect(bad < 0, "%s: byte %ld differs", what, bad);
    const struct addr* from = g_queue[i].sender == B ? &nm->b : &nm->k;
    wl_expect(same_addr(&d.from, from), "%s: from %s, expected %s (%s)", what,
              fmt_addr(&d.from, a, sizeof a), fmt_addr(from, b, sizeof b),
              g_queue[i].sender == B ? "b" : "k");
    expect_meta(F, &d, 0, -1, what);
    ttl[i] = d.ttl;
  }
  snprintf(what, sizeof what, "srv%s", F->tag);
  if (got == NQ) expect_none(F->srv, what);

  /* srvN's own TOS and TTL, as its datagram to itself carries them. */
  send_to(F->srv, "self", &F->srv_a, what);
  if (wl_expect(recv_dgram(F->srv, &d, true), "%s: its datagram to itself is missing: %m", what)) {
    wl_expect(d.len == 4 && memcmp(d.data, "self", 4) == 0 && same_addr(&d.from, &F->srv_a),
              "%s: its datagram to itself is %zd bytes from %s", what, d.len,
              fmt_addr(&d.from, a, sizeof a));
    snprintf(what, sizeof what, "srv%s to itself", F->tag);
    if (F->family == AF_INET) {
      expect_meta(F, &d, SRV4_TOS, SRV4_TTL, what);
    } else {
      expect_meta(F, &d, SRV6_TCLASS, SRV6_HOPS, what);
    }
  }

  snprintf(what, sizeof what, "srv%s", F->tag);
  send_to(F->srv, "reply-b", &nm->b, what);
  send_to(F->srv, "reply-k", &nm->k, what);

  int x = udp_socket(F->family, 0);
  send_to(x, "stranger", &nm->cu, "stranger");
  snprintf(what, sizeof what, "p%s", F->tag);
  send_to(F->p, "again", &nm->cu, what);
  expect_name(F->p, false, &F->p_a, what);
  expect_text(F->p, "from-cu", &nm->cu, what);
  expect_text(F->p, "after", &nm->cu, what);
  expect_none(F->p, what);

  /* The senders' new datagrams, which set the TTL/hop limit the queued ones must have had. */
  bool seen[2] = {false, false};
  for (int j = 0; j < 2; j++) {
    snprintf(what, sizeof what, "srv%s new datagram", F->tag);
    if (!wl_expect(recv_dgram(F->srv, &d, true), "%s: missing: %m", what)) break;
    int s = d.len == 5 && memcmp(d.data, "new-b", 5) == 0   ? B
            : d.len == 5 && memcmp(d.data, "new-k", 5) == 0 ? K
                                                            : -1;
    if (!wl_expect(s >= 0 && !seen[s], "%s: unexpected %zd bytes \"%.*s\"", what, d.len,
                   (int)(d.len > 0 ? d.len : 0), (const char*)d.data)) {
      continue;
    }
    seen[s] = true;
    const struct addr* from = s == B ? &nm->b : &nm->k;
    wl_expect(same_addr(&d.from, from), "%s: from %s, expected %s", what,
              fmt_addr(&d.from, a, sizeof a), fmt_addr(from, b, sizeof b));
    expect_meta(F, &d, 0, -1, what);
    for (int i = 0; i < got; i++) {
      if (g_queue[i].sender == s) {
        wl_expect(ttl[i] == d.ttl, "srv%s datagram #%d: TTL/hop limit %d, its sender's is %d",
                  F->tag, i, ttl[i], d.ttl);
      }
    }
  }
  snprintf(what, sizeof what, "srv%s", F->tag);
  expect_none(F->srv, what);
  close(x);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct fam fams[2] = {
      {.family = AF_INET, .tag = "4", .opts = g_opts4, .nopts = sizeof g_opts4 / sizeof g_opts4[0]},
      {.family = AF_INET6,
       .tag = "6",
       .opts = g_opts6,
       .nopts = sizeof g_opts6 / sizeof g_opts6[0]},
  };
  for (int f = 0; f < 2; f++) root_setup(&fams[f]);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("senders");
  struct names nm[2];
  memset(nm, 0, sizeof nm);
  if (child == 0) {
    for (int f = 0; f < 2; f++) {
      close(fams[f].srv);
      close(fams[f].p);
      child_setup(&fams[f], &nm[f]);
    }
    wl_sync_post(&sync, nm, sizeof nm);
    wl_wait_term();
    for (int f = 0; f < 2; f++) child_check(&fams[f], &nm[f]);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, nm, sizeof nm)) wl_die("senders died during setup");
  for (int f = 0; f < 2; f++) {
    struct fam* F = &fams[f];
    if (sendto(F->p, "to-cu", 5, 0, &nm[f].cu.u.sa, nm[f].cu.len) != 5) wl_die("to-cu: %m");
    if (!wait_in(F->srv) || !wait_in(F->p)) wl_die("udp%s: nothing arrived", F->tag);
    char a[64];
    wl_note("srv%s %s: SO_RCVBUF %d, SO_PRIORITY %d", F->tag, fmt_addr(&F->srv_a, a, sizeof a),
            get_int(F->srv, SOL_SOCKET, SO_RCVBUF), get_int(F->srv, SOL_SOCKET, SO_PRIORITY));
  }

  wl_ready();
  wl_wait_term();
  kill(child, SIGTERM);
  for (int f = 0; f < 2; f++) root_check(&fams[f], &nm[f]);
  wl_reap(child, "senders");
  wl_finish();
}
