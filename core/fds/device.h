// What a refusal says about a device: its kernel class and name (sysfs), and for the devices of
// HPC interconnects (InfiniBand and other RDMA verbs adapters, Omni-Path, Slingshot) what they
// are, why a checkpoint cannot hold them, and the Open MPI setting that keeps a job off them.
// Used by the descriptor kind of character devices (chardev.cpp) and for device mappings
// (memory.cpp).
#pragma once

#include <sys/types.h>

#include <string>

namespace crest::fds {

// A device as sysfs names it: /sys/dev/{char,block}/MAJ:MIN's class (the "subsystem" link's
// last part: "misc", "infiniband_verbs", "tty"...) and DEVNAME from its uevent (the node's
// name under /dev: "fuse", "infiniband/uverbs0"). Empty strings when sysfs does not say.
struct DeviceClass {
  std::string subsystem;
  std::string devname;
};

DeviceClass device_class(bool block, dev_t rdev);

// "misc device fuse", "infiniband_verbs device infiniband/uverbs0", or "" when unknown.
std::string device_label(const DeviceClass& d);

// For the device of an HPC interconnect, what it is and what to do: "an RDMA verbs device
// (InfiniBand, RoCE, iWARP...): ...; run the job on shared memory and TCP only: mpirun --mca pml
// ob1 ..."; "" for any other device. `path` is the device's path as the process sees it (used
// when sysfs does not know the device: a node under /dev/infiniband/).
std::string interconnect_reason(const DeviceClass& d, const std::string& path);

// The whole explanation a refusal appends after naming the device's path and numbers:
// " (misc device fuse)" and, for an interconnect, ": <interconnect_reason>". May be "".
std::string device_refusal_detail(bool block, dev_t rdev, const std::string& path);

}  // namespace crest::fds
