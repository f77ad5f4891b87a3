// Credentials: user and group ids (real, effective, saved, file system), supplementary groups,
// the five capability sets, securebits, no_new_privs and the dumpable flag; seccomp filters are
// installed in the same stage (seccomp.cpp). Dump and restore side by side.
//
// Restore runs as root in every thread (credentials are per thread) once the whole tree exists,
// in an order that keeps the privilege each step needs until it is done:
//   1. supplementary groups; the bounding set shrunk to what it was; ambient set emptied;
//   2. SECBIT_NO_SETUID_FIXUP, so that changing ids keeps every capability for the next steps;
//   3. real/effective/saved gids and uids, then the file system ids;
//   4. seccomp filters (they need CAP_SYS_ADMIN or no_new_privs; crest's own calls into the task
//      bypass them while it is stopped: PTRACE_O_SUSPEND_SECCOMP);
//   5. the inheritable set, then the ambient capabilities (each needs to be permitted and
//      inheritable), then the securebits as they were (changing them needs CAP_SETPCAP);
//   6. effective, permitted and inheritable sets as they were — dropping what crest had;
//   7. dumpable (a change of ids resets it) and no_new_privs (never undone).
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/context.h"
#include "core/util/error.h"

namespace crest {
namespace {

struct CapData {  // struct __user_cap_data_struct, version 3: two of them for 64 bits
  uint32_t effective, permitted, inheritable;
};

constexpr int kLastCap = 63;

uint64_t put_caps(RestoreContext& ctx, RestoredProcess& p, pid_t tid, uint64_t eff, uint64_t prm,
                  uint64_t inh) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  (void)tid;
  CapData data[2] = {{static_cast<uint32_t>(eff), static_cast<uint32_t>(prm), static_cast<uint32_t>(inh)},
                     {static_cast<uint32_t>(eff >> 32), static_cast<uint32_t>(prm >> 32),
                      static_cast<uint32_t>(inh >> 32)}};
  ctx.put(p, &hdr, sizeof hdr, 3072);
  ctx.put(p, data, sizeof data, 3072 + 64);
  return p.scratch + 3072;
}

std::string cap_list(uint64_t caps) {
  std::string out;
  for (int c = 0; c <= kLastCap; ++c)
    if (caps & (1ull << c)) out += (out.empty() ? "" : ",") + std::to_string(c);
  return out;
}

}  // namespace

void dump_credentials(DumpContext&, const ptrace::FrozenProcess&, schema::ProcessRecord& rec,
                      Injector& inj, uint64_t) {
  rec.securebits = static_cast<uint32_t>(
      inj.call("prctl(PR_GET_SECUREBITS)", SYS_prctl, PR_GET_SECUREBITS, 0, 0, 0, 0));
}

void restore_credentials(RestoreContext& ctx, RestoredProcess& p) {
  const auto& r = *p.rec;
  const std::string who = "process " + std::to_string(r.pid);
  std::vector<uint32_t> groups = r.groups;
  // What crest itself may give: its own permitted set bounds every set of the task.
  uint64_t have = 0;
  {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    CapData data[2]{};
    if (::syscall(SYS_capget, &hdr, data) == 0)
      have = data[0].permitted | (static_cast<uint64_t>(data[1].permitted) << 32);
  }
  const uint64_t missing = (r.cap_prm | r.cap_eff | r.cap_inh | r.cap_amb) & ~have;
  if (missing)
    fail(Errc::refused, who + " had capabilities this crest does not have (" + cap_list(missing) +
                            "); they cannot be given back");

  for (size_t i = 0; i < p.threads.size(); ++i) {
    std::unique_ptr<Injector> other;
    Injector* inj = p.inj.get();
    if (i > 0) {
      other = std::make_unique<Injector>(p.threads[i], p.scratch, Injector::Guard::none);
      other->forget_saved_state();
      inj = other.get();
    }
    // 1.
    uint64_t list = groups.empty() ? 0 : ctx.put(p, groups.data(), groups.size() * 4, 3072);
    inj->call("setgroups", SYS_setgroups, groups.size(), list);
    for (int c = 0; c <= kLastCap; ++c) {
      if (r.cap_bnd & (1ull << c)) continue;
      long rc = inj->raw(SYS_prctl, PR_CAPBSET_DROP, static_cast<uint64_t>(c), 0, 0, 0);
      if (rc < 0 && rc != -EINVAL)  // EINVAL: a capability this kernel does not have
        throw Error(Errc::kernel, who + ": PR_CAPBSET_DROP of capability " + std::to_string(c),
                    static_cast<int>(-rc));
    }
    inj->call("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", SYS_prctl, PR_CAP_AMBIENT,
              PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    // 2. + 3.
    inj->call("prctl(PR_SET_SECUREBITS)", SYS_prctl, PR_SET_SECUREBITS,
              SECBIT_NO_SETUID_FIXUP, 0, 0, 0);
    inj->call("setresgid", SYS_setresgid, r.gid, r.egid, r.sgid);
    inj->call("setresuid", SYS_setresuid, r.uid, r.euid, r.suid);
    inj->raw(SYS_setfsgid, r.fsgid);
    inj->raw(SYS_setfsuid, r.fsuid);
    if (inj->raw(SYS_setfsuid, static_cast<uint64_t>(-1)) != r.fsuid ||
        inj->raw(SYS_setfsgid, static_cast<uint64_t>(-1)) != r.fsgid)
      fail(Errc::kernel, who + ": file system ids " + std::to_string(r.fsuid) + "/" +
                             std::to_string(r.fsgid) + " not taken");
    // 4.
    restore_seccomp(ctx, p, i, *inj);
    // 5.
    inj->call("capset (inheritable)", SYS_capset,
              put_caps(ctx, p, p.threads[i], have, have, r.cap_inh), p.scratch + 3072 + 64);
    for (int c = 0; c <= kLastCap; ++c)
      if (r.cap_amb & (1ull << c))
        inj->call("prctl(PR_CAP_AMBIENT_RAISE)", SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE,
                  static_cast<uint64_t>(c), 0, 0);
    inj->call("prctl(PR_SET_SECUREBITS)", SYS_prctl, PR_SET_SECUREBITS, r.securebits, 0, 0, 0);
    // 6.
    inj->call("capset", SYS_capset, put_caps(ctx, p, p.threads[i], r.cap_eff, r.cap_prm, r.cap_inh),
              p.scratch + 3072 + 64);
    // 7.
    inj->call("prctl(PR_SET_DUMPABLE)", SYS_prctl, PR_SET_DUMPABLE,
              (r.flags & schema::kProcessDumpableOff) ? 0 : 1, 0, 0, 0);
    const auto& t = *p.thread_recs[i];
    if (t.no_new_privs || (r.flags & schema::kProcessNoNewPrivs))
      inj->call("prctl(PR_SET_NO_NEW_PRIVS)", SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  }
}

}  // namespace crest
