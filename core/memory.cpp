// Memory: VMAs and their pages. Dump and restore side by side.
//
// Dump: every VMA of /proc/PID/smaps is recorded with its exact protection, flags, offset and
// advice. Which pages are saved depends on the kind:
//   anonymous private (heap, stacks, anon mmaps)  every present page
//   file private                                   only pages that differ from the file (anon COW)
//   file shared                                    nothing: the contents are the file
//   shared memory, memfd, unlinked files           the object's contents, once, under its own owner
//   [vdso] [vvar] [vvar_vclock] [vsyscall]         nothing: moved (same kernel build) or fixed
// Present pages are found with PAGEMAP_SCAN, never by reading holes (that would map the zero page
// everywhere). A child's page that is the very frame of its parent's page at the same address
// (copy-on-write shared since fork) is recorded as cow_parent and restored by inheritance.
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/mman.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>

#include <xxhash.h>

#include "core/context.h"
#include "core/fds/device.h"
#include "core/fds/fd_kind.h"
#include "core/kernel/compat.h"
#include "core/lazy.h"
#include "core/pagemap.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest {
namespace {

using schema::VmaKind;

bool is_vdso_name(const std::string& n) {
  return n == "[vdso]" || n == "[vvar]" || n == "[vvar_vclock]";
}

// VmFlags crest restores as they were (see restore_memory and finish_memory).
constexpr uint64_t kRestoredFlags =
    schema::vmflag("rd") | schema::vmflag("wr") | schema::vmflag("ex") | schema::vmflag("sh") |
    schema::vmflag("mr") | schema::vmflag("mw") | schema::vmflag("me") | schema::vmflag("ms") |
    schema::vmflag("gd") | schema::vmflag("lo") | schema::vmflag("sr") | schema::vmflag("rr") |
    schema::vmflag("dc") | schema::vmflag("ac") | schema::vmflag("nr") | schema::vmflag("wf") |
    schema::vmflag("dd") | schema::vmflag("hg") | schema::vmflag("nh") | schema::vmflag("mg") |
    schema::vmflag("sl") | schema::vmflag("lf") | schema::vmflag("dp") | schema::vmflag("gu") |
    schema::vmflag("de");
// Flags of crest's own dirty tracking (userfaultfd write-protect, soft-dirty): not the program's.
// A program's own userfaultfd registration comes with a userfaultfd descriptor, refused with it.
constexpr uint64_t kTrackerFlags =
    schema::vmflag("um") | schema::vmflag("uw") | schema::vmflag("ui") | schema::vmflag("sd");

// Flags a fork does not give the child: it has none of the VMA (dc) or an empty one (wf).
constexpr uint64_t kNotInherited = schema::vmflag("dc") | schema::vmflag("wf");
// Flags that a child's copy of a VMA does not take from its parent's: memory locks (a fork
// never copies them) and crest's own tracking.
constexpr uint64_t kPerProcessFlags = schema::vmflag("lo") | schema::vmflag("lf") | kTrackerFlags;

// Why a mapping with this flag cannot be checkpointed, or null.
const char* refused_flag_reason(std::string_view f) {
  if (f == "pf" || f == "io" || f == "mm" || f == "ar")
    return "a device mapping (PFN, I/O or mixed map) cannot be checkpointed";
  if (f == "ht") return "hugetlbfs mappings are not supported yet";
  if (f == "sf") return "synchronous DAX mappings (MAP_SYNC) are not supported";
  if (f == "ss") return "shadow stacks (CET) are not supported yet";
  if (f == "bt" || f == "mt") return "an arm64 mapping flag on this machine";
  // Missing-mode registration is only ever crest's lazy restore (a program's own comes with a
  // userfaultfd descriptor, refused with it): pages not served yet read as absent here.
  if (f == "um")
    return "its pages are still being served by a lazy restore (userfaultfd); checkpoint it "
           "once crest restore --lazy has made it all resident";
  return nullptr;
}

std::string strip_deleted(std::string name) {
  static const std::string suffix = " (deleted)";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
    name.resize(name.size() - suffix.size());
  return name;
}

std::string range_name(const proc::Mapping& m) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%llx-%llx", static_cast<unsigned long long>(m.start),
                static_cast<unsigned long long>(m.end));
  return buf;
}

// For a mapping of a device: what device.h says about it (" (infiniband_verbs device
// infiniband/uverbs0): an RDMA verbs device ..."); "" for anything else.
std::string device_of_mapping(pid_t pid, const proc::Mapping& m) {
  struct stat st {};
  if (m.inode == 0 || ::stat(proc::path(pid, "map_files/" + range_name(m)).c_str(), &st) != 0) return "";
  if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode)) return "";
  return fds::device_refusal_detail(S_ISBLK(st.st_mode), st.st_rdev, m.name);
}

}  // namespace

uint64_t file_owner(uint64_t dev, uint64_t ino) {
  uint64_t key[2] = {dev, ino};
  return (1ull << 63) | (XXH3_64bits(key, sizeof key) >> 1);
}

// Plans the reading of a file object's contents (memfd, shared memory, unlinked file): only the
// ranges the file has data in (SEEK_DATA/SEEK_HOLE), once per object.
void plan_file_contents(DumpContext& ctx, schema::FileRecord& f, const std::string& open_path) {
  f.contents_owner = file_owner(f.dev, f.ino);
  if (!ctx.planned_owners.insert(f.contents_owner).second) return;
  int fd = ::open(open_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ctx.refuse("cannot open " + open_path + " to save the contents of " + f.path + ": " +
               std::strerror(errno));
    return;
  }
  ctx.held_fds.emplace_back(fd);
  off_t size = static_cast<off_t>(f.size);
  off_t pos = 0;
  while (pos < size) {
    off_t data = ::lseek(fd, pos, SEEK_DATA);
    if (data < 0) break;  // ENXIO: no more data
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = size;
    uint64_t first = static_cast<uint64_t>(data) / 4096 * 4096;
    uint64_t last = (static_cast<uint64_t>(std::min(hole, size)) + 4095) / 4096 * 4096;
    if (last > first) {
      PageRead r;
      r.owner = f.contents_owner;
      r.addr = first;
      r.npages = (last - first) / 4096;
      r.fd = fd;
      ctx.page_reads.push_back(r);
    }
    pos = hole;
  }
}

// pagemap bit 58 (Linux 6.14): the page is in a guard region (MADV_GUARD_INSTALL).
constexpr uint64_t kPmGuard = 1ull << 58;
// The swap type of a pagemap entry in swap (its low 5 bits, shown to CAP_SYS_ADMIN only) that is
// no swap area but a marker holding no data: SWP_PTE_MARKER, the last of the 2^5 types (a uffd-wp
// marker on a page never populated, a guard region, a poisoned page).
constexpr uint64_t kSwapTypeMask = 31, kSwapTypeMarker = 31;

// The pages of a private mapping that hold data: present ones, and those in swap or being
// migrated, which hold it as much (left out, they would come back as zeros). A swap entry
// that is a marker holds none; without CAP_SYS_ADMIN the type is hidden (0) and a marker is read
// like a page in swap, as zeros: the same contents.
static std::vector<PageRange> private_pages(Pagemap& pagemap, uint64_t start, uint64_t end,
                                            bool file_pages_too) {
  // For a private file mapping only the pages no longer the file's page-cache pages (PAGE_IS_FILE
  // clear: anonymous copies made by a write).
  const uint64_t file = file_pages_too ? 0 : PAGE_IS_FILE;
  std::vector<PageRange> out;
  auto add = [&](uint64_t s, uint64_t e) {
    if (!out.empty() && out.back().end == s)
      out.back().end = e;
    else
      out.push_back({s, e, PAGE_IS_PRESENT});
  };
  for (const PageRange& r : pagemap.scan(start, end, file, file, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                                         PAGE_IS_PRESENT | PAGE_IS_SWAPPED)) {
    if (r.categories & PAGE_IS_PRESENT) {
      add(r.start, r.end);
      continue;
    }
    for (uint64_t at = r.start; at < r.end;) {
      const uint64_t n = std::min<uint64_t>((r.end - at) / 4096, 64 * 1024);
      auto e = pagemap.entries(at, n);
      for (uint64_t i = 0; i < n; ++i) {
        const bool data = (e[i] & kPmSwapped) && !(e[i] & kPmGuard) &&
                          (e[i] & kSwapTypeMask) != kSwapTypeMarker;
        if (data) add(at + i * 4096, at + (i + 1) * 4096);
      }
      at += n * 4096;
    }
  }
  return out;
}

// Guard regions (MADV_GUARD_INSTALL) of a VMA that may hold some: pagemap marks their pages
// (bit 58, Linux 6.14). They hold no data; restore installs them again.
static void dump_guards(DumpContext& ctx, Pagemap& pagemap, const schema::VmaRecord& v) {
  const uint64_t npages = (v.end - v.start) / 4096;
  for (uint64_t at = 0; at < npages;) {
    const uint64_t n = std::min<uint64_t>(npages - at, 64 * 1024);
    auto e = pagemap.entries(v.start + at * 4096, n);
    for (uint64_t i = 0; i < n;) {
      if (!(e[i] & kPmGuard)) {
        ++i;
        continue;
      }
      uint64_t j = i;
      while (j < n && (e[j] & kPmGuard)) ++j;
      auto& last = ctx.meta.guards;
      const uint64_t addr = v.start + (at + i) * 4096;
      if (!last.empty() && last.back().pid == v.pid &&
          last.back().addr + last.back().npages * 4096 == addr)
        last.back().npages += j - i;
      else
        last.push_back({v.pid, addr, j - i});
      i = j;
    }
    at += n;
  }
}

// Finds or adds the files row of the object a VMA maps.
// A named file on tmpfs (POSIX shared memory in /dev/shm, Open MPI's vader segments, a PMIx
// store under a tmpfs session directory) is memory of the job as much as a memfd: what a mapping
// of it holds at the checkpoint is saved, and the file is made again with it at restore (the job
// or its launcher usually removes such files when it dies).
static bool on_tmpfs(const std::string& path) {
  struct statfs sfs {};
  return ::statfs(path.c_str(), &sfs) == 0 && sfs.f_type == TMPFS_MAGIC;
}

static int64_t file_for_mapping(DumpContext& ctx, pid_t pid, const proc::Mapping& m,
                                const struct stat& st, bool contents, bool shm_file) {
  auto key = std::make_pair(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
  std::string map_path = proc::path(pid, "map_files/" + range_name(m));
  schema::FileRecord* f = nullptr;
  if (auto it = ctx.file_by_inode.find(key); it != ctx.file_by_inode.end()) f = ctx.file(it->second);
  if (f && shm_file && f->kind == static_cast<uint32_t>(schema::FileKind::regular)) {
    // Seen first as a descriptor: the description is reopened on the file made again.
    f->kind = static_cast<uint32_t>(schema::FileKind::shm_file);
  }
  if (!f) {
    schema::FileRecord rec;
    std::string name = strip_deleted(m.name);
    if (shm_file)
      rec.kind = static_cast<uint32_t>(schema::FileKind::shm_file);
    else if (m.name.rfind("/memfd:", 0) == 0)
      rec.kind = static_cast<uint32_t>(schema::FileKind::memfd);
    else if (m.name.rfind("/dev/zero", 0) == 0 && st.st_nlink == 0)
      rec.kind = static_cast<uint32_t>(schema::FileKind::shmem);
    else if (st.st_nlink == 0)
      rec.kind = static_cast<uint32_t>(schema::FileKind::unlinked);
    else
      rec.kind = static_cast<uint32_t>(schema::FileKind::regular);
    rec.path = name;
    rec.flags = O_RDONLY;
    rec.dev = st.st_dev;
    rec.ino = st.st_ino;
    rec.mode = st.st_mode;
    rec.uid = st.st_uid;
    rec.gid = st.st_gid;
    if (rec.kind == static_cast<uint32_t>(schema::FileKind::memfd)) rec.seals = fds::read_seals(map_path);
    rec.size = static_cast<uint64_t>(st.st_size);
    rec.mtime_ns = st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
    f = &ctx.add_file(std::move(rec));
    ctx.file_by_inode[key] = f->id;
  }
  if (contents) plan_file_contents(ctx, *f, map_path);
  return f->id;
}

// The frozen process's mappings with their VmFlags: from the smaps read before the freeze when
// every mapping is still exactly as it was then, else from smaps now.
static std::vector<proc::Mapping> maps_with_flags(DumpContext& ctx, pid_t pid) {
  auto before = ctx.smaps_before.find(pid);
  if (before == ctx.smaps_before.end()) return proc::maps(pid, true);
  auto now = proc::maps(pid, false);
  const auto& old = before->second;
  if (now.size() != old.size()) return proc::maps(pid, true);
  for (size_t i = 0; i < now.size(); ++i) {
    const auto& a = now[i];
    const auto& b = old[i];
    if (a.start != b.start || a.end != b.end || a.read != b.read || a.write != b.write ||
        a.exec != b.exec || a.shared != b.shared || a.offset != b.offset || a.inode != b.inode ||
        a.name != b.name)
      return proc::maps(pid, true);
    now[i].vmflags = b.vmflags;
  }
  ctx.flags_from_before.insert(pid);
  return now;
}

void dump_memory(DumpContext& ctx, const ptrace::FrozenProcess& p) {
  const pid_t pid = p.pid;
  const pid_t rpid = ctx.recorded(pid);
  const std::string who = "process " + std::to_string(pid);
  Pagemap pagemap(pid);
  const size_t first_vma = ctx.meta.vmas.size();

  for (const proc::Mapping& m : maps_with_flags(ctx, pid)) {
    schema::VmaRecord v;
    v.pid = rpid;
    v.start = m.start;
    v.end = m.end;
    v.pgoff = m.offset;
    v.prot = (m.read ? PROT_READ : 0) | (m.write ? PROT_WRITE : 0) | (m.exec ? PROT_EXEC : 0);
    v.flags = (m.shared ? MAP_SHARED : MAP_PRIVATE) | (m.has_flag("gd") ? MAP_GROWSDOWN : 0);
    v.name = m.name;
    v.owner = process_owner(rpid);
    const std::string where = who + ": mapping " + range_name(m) + " " + m.name;
    bool refused = false;
    for (const auto& f : m.vmflags) {
      int bit = schema::vmflag_bit(f);
      if (bit < 0) {
        ctx.refuse(where + ": VmFlag \"" + f + "\" is unknown to this crest; it cannot say "
                   "whether a restore would keep it");
        refused = true;
        continue;
      }
      v.vmflags |= 1ull << bit;
      if (is_vdso_name(m.name) || m.name == "[vsyscall]") continue;  // the kernel's own
      if (const char* why = refused_flag_reason(f); why && !refused) {
        ctx.refuse(where + ": " + why + device_of_mapping(pid, m));
        refused = true;
      }
    }
    if (refused) continue;

    if (is_vdso_name(m.name)) {
      v.kind = static_cast<uint32_t>(VmaKind::vdso);
      ctx.meta.vmas.push_back(std::move(v));
      continue;
    }
    if (m.name == "[vsyscall]") {
      v.kind = static_cast<uint32_t>(VmaKind::vsyscall);
      ctx.meta.vmas.push_back(std::move(v));
      continue;
    }
    if (m.name.rfind("/SYSV", 0) == 0) {  // an attach of a System V segment: sysv_ipc.cpp
      if (!m.shared) {
        ctx.refuse(where + ": a private mapping of System V shared memory; not supported");
        continue;
      }
      v.kind = static_cast<uint32_t>(VmaKind::sysv_shm);
      v.owner = sysv_owner(static_cast<int32_t>(m.inode));  // its inode number is its shmid
      ctx.meta.vmas.push_back(std::move(v));
      continue;
    }
    if (m.name.rfind("[uprobes]", 0) == 0) {
      ctx.refuse(where + ": uprobes are attached to the process");
      continue;
    }
    if (m.name.rfind("/[aio]", 0) == 0) {  // an AIO context's ring: aio.cpp
      v.kind = static_cast<uint32_t>(VmaKind::aio);
      dump_aio_ring(ctx, p, v);
      ctx.meta.vmas.push_back(std::move(v));
      continue;
    }
    if ((v.vmflags & schema::vmflag("de")) && m.inode == 0)
      ctx.refuse(where + ": a special mapping the kernel made (VM_DONTEXPAND) that crest does not "
                 "know how to make again");

    bool read_private = false;  // save present private pages
    bool file_pages_too = true; // false: only pages that are not the file's own
    if (m.inode == 0) {
      if (m.shared) {
        ctx.refuse(where + ": shared mapping without a file; not supported");
        continue;
      }
      v.kind = static_cast<uint32_t>(VmaKind::anon_private);
      read_private = true;
    } else {
      struct stat st {};
      std::string map_path = proc::path(pid, "map_files/" + range_name(m));
      if (::stat(map_path.c_str(), &st) != 0) {
        ctx.refuse(where + ": cannot identify the mapped file: " + std::strerror(errno));
        continue;
      }
      if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
        ctx.refuse(where + ": mappings of devices cannot be checkpointed" +
                   fds::device_refusal_detail(S_ISBLK(st.st_mode), st.st_rdev, m.name));
        continue;
      }
      bool object = m.name.rfind("/memfd:", 0) == 0 || st.st_nlink == 0;
      bool shm_file = !object && m.shared && S_ISREG(st.st_mode) && on_tmpfs(map_path);
      if (shm_file) {
        struct stat now {};
        if (::stat(m.name.c_str(), &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
          ctx.refuse(where + ": " + m.name + " (on tmpfs, mapped shared) was renamed or replaced "
                     "since it was mapped; it is no longer reachable by its path");
          continue;
        }
      }
      v.file_id = file_for_mapping(ctx, pid, m, st, object || shm_file, shm_file);
      object = object || shm_file;
      if (m.shared) {
        v.kind = static_cast<uint32_t>(object ? VmaKind::memfd : VmaKind::file_shared);
        if (object) v.owner = ctx.file(v.file_id)->contents_owner;
      } else {
        v.kind = static_cast<uint32_t>(VmaKind::file_private);
        read_private = true;
        file_pages_too = false;
      }
    }

    if (read_private) {
      for (const PageRange& r : private_pages(pagemap, m.start, m.end, file_pages_too)) {
        PageRead rd;
        rd.owner = v.owner;
        rd.addr = r.start;
        rd.npages = r.pages();
        rd.pid = pid;
        rd.force = !m.read;
        rd.no_fork = (v.vmflags & (schema::vmflag("dc") | schema::vmflag("wf"))) != 0;
        ctx.page_reads.push_back(rd);
      }
    }
    if (v.vmflags & schema::vmflag("gu")) dump_guards(ctx, pagemap, v);
    ctx.meta.vmas.push_back(std::move(v));
  }
  // (This process's threads were the last recorded: searched from the end.)
  for (auto t = ctx.meta.threads.rbegin(); t != ctx.meta.threads.rend(); ++t)
    if (t->pid == rpid && t->tid == rpid) {
      dump_vma_mempolicies(ctx, pid, *t, first_vma);
      break;
    }
}

// A child's present private page that is the same physical frame as its parent's page at the
// same address is still shared copy-on-write since fork: store it once (for the parent) and let
// the restored child inherit it by being forked from its restored parent. Only VMAs that match
// the parent's exactly can be inherited that way.
void find_cow_shared(DumpContext& ctx) {
  std::map<pid_t, pid_t> host_of;  // recorded -> host pid
  for (auto& p : ctx.tree.processes()) host_of[ctx.recorded(p.pid)] = p.pid;
  std::map<pid_t, std::vector<const schema::VmaRecord*>> vmas_of;  // each in address order
  for (auto& v : ctx.meta.vmas) vmas_of[v.pid].push_back(&v);
  for (auto& [pid, vmas] : vmas_of)
    std::sort(vmas.begin(), vmas.end(), [](auto* a, auto* b) { return a->start < b->start; });
  std::map<pid_t, const schema::ProcessRecord*> record_of;
  for (auto& pr : ctx.meta.processes) record_of[pr.pid] = &pr;

  std::vector<PageRead> kept;
  kept.reserve(ctx.page_reads.size());
  // Group reads per process owner so that each child is compared with its parent once.
  std::map<uint64_t, std::vector<PageRead>> by_owner;
  for (auto& r : ctx.page_reads) {
    if (r.fd >= 0 || r.owner >= (1ull << 63)) {
      kept.push_back(r);
      continue;
    }
    by_owner[r.owner].push_back(r);
  }
  for (auto& [owner, reads] : by_owner) {
    auto rpid = static_cast<pid_t>(owner);
    auto rec = record_of.find(rpid);
    const schema::ProcessRecord* proc_rec = rec == record_of.end() ? nullptr : rec->second;
    pid_t parent = proc_rec ? proc_rec->ppid : 0;
    if (!proc_rec || parent == 0 || !host_of.count(parent)) {
      kept.insert(kept.end(), reads.begin(), reads.end());
      continue;
    }
    // Parent VMAs by start, to match exactly.
    std::map<uint64_t, const schema::VmaRecord*> parent_vmas;
    for (auto* v : vmas_of[parent]) parent_vmas[v->start] = v;
    const auto& own_vmas = vmas_of[rpid];
    auto matching = [&](uint64_t addr) -> bool {
      auto past = std::upper_bound(own_vmas.begin(), own_vmas.end(), addr,
                                   [](uint64_t a, auto* v) { return a < v->start; });
      if (past != own_vmas.begin()) {
        const auto* v = *std::prev(past);
        if (addr >= v->end) return false;
        if (v->kind != static_cast<uint32_t>(VmaKind::anon_private) &&
            v->kind != static_cast<uint32_t>(VmaKind::file_private))
          return false;
        auto it = parent_vmas.find(v->start);
        if (it == parent_vmas.end()) return false;
        const auto* pv = it->second;
        return pv->end == v->end && pv->prot == v->prot && pv->flags == v->flags &&
               pv->kind == v->kind && pv->file_id == v->file_id && pv->pgoff == v->pgoff &&
               ((pv->vmflags ^ v->vmflags) & ~kPerProcessFlags) == 0 &&
               !(pv->vmflags & kNotInherited);
      }
      return false;
    };
    Pagemap child_pm(host_of[rpid]);
    Pagemap parent_pm(host_of[parent]);
    for (const PageRead& r : reads) {
      if (!matching(r.addr)) {
        kept.push_back(r);
        continue;
      }
      auto ce = child_pm.entries(r.addr, r.npages);
      auto pe = parent_pm.entries(r.addr, r.npages);
      uint64_t i = 0;
      while (i < r.npages) {
        bool shared = (ce[i] & kPmPresent) && (pe[i] & kPmPresent) &&
                      (ce[i] & kPmPfnMask) == (pe[i] & kPmPfnMask) && (ce[i] & kPmPfnMask) != 0;
        uint64_t j = i + 1;
        while (j < r.npages) {
          bool s = (ce[j] & kPmPresent) && (pe[j] & kPmPresent) &&
                   (ce[j] & kPmPfnMask) == (pe[j] & kPmPfnMask) && (ce[j] & kPmPfnMask) != 0;
          if (s != shared) break;
          ++j;
        }
        if (shared) {
          schema::PageRun run;
          run.owner = r.owner;
          run.addr = r.addr + i * 4096;
          run.npages = j - i;
          run.kind = static_cast<uint32_t>(schema::PageKind::cow_parent);
          ctx.cow_runs.push_back(run);
        } else {
          PageRead part = r;
          part.addr = r.addr + i * 4096;
          part.npages = j - i;
          kept.push_back(part);
        }
        i = j;
      }
    }
  }
  ctx.page_reads = std::move(kept);
}

}  // namespace crest

// ---- restore ----------------------------------------------------------------------------------

namespace crest {
namespace {

// Linux 6.11 / 6.13 values, newer than Debian 12's headers.
constexpr uint64_t kMapDroppable = 0x08;
constexpr uint64_t kMadvGuardInstall = 102;
constexpr uint64_t kMadvGuardRemove = 103;
constexpr long kSysMseal = 462;

struct Range {
  uint64_t start, end;
};

bool overlaps(uint64_t s, uint64_t e, uint64_t s2, uint64_t e2) { return s < e2 && s2 < e; }

// [s, e) minus the sorted, disjoint `holes`.
std::vector<Range> subtract(uint64_t s, uint64_t e, const std::vector<Range>& holes) {
  std::vector<Range> out;
  uint64_t pos = s;
  for (auto& h : holes) {
    if (h.end <= pos || h.start >= e) continue;
    if (h.start > pos) out.push_back({pos, h.start});
    pos = std::max(pos, h.end);
  }
  if (pos < e) out.push_back({pos, e});
  return out;
}

// Whether a child's VMA is the one it inherited from its parent (private VMAs have different
// page owners in parent and child by design; shared ones the same object).
bool same_vma(const schema::VmaRecord& a, const schema::VmaRecord& b) {
  bool shared = (a.flags & MAP_SHARED) != 0;
  return a.start == b.start && a.end == b.end && a.prot == b.prot && a.flags == b.flags &&
         a.kind == b.kind && a.file_id == b.file_id && a.pgoff == b.pgoff &&
         (!shared || a.owner == b.owner) && ((a.vmflags ^ b.vmflags) & ~kPerProcessFlags) == 0;
}

bool has(const schema::VmaRecord& v, const char* flag) { return (v.vmflags & schema::vmflag(flag)) != 0; }

// A userfaultfd of a process being restored, with its fresh anonymous VMAs registered for
// missing pages: UFFDIO_COPY then allocates each page with its bytes, where a write through
// process_vm_writev first faults in a zeroed page and copies over it (the zeroing was a third of
// a big restore). Made in the process by an injected syscall, taken with pidfd_getfd, its copy
// there closed; closing ours ends the registration. Nothing faults on the registered ranges
// meanwhile: the process is stopped and only UFFDIO_COPY fills them.
class PageFiller {
 public:
  // Without a userfaultfd (refused, or an old kernel), valid() is false and pages are written.
  //
  // Lazy (crest restore --lazy, core/lazy.h): the registration outlives the restore, and the
  // pages of the registered ranges are not written here but served by LazyPages when touched.
  // Then the userfaultfd must see faults from the kernel too (a read() into a page not there
  // yet), and report forks, remaps, frees and unmaps; only memory whose every use keeps exact
  // under that is registered (see lazy_ok).
  PageFiller(pid_t pid, Injector& inj, const std::vector<const schema::VmaRecord*>& vmas,
             const std::set<uint64_t>& kept, bool lazy)
      : lazy_(lazy) {
    try {
      auto theirs = inj.call("userfaultfd", SYS_userfaultfd,
                             lazy ? O_CLOEXEC | O_NONBLOCK : O_CLOEXEC | UFFD_USER_MODE_ONLY);
      UniqueFd pidfd = proc::open_pidfd(pid);
      if (pidfd) uffd_ = proc::copy_fd(pidfd.get(), static_cast<int>(theirs));
      inj.call("close (userfaultfd)", SYS_close, theirs);
    } catch (const Error& e) {
      log::get("core.mem")->debug("process {}: no userfaultfd to fill pages with: {}", pid,
                                  e.what());
    }
    uffdio_api api{};
    api.api = UFFD_API;
    if (lazy)
      api.features = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
                     UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
    if (!uffd_ || ::ioctl(uffd_.get(), UFFDIO_API, &api) != 0) {
      if (lazy)
        throw_errno("--lazy: userfaultfd with fork/remap/remove/unmap events for process " +
                        std::to_string(pid),
                    uffd_ ? errno : EOPNOTSUPP, Errc::unsupported);
      uffd_.reset();
      return;
    }
    for (auto* v : vmas) {
      if (static_cast<VmaKind>(v->kind) != VmaKind::anon_private || kept.count(v->start)) continue;
      // UFFDIO_COPY makes 4 KiB pages: memory that would get transparent huge pages when
      // faulted in is written as before, so that it gets them again.
      if (has(*v, "hg")) continue;
      if (thp_always() && !has(*v, "nh")) continue;
      if (has(*v, "dp")) continue;  // droppable memory cannot be registered
      if (lazy && !lazy_ok(*v)) continue;
      uffdio_register reg{};
      reg.range = {v->start, v->end - v->start};
      reg.mode = UFFDIO_REGISTER_MODE_MISSING;
      if (::ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) == 0) ranges_.push_back({v->start, v->end});
    }
    std::sort(ranges_.begin(), ranges_.end(), [](auto& a, auto& b) { return a.start < b.start; });
  }

  // The registered range holding `addr`, or null.
  const Range* range_at(uint64_t addr) const {
    auto it = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                               [](uint64_t a, const Range& r) { return a < r.start; });
    if (it == ranges_.begin()) return nullptr;
    --it;
    return addr < it->end ? &*it : nullptr;
  }
  // The start of the first registered range after `addr`, or UINT64_MAX.
  uint64_t next_start(uint64_t addr) const {
    auto it = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                               [](uint64_t a, const Range& r) { return a < r.start; });
    return it == ranges_.end() ? UINT64_MAX : it->start;
  }

  // Fills [addr, addr + len) of one registered range; returns the bytes filled before a page that
  // is there already (EEXIST), which the caller writes instead.
  size_t copy(uint64_t addr, const std::byte* data, size_t len) {
    size_t done = 0;
    while (done < len) {
      uffdio_copy c{};
      c.dst = addr + done;
      c.src = reinterpret_cast<uint64_t>(data + done);
      c.len = len - done;
      if (::ioctl(uffd_.get(), UFFDIO_COPY, &c) == 0) return len;
      if (c.copy > 0) done += static_cast<size_t>(c.copy);
      if (errno == EEXIST) return done;
      if (errno != EAGAIN && errno != EINTR)
        throw_errno("UFFDIO_COPY of " + std::to_string(len - done) + " bytes at " +
                        std::to_string(addr + done),
                    errno, Errc::kernel);
    }
    return done;
  }

  bool valid() const { return static_cast<bool>(uffd_); }
  bool lazy() const { return lazy_; }
  // Lazy: the userfaultfd and its ranges, for LazyPages (empty when nothing was registered).
  UniqueFd take() { return ranges_.empty() ? UniqueFd() : std::move(uffd_); }
  std::vector<std::pair<uint64_t, uint64_t>> ranges() const {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (auto& r : ranges_) out.push_back({r.start, r.end});
    return out;
  }

 private:
  // Whether a VMA's pages may come later: writable memory (a read-only one is written through
  // /proc/PID/mem and then protected), not locked (mlock faults every page in while the restore
  // waits), without guard regions (installed over written pages), and whose fork copies it as it
  // is (a wipe-on-fork child must see zeros, not the image).
  static bool lazy_ok(const schema::VmaRecord& v) {
    return (v.prot & PROT_WRITE) && !has(v, "lo") && !has(v, "lf") && !has(v, "gu") &&
           !has(v, "wf") && !has(v, "dc");
  }

  static bool thp_always() {
    static const bool always = [] {
      std::string modes;  // "always [madvise] never": the one in brackets is in force
      std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
      std::getline(in, modes);
      return modes.find("[always]") != std::string::npos;
    }();
    return always;
  }

  bool lazy_ = false;
  UniqueFd uffd_;
  std::vector<Range> ranges_;  // sorted, disjoint
};

// Writes restored pages into the process: UFFDIO_COPY into fresh anonymous memory when a
// PageFiller can, else process_vm_writev where the mapping is writable, /proc/PID/mem (which may
// write read-only private pages) elsewhere.
class MemorySink : public storage::PageSink {
 public:
  MemorySink(pid_t pid, const std::vector<const schema::VmaRecord*>& vmas,
             const std::set<uint64_t>& kept, PageFiller& filler)
      : pid_(pid), vmas_(vmas), kept_(kept), filler_(filler) {}

  void on_pages(const storage::PageExtent& run, schema::PageKind kind,
                const std::byte* data) override {
    if (kind == schema::PageKind::cow_parent) return;
    if (kind == schema::PageKind::zero) {
      // Fresh anonymous memory and dropped inherited memory read as zeros already; a private
      // file mapping would show the file's bytes instead.
      const auto* v = vma_at(run.addr);
      if (!v || v->kind != static_cast<uint32_t>(VmaKind::file_private)) return;
      static const std::vector<std::byte> zeros(schema::kChunkBytes);
      for (uint64_t done = 0; done < run.npages;) {
        uint64_t n = std::min<uint64_t>(run.npages - done, schema::kChunkPages);
        write(run.addr + done * 4096, zeros.data(), n * 4096);
        done += n;
      }
      return;
    }
    write(run.addr, data, run.npages * 4096);
    pages_ += run.npages;
  }
  bool concurrent() const override { return true; }
  // Lazily served pages need not be read now.
  bool wants(const storage::PageExtent& run) const override {
    if (!filler_.valid() || !filler_.lazy()) return true;
    const Range* r = filler_.range_at(run.addr);
    return !r || r->end < run.addr + run.npages * 4096;
  }
  uint64_t pages() const { return pages_; }

 private:
  const schema::VmaRecord* vma_at(uint64_t addr) const {
    auto it = std::upper_bound(vmas_.begin(), vmas_.end(), addr,
                               [](uint64_t a, const schema::VmaRecord* v) { return a < v->start; });
    if (it == vmas_.begin()) return nullptr;
    --it;
    return addr < (*it)->end ? *it : nullptr;
  }
  void write(uint64_t addr, const std::byte* data, size_t len) {
    while (filler_.valid() && len > 0) {
      size_t n;
      if (const Range* r = filler_.range_at(addr)) {
        n = std::min<uint64_t>(len, r->end - addr);
        if (filler_.lazy()) {  // served later by LazyPages
          addr += n, data += n, len -= n;
          continue;
        }
        size_t filled = filler_.copy(addr, data, n);
        if (filled < n) n = filled + 4096;  // a page there already: written below
        write_pages(addr + filled, data + filled, n - filled);
      } else {
        n = std::min<uint64_t>(len, filler_.next_start(addr) - addr);
        write_pages(addr, data, n);
      }
      addr += n;
      data += n;
      len -= n;
    }
    if (!filler_.valid()) write_pages(addr, data, len);
  }
  void write_pages(uint64_t addr, const std::byte* data, size_t len) {
    if (len == 0) return;
    iovec local{const_cast<std::byte*>(data), len};
    iovec remote{reinterpret_cast<void*>(addr), len};
    if (::process_vm_writev(pid_, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(len)) return;
    // Not writable (a read-only private mapping, made so to keep its accounting exact): through
    // /proc/PID/mem, which writes a private copy of the page as a debugger would.
    std::call_once(mem_once_, [&] {
      mem_.reset(::open(proc::path(pid_, "mem").c_str(), O_RDWR | O_CLOEXEC));
    });
    if (!mem_) throw_errno("cannot open " + proc::path(pid_, "mem"), errno, Errc::kernel);
    for (size_t done = 0; done < len;) {
      ssize_t n = ::pwrite(mem_.get(), data + done, len - done, static_cast<off_t>(addr + done));
      if (n <= 0)
        throw_errno("cannot write " + std::to_string(len - done) + " bytes at " +
                        std::to_string(addr + done) + " of process " + std::to_string(pid_),
                    n < 0 ? errno : EIO, Errc::kernel);
      done += static_cast<size_t>(n);
    }
  }

  pid_t pid_;
  const std::vector<const schema::VmaRecord*>& vmas_;
  const std::set<uint64_t>& kept_;
  PageFiller& filler_;
  std::atomic<uint64_t> pages_ = 0;
  std::once_flag mem_once_;
  UniqueFd mem_;
};

uint64_t choose_scratch(const std::vector<proc::Mapping>& cur,
                        const std::vector<const schema::VmaRecord*>& target, uint64_t inherited) {
  static const uint64_t candidates[] = {0x10000000ull,     0x200000000ull,    0x300000000ull,
                                        0x10000000000ull,  0x20000000000ull,  0x3f0000000000ull,
                                        0x500000000000ull, 0x600000000000ull, 0x1000000ull};
  for (uint64_t c : candidates) {
    uint64_t e = c + kScratchSize;
    bool free = true;
    for (auto* v : target)
      if (overlaps(c, e, v->start, v->end)) free = false;
    for (auto& m : cur)
      if (overlaps(c, e, m.start, m.end) && !(c == inherited && m.start == c)) free = false;
    if (free) return c;
  }
  fail(Errc::unsupported, "no room for crest's scratch page in the process's address space");
}

// Lazy restore applies to a process no other task of the tree is made from (its children,
// and the members of a session or group it holds, are forked from it while the restore runs,
// and must inherit its memory complete). A zombie child is forked from it too, but only to end
// at once: its fork is reported to the page server like any other, and its memory is never
// read.
bool lazy_candidate(const RestoreContext& ctx, const RestoredProcess& p) {
  const pid_t me = p.rec->pid;
  for (auto& r : ctx.meta.processes)
    if (r.pid != me && !(r.flags & schema::kProcessZombie) &&
        (r.ppid == me || r.sid == me || r.pgid == me))
      return false;
  return true;
}

}  // namespace

void restore_memory(RestoreContext& ctx, RestoredProcess& p, const RestoredProcess* parent) {
  Injector& inj = *p.inj;
  const pid_t pid = p.pid;
  const pid_t rpid = p.rec->pid;

  std::vector<const schema::VmaRecord*> target;
  std::map<uint64_t, const schema::VmaRecord*> parent_vmas;
  target = ctx.rows_of(ctx.meta.vmas, rpid);
  if (parent)
    for (auto* v : ctx.rows_of(ctx.meta.vmas, parent->rec->pid)) parent_vmas[v->start] = v;
  std::sort(target.begin(), target.end(), [](auto* a, auto* b) { return a->start < b->start; });
  auto cur = proc::maps(pid);

  // 1. Scratch page for arguments; its first bytes are a `syscall` instruction that every later
  //    injection uses, so that moving the vdso cannot pull the instruction from under us.
  uint64_t inherited = parent ? parent->scratch : 0;
  uint64_t scratch = choose_scratch(cur, target, inherited);
  bool have_inherited = false;
  for (auto& m : cur)
    if (m.start == scratch && scratch == inherited) have_inherited = true;
  if (!have_inherited)
    inj.call("mmap (scratch)", SYS_mmap, scratch, kScratchSize, PROT_READ | PROT_WRITE | PROT_EXEC,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, static_cast<uint64_t>(-1), 0);
  static const unsigned char gadget[2] = {0x0f, 0x05};
  remote_write(pid, scratch, gadget, sizeof gadget);
  p.scratch = scratch;
  p.scratch_size = kScratchSize;
  inj.set_syscall_insn(scratch);

  // 2. An rseq registration inherited from the creator would make the kernel write into memory
  //    we are about to unmap.
  auto rseq = ptrace::get_rseq(pid);
  if (rseq.ptr) inj.call("rseq unregister", SYS_rseq, rseq.ptr, rseq.len, RSEQ_FLAG_UNREGISTER, rseq.sig);

  // 3. VMAs the parent had identically were inherited by the fork: keep them (and their
  //    copy-on-write pages).
  std::vector<Range> keep;
  if (parent) {
    for (auto* v : target) {
      auto kind = static_cast<VmaKind>(v->kind);
      // System V attaches are made again whole (a piece kept and a piece not would leave a hole).
      if (kind == VmaKind::vdso || kind == VmaKind::vsyscall || kind == VmaKind::sysv_shm) continue;
      auto it = parent_vmas.find(v->start);
      if (it == parent_vmas.end() || !same_vma(*it->second, *v) ||
          (it->second->vmflags & kNotInherited))
        continue;
      bool present = false;
      for (auto& m : cur)
        if (m.start <= v->start && v->end <= m.end) present = true;
      if (!present) continue;
      p.kept_vmas.insert(v->start);
      keep.push_back({v->start, v->end});
    }
  }
  keep.push_back({scratch, scratch + kScratchSize});
  std::sort(keep.begin(), keep.end(), [](auto& a, auto& b) { return a.start < b.start; });

  // 4. Everything else goes, but the vdso family (moved below) and [vsyscall] (fixed).
  {
    SyscallBatch batch = batch_in(p);
    for (auto& m : cur) {
      if (is_vdso_name(m.name) || m.name == "[vsyscall]") continue;
      for (auto& r : subtract(m.start, m.end, keep)) batch.add("munmap", SYS_munmap, r.start, r.end - r.start);
    }
    batch.flush();
  }

  // 5. [vvar], [vvar_vclock] and [vdso] move together, by one delta, to where they were: through
  //    a parking area first so that the old and new places may overlap.
  std::map<std::string, const proc::Mapping*> cur_vdso;
  for (auto& m : cur)
    if (is_vdso_name(m.name)) cur_vdso[m.name] = &m;
  std::map<std::string, const schema::VmaRecord*> want_vdso;
  for (auto* v : target)
    if (static_cast<VmaKind>(v->kind) == VmaKind::vdso) want_vdso[v->name] = v;
  if (!want_vdso.count("[vdso]") || !cur_vdso.count("[vdso]"))
    fail(Errc::unsupported, "no [vdso] in the image or in the new process");
  for (auto& [name, v] : want_vdso) {
    auto it = cur_vdso.find(name);
    if (it == cur_vdso.end() || it->second->end - it->second->start != v->end - v->start)
      fail(Errc::refused, "the " + name + " layout of this kernel differs from the image's");
  }
  int64_t delta = static_cast<int64_t>(want_vdso["[vdso]"]->start) -
                  static_cast<int64_t>(cur_vdso["[vdso]"]->start);
  if (delta != 0) {
    uint64_t lo = UINT64_MAX, hi = 0;
    for (auto& [name, m] : cur_vdso) lo = std::min(lo, m->start), hi = std::max(hi, m->end);
    std::vector<const proc::Mapping*> parking_cur;
    uint64_t park = 0;
    for (uint64_t c : {0x7e0000000000ull, 0x6e0000000000ull, 0x5e0000000000ull}) {
      bool free = true;
      for (auto* v : target)
        if (overlaps(c, c + (hi - lo), v->start, v->end)) free = false;
      for (auto& m : cur)
        if (overlaps(c, c + (hi - lo), m.start, m.end)) free = false;
      if (free) {
        park = c;
        break;
      }
    }
    if (!park) fail(Errc::unsupported, "no room to move the vdso");
    for (auto& [name, m] : cur_vdso)
      inj.call("mremap (vdso park)", SYS_mremap, m->start, m->end - m->start, m->end - m->start,
               MREMAP_MAYMOVE | MREMAP_FIXED, park + (m->start - lo));
    for (auto& [name, m] : cur_vdso)
      inj.call("mremap (vdso)", SYS_mremap, park + (m->start - lo), m->end - m->start,
               m->end - m->start, MREMAP_MAYMOVE | MREMAP_FIXED, want_vdso[name]->start);
  }

  // 6. Map every VMA not inherited, with the flags that decide its VmFlags: a private mapping
  //    that was charged to the commit limit ("ac") while read-only is mapped writable and made
  //    read-only after its pages are written (as its program did); one that was never charged
  //    is mapped read-only at once, and its pages go through /proc/PID/mem. Shared file
  //    mappings are made through a description with the access mode that decides whether they
  //    may later become writable ("mw"). AIO rings are made by aio.cpp.
  std::vector<const schema::VmaRecord*> reprotect;
  for (auto* v : target) {
    auto kind = static_cast<VmaKind>(v->kind);
    if (kind == VmaKind::vdso || kind == VmaKind::vsyscall || p.kept_vmas.count(v->start)) continue;
    if (kind == VmaKind::aio) {
      restore_aio_ring(ctx, p, *v);
      continue;
    }
    uint64_t len = v->end - v->start;
    uint64_t prot = v->prot;
    bool priv = kind == VmaKind::anon_private || kind == VmaKind::file_private;
    if (priv && !(prot & PROT_WRITE) && has(*v, "ac")) {
      prot |= PROT_WRITE;
      reprotect.push_back(v);
    }
    uint64_t flags = (v->flags & (MAP_SHARED | MAP_PRIVATE)) | MAP_FIXED_NOREPLACE |
                     ((v->flags & MAP_GROWSDOWN) ? MAP_GROWSDOWN : 0) |
                     (has(*v, "nr") ? MAP_NORESERVE : 0);
    if (has(*v, "dp")) flags = (flags & ~static_cast<uint64_t>(MAP_PRIVATE)) | kMapDroppable;
    uint64_t r;
    if (kind == VmaKind::sysv_shm) {
      restore_sysv_attach(ctx, p, *v);  // the whole attach at its first piece
      r = v->start;
    } else if (kind == VmaKind::anon_private) {
      r = inj.call("mmap", SYS_mmap, v->start, len, prot, flags | MAP_ANONYMOUS,
                   static_cast<uint64_t>(-1), 0);
    } else {
      UniqueFd ours = ctx.open_for_mapping(ctx.file(v->file_id), *v);
      int theirs = ctx.install_fd(p, ours.get());
      r = inj.call("mmap", SYS_mmap, v->start, len, prot, flags, static_cast<uint64_t>(theirs),
                   v->pgoff);
      inj.call("close", SYS_close, static_cast<uint64_t>(theirs));
    }
    if (r != v->start)
      fail(Errc::kernel, "mapping " + v->name + " landed at the wrong address");
    // Advice first: transparent huge pages are decided when the pages are written below.
    static const std::pair<const char*, int> advice[] = {
        {"dc", MADV_DONTFORK}, {"wf", MADV_WIPEONFORK}, {"dd", MADV_DONTDUMP},
        {"hg", MADV_HUGEPAGE}, {"nh", MADV_NOHUGEPAGE}, {"mg", MADV_MERGEABLE},
        {"sr", MADV_SEQUENTIAL}, {"rr", MADV_RANDOM}};
    for (auto [flag, adv] : advice)
      if (has(*v, flag) && !(has(*v, "dp") && (adv == MADV_WIPEONFORK || adv == MADV_DONTDUMP)))
        inj.call("madvise", SYS_madvise, v->start, len, static_cast<uint64_t>(adv));
    restore_vma_mempolicy(ctx, p, *v);
    // A VMA where guard regions were once installed keeps saying so ("gu") even without one
    // left; installing and removing one on its first page, while it holds no data yet, does too.
    if (has(*v, "gu")) {
      inj.call("madvise(MADV_GUARD_INSTALL)", SYS_madvise, v->start, 4096, kMadvGuardInstall);
      inj.call("madvise(MADV_GUARD_REMOVE)", SYS_madvise, v->start, 4096, kMadvGuardRemove);
    }
  }

  // 7. Inherited private VMAs keep only the pages still shared with the parent; the rest is
  //    dropped (pages the child had freed must not come back) and rewritten below.
  std::vector<Range> cow;
  for (auto& run : ctx.reader.owner_runs(p.rec->mem_owner))
    if (run.kind == static_cast<uint32_t>(schema::PageKind::cow_parent))
      cow.push_back({run.addr, run.addr + run.npages * 4096});
  for (auto* v : target) {
    if (!p.kept_vmas.count(v->start)) continue;
    auto kind = static_cast<VmaKind>(v->kind);
    if (kind != VmaKind::anon_private && kind != VmaKind::file_private) continue;
    for (auto& r : subtract(v->start, v->end, cow)) {
      log::get("core.mem")->debug("process {}: drop {:#x}-{:#x} of inherited {}", rpid, r.start,
                                  r.end, v->name);
      inj.call("madvise(MADV_DONTNEED)", SYS_madvise, r.start, r.end - r.start, MADV_DONTNEED);
    }
  }

  // 8. The pages, straight from the image (decompressed in parallel) into the process.
  {
    bool lazy = ctx.lazy && lazy_candidate(ctx, p);
    PageFiller filler(pid, inj, target, p.kept_vmas, lazy);
    MemorySink sink(pid, target, p.kept_vmas, filler);
    ctx.reader.read_pages({p.rec->mem_owner}, sink);
    if (lazy) {
      auto ranges = filler.ranges();
      if (UniqueFd uffd = filler.take()) {
        log::get("core.mem")->debug("process {}: {} ranges left to the lazy page server", rpid,
                                    ranges.size());
        ctx.lazy->add(pid, std::move(uffd), ranges, p.rec->mem_owner);
      }
    }
  }
  for (auto* v : reprotect)
    inj.call("mprotect", SYS_mprotect, v->start, v->end - v->start, v->prot);

  // 8b. What the pages must be in place for: guard regions (installing one drops the page's
  //     data), memory locks (they fault every page in), and mlockall(MCL_FUTURE) for mappings
  //     made from now on. Sealing waits for finish_memory: a fork must not give a child seals.
  for (auto* v : target) {
    if (!has(*v, "gu") || !p.kept_vmas.count(v->start)) continue;
    inj.call("madvise(MADV_GUARD_REMOVE)", SYS_madvise, v->start, v->end - v->start,
             kMadvGuardRemove);  // an inherited VMA: the parent's guards are not the child's
  }
  for (auto* g : ctx.rows_of(ctx.meta.guards, rpid))
    inj.call("madvise(MADV_GUARD_INSTALL)", SYS_madvise, g->addr, g->npages * 4096,
             kMadvGuardInstall);
  for (auto* v : target) {
    if (!has(*v, "lo") || static_cast<VmaKind>(v->kind) == VmaKind::vsyscall) continue;
    long rc = has(*v, "lf") ? inj.raw(SYS_mlock2, v->start, v->end - v->start, MLOCK_ONFAULT)
                            : inj.raw(SYS_mlock, v->start, v->end - v->start);
    // mlock() marks an inaccessible VMA locked but cannot fault its pages in: ENOMEM, as the
    // program's mlockall() saw and ignored.
    if (rc == -ENOMEM && v->prot == PROT_NONE) continue;
    if (rc < 0)
      throw Error(Errc::kernel, "cannot lock " + v->name + " " + std::to_string(v->start) + "-" +
                                    std::to_string(v->end) + " in memory again",
                  static_cast<int>(-rc));
  }
  if (p.rec->mlock_future)
    inj.call("mlockall", SYS_mlockall, p.rec->mlock_future);

  // 9. The mm's own fields: code/data/brk/stack/arg/env boundaries, auxv and exe.
  const auto& r = *p.rec;
  prctl_mm_map mm{};
  mm.start_code = r.start_code, mm.end_code = r.end_code;
  mm.start_data = r.start_data, mm.end_data = r.end_data;
  mm.start_brk = r.start_brk, mm.brk = r.brk, mm.start_stack = r.start_stack;
  mm.arg_start = r.arg_start, mm.arg_end = r.arg_end;
  mm.env_start = r.env_start, mm.env_end = r.env_end;
  mm.auxv_size = static_cast<uint32_t>(r.auxv.size() * 8);
  mm.auxv = reinterpret_cast<__u64*>(p.scratch + 2048);
  mm.exe_fd = static_cast<uint32_t>(-1);
  int exe_remote = -1;
  // The exe link changes only if it must: the kernel refuses (EBUSY) to replace an exe file that
  // is still mapped, which is the case when the task already runs the recorded binary (a child
  // of a parent with the same exe, or a job whose exe is crest itself).
  bool same_exe = parent && parent->rec->exe == r.exe;
  if (!same_exe) {
    struct stat now {}, want {};
    same_exe = ::stat(proc::path(pid, "exe").c_str(), &now) == 0 &&
               ::stat(strip_deleted(r.exe).c_str(), &want) == 0 && now.st_dev == want.st_dev &&
               now.st_ino == want.st_ino;
  }
  if (!same_exe) {
    std::string path = strip_deleted(r.exe);
    UniqueFd ours;
    for (auto& f : ctx.meta.files)
      if (f.path == path && f.contents_owner && ctx.objects.count(f.contents_owner))
        ours.reset(::fcntl(ctx.objects[f.contents_owner].get(), F_DUPFD_CLOEXEC, 0));
    if (!ours) ours.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ours) throw_errno("cannot open the executable " + path, errno, Errc::not_found);
    exe_remote = ctx.install_fd(p, ours.get());
    mm.exe_fd = static_cast<uint32_t>(exe_remote);
  }
  if (mm.auxv_size > 2048) fail(Errc::unsupported, "auxv larger than 2 KiB");
  ctx.put(p, r.auxv.data(), mm.auxv_size, 2048);
  ctx.put(p, &mm, sizeof mm, 1024);
  inj.call("prctl(PR_SET_MM, PR_SET_MM_MAP)", SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, p.scratch + 1024,
           sizeof mm);
  if (exe_remote >= 0) inj.call("close", SYS_close, static_cast<uint64_t>(exe_remote));
}

}  // namespace crest

namespace crest {

// Sealed mappings (mseal, "sl") are sealed last, once no child is left to be forked from the
// process (a fork copies seals) and nothing of its memory is to change.
void finish_memory(RestoreContext& ctx, RestoredProcess& p) {
  for (auto* v : ctx.rows_of(ctx.meta.vmas, p.rec->pid))
    if (v->vmflags & schema::vmflag("sl"))
      p.inj->call("mseal", kSysMseal, v->start, v->end - v->start, 0);
}

}  // namespace crest
