#include "core/kernel/rseq.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "core/inject.h"
#include "core/kernel/compat.h"
#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/unique_fd.h"

namespace crest::kernel {
namespace {

// The addresses (relative to the file's lowest loaded page) of __rseq_offset and
// __rseq_size in the dynamic symbol table of glibc's dynamic loader; nullopt when it has none.
struct RseqSymbols {
  uint64_t offset_at = 0, size_at = 0;
};

std::optional<RseqSymbols> read_symbols(const std::string& path) {
  std::string image;
  try {
    image = fs::read_file(path);
  } catch (const Error&) {
    return std::nullopt;
  }
  auto at = [&](uint64_t off, uint64_t len) -> const char* {
    if (off > image.size() || len > image.size() - off) return nullptr;
    return image.data() + off;
  };
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(at(0, sizeof(Elf64_Ehdr)));
  if (!eh || std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64)
    return std::nullopt;
  uint64_t low = ~0ull;
  for (unsigned i = 0; i < eh->e_phnum; ++i) {
    const auto* ph = reinterpret_cast<const Elf64_Phdr*>(at(eh->e_phoff + i * sizeof(Elf64_Phdr), sizeof(Elf64_Phdr)));
    if (ph && ph->p_type == PT_LOAD) low = std::min<uint64_t>(low, ph->p_vaddr & ~0xfffull);
  }
  if (low == ~0ull) return std::nullopt;
  RseqSymbols out;
  for (unsigned i = 0; i < eh->e_shnum; ++i) {
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(at(eh->e_shoff + i * sizeof(Elf64_Shdr), sizeof(Elf64_Shdr)));
    if (!sh || sh->sh_type != SHT_DYNSYM || sh->sh_entsize != sizeof(Elf64_Sym)) continue;
    const auto* strtab = reinterpret_cast<const Elf64_Shdr*>(
        at(eh->e_shoff + sh->sh_link * sizeof(Elf64_Shdr), sizeof(Elf64_Shdr)));
    if (!strtab) continue;
    for (uint64_t j = 0; j < sh->sh_size / sizeof(Elf64_Sym); ++j) {
      const auto* sym = reinterpret_cast<const Elf64_Sym*>(at(sh->sh_offset + j * sizeof(Elf64_Sym), sizeof(Elf64_Sym)));
      if (!sym || sym->st_shndx == SHN_UNDEF || sym->st_name >= strtab->sh_size) continue;
      const char* name = at(strtab->sh_offset + sym->st_name, 1);
      if (!name) continue;
      const size_t room = image.size() - static_cast<size_t>(name - image.data());
      const std::string n(name, strnlen(name, room));
      if (n == "__rseq_offset") out.offset_at = sym->st_value - low;
      if (n == "__rseq_size") out.size_at = sym->st_value - low;
    }
  }
  if (!out.offset_at || !out.size_at) return std::nullopt;
  return out;
}

// Cached by file identity: every process of a job maps the same libc.
std::optional<RseqSymbols> symbols_of(const proc::Mapping& m) {
  static std::mutex mu;
  static std::map<std::pair<uint64_t, uint64_t>, std::optional<RseqSymbols>> cache;
  const auto key = std::make_pair(static_cast<uint64_t>(m.dev_major) << 32 | m.dev_minor, m.inode);
  {
    std::lock_guard lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  auto found = read_symbols(m.name);
  std::lock_guard lock(mu);
  cache[key] = found;
  return found;
}

// glibc's area and length for the thread, if the process's glibc exports them and says it
// registered (a __rseq_size of 0: registration disabled or refused by the kernel).
struct Guess {
  uint64_t area = 0;
  std::vector<uint32_t> lens;
};

std::optional<Guess> glibc_guess(pid_t tid, uint64_t fs_base) {
  const auto maps = proc::maps(tid);
  for (const auto& m : maps) {
    if (m.offset != 0 || m.name.empty() || m.name[0] != '/') continue;
    // The dynamic loader defines them (glibc 2.35+: ld-linux-x86-64.so.2), libc refers to them.
    const std::string base = m.name.substr(m.name.rfind('/') + 1);
    if (base.rfind("ld-linux", 0) != 0 && base.rfind("ld-", 0) != 0 && base.rfind("libc.so", 0) != 0)
      continue;
    auto sym = symbols_of(m);
    if (!sym) continue;
    int64_t offset = 0;
    uint32_t size = 0;
    remote_read(tid, m.start + sym->offset_at, &offset, sizeof offset);
    remote_read(tid, m.start + sym->size_at, &size, sizeof size);
    if (size == 0) return std::nullopt;
    Guess g;
    g.area = fs_base + static_cast<uint64_t>(offset);
    g.lens.push_back(std::max<uint32_t>(size, 32));
    if (g.lens[0] != 32) g.lens.push_back(32);
    return g;
  }
  return std::nullopt;
}

}  // namespace

ptrace::RseqConfig find_rseq(pid_t tid) {
  const std::string who = "thread " + std::to_string(tid);
  std::unique_ptr<Injector> own;
  Injector* inj = Injector::on_thread(tid);
  if (!inj) {
    own = std::make_unique<Injector>(tid, find_syscall_insn(tid));
    inj = own.get();
  }
  const uint64_t fs_base = inj->saved_regs().fs_base;
  const uint32_t sig = kGlibcRseqSig;
  if (auto g = glibc_guess(tid, fs_base))
    for (uint32_t len : g->lens) {
      if (inj->raw(SYS_rseq, g->area, len, RSEQ_FLAG_UNREGISTER, sig ^ 1) != -EPERM) continue;
      // Registered there with that length; the signature is glibc's, or one crest cannot know.
      if (inj->raw(SYS_rseq, g->area, len, 0, sig) == -EBUSY) return {g->area, len, sig, 0};
      fail(Errc::refused, who + " has its rseq area registered with a signature other than glibc's; "
                                "without PTRACE_GET_RSEQ_CONFIGURATION (Linux 5.13) crest cannot read it");
    }
  // No guess proven: does it have a registration at all? A trial one at crest's scratch tells.
  RemoteScratch scratch(*inj, 4096);
  const long r = inj->raw(SYS_rseq, scratch.addr(), 32, 0, sig);
  if (r == 0) {
    inj->call("rseq unregister (trial)", SYS_rseq, scratch.addr(), 32, RSEQ_FLAG_UNREGISTER, sig);
    return {};
  }
  if (r == -ENOSYS) return {};  // a kernel without rseq: no registration
  if (r == -EINVAL)
    fail(Errc::refused, who + " has an rseq registration that is not glibc's (or glibc's in a "
                              "statically linked program); without PTRACE_GET_RSEQ_CONFIGURATION "
                              "(Linux 5.13) crest cannot tell where it is");
  throw Error(Errc::kernel, who + ": a trial rseq registration", static_cast<int>(-r));
}

}  // namespace crest::kernel
