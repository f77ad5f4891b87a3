// A job's images directory as the agent manages it: created for the job's user, every file of
// it owned by that user with mode 0600 after each commit, and trimmed by the retention policy.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/util/unique_fd.h"
#include "storage/image_store.h"

namespace crest::agent {

// Opens a job's images directory for crestd (root) to write in for uid:gid, walking the path one
// component at a time (openat, O_NOFOLLOW) and making what is missing (0755 for parents, 0700
// for dir itself, all root's). Refused (Errc::refused), naming the component: a symbolic link
// that is not root's in a directory of root's (another user could point it anywhere); a
// directory of a user other than root and uid; a directory others may write (group or other
// write bit; a sticky parent such as /tmp is fine), and '..'. The directory itself is then
// given to uid:gid, mode 0700. The descriptor pins it: a component renamed or replaced later
// does not move where crestd writes (use pinned_path()).
UniqueFd open_images_dir(const std::string& dir, uid_t uid, gid_t gid);
// A path that names the directory `dir` holds whatever its names become ("/proc/self/fd/N/.").
std::string pinned_path(const UniqueFd& dir);
// open_images_dir, for its checks and side effects only.
void prepare_images_dir(const std::string& dir, uid_t uid, gid_t gid);

// Gives every entry of the directory (checkpoints, latest, the lock) to uid:gid; files 0600.
// Only what crestd made is touched (root's regular files with one link, root's links), each
// through its own descriptor; links are never followed.
void own_images(const std::string& dir, uid_t uid, gid_t gid);

// Retention: keeps the newest `keep` complete checkpoints and every checkpoint they depend on,
// and removes the other complete ones, newest first (so no removal ever leaves a dependent
// behind). Chains are cut by the job's periodic full checkpoints (JobPolicy::full_every): a
// chain goes as a whole once no kept checkpoint is in it. (Compacting the oldest kept
// checkpoint from the images instead would spare the job those full dumps; the store's
// compact() cannot do that yet without invalidating the checkpoints built on it.) Unreadable
// files are left alone: they are not ours to judge.
struct Retention {
  std::vector<std::string> removed;
};
Retention apply_retention(storage::ImageStore& store, unsigned keep);

// The checkpoint a snapshot builds on (crest snapshot, with or without crestd): the newest
// complete checkpoint of the store if it and its whole chain verify (every chunk checksum); ""
// when the store has none. A damaged newest checkpoint is not built on (the snapshot is then
// full, starting a new chain) and `why` says what is wrong with it; an older one is never
// chosen instead.
std::string snapshot_parent(storage::ImageStore& store, std::string& why);

// Retention of crest snapshot: the newest `keep` checkpoints and what they depend on stay; the
// chain of the newest (`newest`) is compacted into one full checkpoint once it is max(2, keep)
// files long (its ancestors are left to the retention, not removed by the compaction), so the
// directory holds `keep` files (keep <= 2) or between keep and 2 * keep - 2. Returns what was
// removed.
Retention snapshot_retention(storage::ImageStore& store, const std::string& newest, unsigned keep);

// Files in the chain of `name` (1 for a full checkpoint).
unsigned chain_length(const std::vector<storage::CheckpointEntry>& entries, const std::string& name);

// Total bytes of the checkpoint files (ckpt-*) in dir.
uint64_t images_bytes(const std::string& dir);
unsigned images_count(const std::string& dir);

// Removes the checkpoints, latest and the lock from `at` (a pinned_path), then the directory if
// it is empty and `dir` still names it.
void remove_images(const std::string& at, const std::string& dir);

}  // namespace crest::agent
