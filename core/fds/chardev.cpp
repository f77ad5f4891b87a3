// Character devices that carry no state worth saving (/dev/null, zero, full, random, urandom):
// reopened by path, or, for a device node removed while open, made again (same numbers, mode
// and owner), opened and removed. Any other device is refused by name (its sysfs class and name;
// an HPC interconnect's adapter, InfiniBand/RDMA verbs, Omni-Path, Slingshot, with the Open MPI
// setting that avoids it: device.h). Dump and restore side by side. (A terminal on the root's stdio is inherited.cpp's; pseudo-terminals and /dev/tty are
// pty.cpp's.)
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <memory>

#include "core/fds/device.h"
#include "core/fds/fd_kind.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

bool stateless(dev_t rdev) {
  if (major(rdev) != 1) return false;
  switch (minor(rdev)) {
    case 3:  // null
    case 5:  // zero
    case 7:  // full
    case 8:  // random
    case 9:  // urandom
      return true;
  }
  return false;
}

class ChardevKind : public FdKind {
 public:
  const char* name() const override { return "character device"; }
  bool claims(const FdProbe& p) const override { return S_ISCHR(p.st.st_mode); }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    if (!stateless(probe.st.st_rdev)) {
      // Named as the kernel knows it (sysfs class and name); an interconnect's adapter with why
      // and how to run the job without it.
      DeviceClass d = device_class(false, probe.st.st_rdev);
      std::string label = device_label(d), why = interconnect_reason(d, probe.link);
      ctx.refuse(probe.where + " is the device " + probe.link + " (" +
                 std::to_string(major(probe.st.st_rdev)) + ":" +
                 std::to_string(minor(probe.st.st_rdev)) + (label.empty() ? "" : ", " + label) +
                 "); " +
                 (why.empty() ? "devices other than /dev/null, zero, full, random, urandom and "
                                "pseudo-terminals are not supported"
                              : why));
      return false;
    }
    rec.kind = static_cast<uint32_t>(schema::FileKind::chardev);
    if (strip_deleted(rec.path) || probe.st.st_nlink == 0) rec.deleted = 1;
    return true;
  }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override {
    for (const auto* f : rows) {
      if (!stateless(static_cast<dev_t>(f->rdev)))
        fail(Errc::corrupt, "file row " + std::to_string(f->id) + " is a device crest never saves");
      std::unique_ptr<Recreated> again;
      if (f->deleted) again = std::make_unique<Recreated>(*f, "device node");
      ctx.files[f->id] = reopen_path(again ? again->path() : f->path, f->flags, "open in the job");
    }
  }
  std::vector<std::string> restored() const override {
    return {"path", "access mode and status flags", "a device node removed while open (numbers, "
            "mode, owner)"};
  }
  std::vector<std::string> refused() const override {
    return {"every device but /dev/null, zero, full, random and urandom (a terminal on the root's "
            "stdio is inherited; pseudo-terminals and /dev/tty have their own kind), named with "
            "its kernel class; an interconnect's adapter (InfiniBand and other RDMA verbs devices, "
            "Omni-Path, Slingshot) with the Open MPI setting that keeps a job off it"};
  }
};

}  // namespace

const FdKind& chardev_kind() {
  static const ChardevKind kind;
  return kind;
}

}  // namespace crest::fds
