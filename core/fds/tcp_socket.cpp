// TCP sockets: not restored yet (refused as sockets of their family).
#include "core/fds/fd_kind.h"

namespace crest::fds {
namespace {

class Kind : public FdKind {
 public:
  const char* name() const override { return "tcp socket"; }
  bool claims(const FdProbe&) const override { return false; }
  bool dump(DumpContext&, const FdProbe&, schema::FileRecord&) const override { return false; }
  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  std::vector<std::string> restored() const override { return {}; }
  std::vector<std::string> refused() const override { return {}; }
};

}  // namespace

const FdKind& tcp_socket_kind() {
  static const Kind kind;
  return kind;
}

}  // namespace crest::fds
