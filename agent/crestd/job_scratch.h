// A directory of the job's own on tmpfs, for what MPI libraries put in shared places.
//
// Open MPI names a job's session directory (`<tmpdir>/ompi.<host>.<uid>/pid.<mpirun pid>`) and
// its vader shared-memory segments (`/dev/shm/vader_segment.<host>.<jobid>.<rank>`, the job id
// hashed from the host name and mpirun's pid) after mpirun's pid. Every job crest launches has a
// pid namespace of its own, where mpirun has the same small pid, and a restored job keeps its old
// pids: two such jobs on one node would share those names, map each other's segments and crash.
// So each launched job gets `/dev/shm/crest-job.<uid>.<random>`, owned by its user, and
// OMPI_MCA_orte_tmpdir_base and OMPI_MCA_btl_vader_backing_directory point there unless the job's
// environment sets them already. The directory is on tmpfs, so what Open MPI keeps there is saved
// with every checkpoint and made again (directory included) at restore, on any node.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace crest::agent {

// The Open MPI settings a job scratch directory is given through.
inline constexpr const char* kScratchVars[] = {"OMPI_MCA_orte_tmpdir_base",
                                               "OMPI_MCA_btl_vader_backing_directory"};

// Makes the directory under `base` (a tmpfs), mode 0700, owned by uid:gid. Returns "" and sets
// `why_not` when it cannot (base missing or not tmpfs, ...): the job then runs without one.
std::string make_job_scratch(const std::string& base, uid_t uid, gid_t gid, std::string& why_not);

// Whether `env` ("K=V" strings) sets all of them already (the job chose its own places).
bool sets_mpi_dirs(const std::vector<std::string>& env);

// Adds the settings to `env` for those it does not set.
void point_mpi_at(std::vector<std::string>& env, const std::string& dir);

// Removes the directory and everything in it, as uid:gid (a forked child that takes the user's
// credentials: a root daemon never walks a tree its user can change under it). Best effort.
void remove_job_scratch(const std::string& dir, uid_t uid, gid_t gid);

}  // namespace crest::agent
