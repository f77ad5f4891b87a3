// NUMA memory policies: each thread's (set_mempolicy, numactl) and each mapping's own (mbind).
// Dump: a thread's by an injected get_mempolicy; a mapping's from /proc/PID/numa_maps, where a
// mapping without a policy of its own shows the process's. Restore: set_mempolicy in each thread,
// mbind on each mapping before its pages are written (so they are placed by it). Dump and
// restore side by side.
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <sstream>

#include "core/context.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace crest {
namespace {

constexpr uint64_t kMaxNode = 1024;  // bits of the node masks crest passes
constexpr int kStaticNodes = 1 << 15, kRelativeNodes = 1 << 14;

struct Policy {
  int32_t mode = 0;  // with flags
  std::vector<uint64_t> nodes;
  bool operator==(const Policy& o) const { return mode == o.mode && nodes == o.nodes; }
};

void trim(std::vector<uint64_t>& v) {
  while (!v.empty() && v.back() == 0) v.pop_back();
}

// "bind=static:0-1,3 anon=..." -> the policy at the start of a numa_maps line's tail.
bool parse_policy(const std::string& text, Policy& out) {
  static const std::pair<const char*, int> kModes[] = {
      {"weighted interleave", 6}, {"prefer (many)", 5}, {"interleave", 3}, {"prefer", 1},
      {"bind", 2}, {"local", 4}, {"default", 0}};
  for (auto [name, mode] : kModes) {
    const size_t n = std::strlen(name);
    if (text.compare(0, n, name) != 0) continue;
    size_t at = n;
    out.mode = mode;
    if (text.compare(at, 7, "=static") == 0) out.mode |= kStaticNodes, at += 7;
    else if (text.compare(at, 9, "=relative") == 0) out.mode |= kRelativeNodes, at += 9;
    out.nodes.clear();
    if (at < text.size() && text[at] == ':') {
      ++at;
      while (at < text.size() && (std::isdigit(static_cast<unsigned char>(text[at])))) {
        size_t end = at;
        unsigned long first = std::stoul(text.substr(at), &end), last = first;
        at += end;
        if (at < text.size() && text[at] == '-') {
          ++at;
          last = std::stoul(text.substr(at), &end);
          at += end;
        }
        for (unsigned long node = first; node <= last && node < kMaxNode; ++node) {
          if (out.nodes.size() <= node / 64) out.nodes.resize(node / 64 + 1);
          out.nodes[node / 64] |= 1ull << (node % 64);
        }
        if (at < text.size() && text[at] == ',') ++at;
      }
    }
    return true;
  }
  return false;
}

}  // namespace

void dump_thread_mempolicy(Injector& inj, pid_t pid, uint64_t scratch, schema::ThreadRecord& t) {
  // Mode at scratch+512, mask at scratch+1024 (1024 bits).
  inj.call("get_mempolicy", SYS_get_mempolicy, scratch + 512, scratch + 1024, kMaxNode, 0, 0);
  int mode = 0;
  std::vector<uint64_t> nodes(kMaxNode / 64);
  remote_read(pid, scratch + 512, &mode, sizeof mode);
  remote_read(pid, scratch + 1024, nodes.data(), nodes.size() * 8);
  trim(nodes);
  t.mempolicy = mode;
  t.mempolicy_nodes = std::move(nodes);
}

void dump_vma_mempolicies(DumpContext& ctx, pid_t pid, const schema::ThreadRecord& main,
                          size_t first_vma) {
  std::string text;
  if (!fs::read_file_if_exists(proc::path(pid, "numa_maps"), text)) return;  // no NUMA kernel
  const Policy task{main.mempolicy, main.mempolicy_nodes};
  std::map<uint64_t, Policy> own;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto space = line.find(' ');
    if (space == std::string::npos) continue;
    Policy p;
    if (!parse_policy(line.substr(space + 1), p)) {
      ctx.refuse("process " + std::to_string(pid) + ": a NUMA policy crest does not know in \"" +
                 line.substr(0, 80) + "\"");
      continue;
    }
    // numa_maps shows "default" for no policy at all, where get_mempolicy says MPOL_DEFAULT.
    if (!(p == task) && !(p.mode == 0 && task.mode == 0)) own[std::stoull(line.substr(0, space), nullptr, 16)] = p;
  }
  for (size_t i = first_vma; i < ctx.meta.vmas.size(); ++i) {
    auto& v = ctx.meta.vmas[i];
    auto it = own.find(v.start);
    if (it == own.end()) continue;
    v.mempolicy = it->second.mode;
    v.mempolicy_nodes = it->second.nodes;
  }
}

void restore_thread_mempolicy(RestoreContext& ctx, RestoredProcess& p, Injector& inj,
                              const schema::ThreadRecord& t) {
  std::vector<uint64_t> nodes = t.mempolicy_nodes;
  nodes.resize(kMaxNode / 64);
  const uint64_t mask = ctx.put(p, nodes.data(), nodes.size() * 8, 1024);
  const bool none = (t.mempolicy & ~(kStaticNodes | kRelativeNodes)) == 0;
  long r = inj.raw(SYS_set_mempolicy, static_cast<uint64_t>(t.mempolicy), none ? 0 : mask,
                   none ? 0 : kMaxNode);
  if (r < 0)
    throw Error(Errc::kernel, "thread " + std::to_string(t.tid) + ": cannot give back its NUMA "
                              "policy " + std::to_string(t.mempolicy) + " (are its nodes on this machine?)",
                static_cast<int>(-r));
}

void restore_vma_mempolicy(RestoreContext& ctx, RestoredProcess& p, const schema::VmaRecord& v) {
  if (v.mempolicy < 0) return;
  std::vector<uint64_t> nodes = v.mempolicy_nodes;
  nodes.resize(kMaxNode / 64);
  const uint64_t mask = ctx.put(p, nodes.data(), nodes.size() * 8, 1024);
  long r = p.inj->raw(SYS_mbind, v.start, v.end - v.start, static_cast<uint64_t>(v.mempolicy),
                      mask, kMaxNode, 0);
  if (r < 0)
    throw Error(Errc::kernel, "mapping " + v.name + " at " + std::to_string(v.start) +
                                  ": cannot give back its NUMA policy (mbind)",
                static_cast<int>(-r));
}

}  // namespace crest
