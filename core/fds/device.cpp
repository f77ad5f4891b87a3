// Naming devices in refusals (device.h).
#include "core/fds/device.h"

#include <sys/sysmacros.h>
#include <unistd.h>

#include <fstream>

namespace crest::fds {
namespace {

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// The Open MPI 4.1 settings that keep every transport off network adapters: the ob1 PML with
// the shared-memory and TCP BTLs only (no UCX or CM PML, so neither UCX nor an OFI/PSM2 MTL),
// and no UCX one-sided component.
constexpr const char* kOpenMpiAvoid =
    "run the job on shared memory and TCP only, which crest saves: mpirun --mca pml ob1 --mca btl "
    "self,vader,tcp --mca osc ^ucx (or OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp "
    "OMPI_MCA_osc=^ucx in the job's environment)";

constexpr const char* kAdapterState =
    "its state (queue pairs, registered memory, the connections the adapter and the peers hold) "
    "lives in the adapter and on the other nodes, not in the process, and cannot be saved or made "
    "again";

}  // namespace

DeviceClass device_class(bool block, dev_t rdev) {
  DeviceClass d;
  const std::string base = std::string("/sys/dev/") + (block ? "block/" : "char/") +
                           std::to_string(major(rdev)) + ":" + std::to_string(minor(rdev));
  char buf[4096];
  ssize_t n = ::readlink((base + "/subsystem").c_str(), buf, sizeof buf - 1);
  if (n > 0) {
    std::string link(buf, static_cast<size_t>(n));
    auto slash = link.rfind('/');
    d.subsystem = slash == std::string::npos ? link : link.substr(slash + 1);
  }
  std::ifstream uevent(base + "/uevent");
  std::string line;
  while (std::getline(uevent, line))
    if (starts_with(line, "DEVNAME=")) d.devname = line.substr(8);
  return d;
}

std::string device_label(const DeviceClass& d) {
  if (d.subsystem.empty() && d.devname.empty()) return "";
  if (d.subsystem.empty()) return "device " + d.devname;
  if (d.devname.empty()) return d.subsystem + " device";
  return d.subsystem + " device " + d.devname;
}

std::string interconnect_reason(const DeviceClass& d, const std::string& path) {
  const std::string& s = d.subsystem;
  std::string name = d.devname;
  if (name.empty() && starts_with(path, "/dev/")) name = path.substr(5);
  std::string what;
  if (s == "infiniband_verbs" || starts_with(name, "infiniband/uverbs"))
    what = "an RDMA verbs device (an InfiniBand, RoCE, iWARP or EFA adapter: Open MPI's UCX PML, "
           "openib BTL or OFI MTL use it)";
  else if (s == "infiniband_mad" || starts_with(name, "infiniband/umad") ||
           starts_with(name, "infiniband/issm"))
    what = "an InfiniBand management device (subnet management datagrams)";
  else if (name == "infiniband/rdma_cm" || starts_with(name, "infiniband/"))
    what = "an RDMA device (the RDMA connection manager or another InfiniBand device)";
  else if (s == "hfi1" || starts_with(name, "hfi1"))
    what = "an Intel Omni-Path adapter (Open MPI's PSM2 MTL or OFI MTL use it)";
  else if (s == "cxi" || starts_with(name, "cxi"))
    what = "an HPE Slingshot adapter (Open MPI's OFI MTL uses it)";
  else if (s == "ipath" || s == "qib" || starts_with(name, "ipath"))
    what = "a QLogic InfiniPath adapter (Open MPI's PSM MTL uses it)";
  if (what.empty()) return "";
  return what + ": " + kAdapterState + "; " + kOpenMpiAvoid;
}

std::string device_refusal_detail(bool block, dev_t rdev, const std::string& path) {
  DeviceClass d = device_class(block, rdev);
  std::string out;
  if (std::string label = device_label(d); !label.empty()) out = " (" + label + ")";
  if (std::string why = interconnect_reason(d, path); !why.empty()) out += ": " + why;
  return out;
}

}  // namespace crest::fds
