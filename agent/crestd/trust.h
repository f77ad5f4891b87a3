// What crestd checks before it restores a user's images as root.
//
// A job's images belong to its user (0600, in a directory of theirs), so the user can rewrite
// them. crestd restores as root: without a check, an edited image could bring a process back
// with root's credentials, or have root open, map, truncate or create files the user may not
// touch. So, for a job of an unprivileged user, the checkpoint is refused unless every process
// in it has exactly the user's identity (uid, gid in the user's groups, no capabilities) and the
// user could open every file the restore opens, in the way it opens it (checked by a child that
// takes the user's credentials and asks the kernel, access(2)).
#pragma once

#include <sys/types.h>

#include "storage/schema.h"

namespace crest::agent {

// Throws Errc::refused naming the first process or path that fails, and why.
void check_image_for_owner(const schema::CheckpointMeta& meta, uid_t uid, gid_t gid);

}  // namespace crest::agent
