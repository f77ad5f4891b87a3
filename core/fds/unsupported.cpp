// Descriptor kinds crest does not restore yet: claimed here so that each is refused by name.
#include <linux/magic.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

std::string socket_kind(int domain) {
  switch (domain) {
    case AF_INET: return "an IPv4 socket";
    case AF_INET6: return "an IPv6 socket";
    case AF_NETLINK: return "a netlink socket";
    case AF_PACKET: return "a packet socket";
    case -1: return "a socket";
  }
  return "a socket of address family " + std::to_string(domain);
}

// What an fd that crest cannot restore is, for the refusal; empty if it is something else.
std::string what_it_is(const FdProbe& p) {
  if (p.link.rfind("socket:", 0) == 0) return socket_kind(p.sock_domain);
  static const std::pair<const char*, const char*> anon[] = {
      {"[fanotify]", "a fanotify instance"}, {"[io_uring]", "an io_uring instance"},
      {"[userfaultfd]", "a userfaultfd"},    {"[perf_event]", "a perf event"},
      {"bpf", "a BPF object"},               {"[memfd_secret]", "a secret memory area"}};
  if (p.link.rfind("anon_inode:", 0) == 0) {
    for (auto& [needle, what] : anon)
      if (p.link.find(needle) != std::string::npos) return what;
    return "an anonymous-inode file (" + p.link.substr(11) + ")";
  }
  if (S_ISSOCK(p.st.st_mode)) return socket_kind(p.sock_domain);
  switch (fs_magic(p)) {
    case NSFS_MAGIC: return "a namespace file";
    case BPF_FS_MAGIC: return "a file of the BPF file system";
  }
  if (S_ISBLK(p.st.st_mode)) return "a block device";
  if (!S_ISREG(p.st.st_mode) && !S_ISDIR(p.st.st_mode) && !S_ISCHR(p.st.st_mode) &&
      !S_ISFIFO(p.st.st_mode))
    return "a kind of file crest does not handle";
  return "";
}

class UnsupportedKind : public FdKind {
 public:
  const char* name() const override { return "not supported yet"; }
  bool claims(const FdProbe& p) const override { return !what_it_is(p).empty(); }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord&) const override {
    ctx.refuse_object(probe.link, what_it_is(probe) + " (" + probe.link + "); not supported yet",
                      probe.pid, probe.fd);
    return false;
  }
  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  std::vector<std::string> restored() const override { return {}; }
  std::vector<std::string> refused() const override {
    return {"packet, raw, SCTP and other sockets of families crest does not restore", "fanotify", "io_uring", "userfaultfd", "perf events", "BPF objects",
            "block devices", "namespace files"};
  }
};

}  // namespace

const FdKind& unsupported_kind() {
  static const UnsupportedKind kind;
  return kind;
}

}  // namespace crest::fds
