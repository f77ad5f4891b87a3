// File locks and leases held by a tree (locks.cpp).
#pragma once

#include <string>
#include <vector>

#include "core/context.h"

namespace crest {

// Records the locks of one descriptor from its fdinfo "lock:" lines (dump_fds calls it for each
// descriptor; a lock seen through several descriptors is recorded once).
void dump_lock_lines(DumpContext& ctx, const ptrace::FrozenProcess& p, int fd, int64_t file_id,
                     const std::vector<std::string>& lines);
// Takes every lock and lease again, in the tasks that held them (after every fd is in place).
void restore_locks(RestoreContext& ctx);

}  // namespace crest
