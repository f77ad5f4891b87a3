#include "core/netlock.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <sys/socket.h>

#include <cctype>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <memory>
#include <sstream>

#include "core/proc.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace crest::netlock {
namespace {

Ctx make_ctx() {
  Ctx c(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!c) fail(Errc::kernel, "nftables: cannot make a context (nft_ctx_new)");
  nft_ctx_buffer_output(c.get());
  nft_ctx_buffer_error(c.get());
  return c;
}

// Runs nft commands; returns nftables' error text, "" when they succeeded.
std::string run(nft_ctx* c, const std::string& commands, std::string* output = nullptr) {
  const int rc = nft_run_cmd_from_buffer(c, commands.c_str());
  if (output) *output = nft_ctx_get_output_buffer(c);
  if (rc == 0) return "";
  std::string err = nft_ctx_get_error_buffer(c);
  while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
  return err.empty() ? "nftables refused the commands" : err;
}

// One end of a connection in nft's terms: "ip" or "ip6", the address, the port. An IPv4 address
// mapped into IPv6 (a dual-stack socket) travels as IPv4.
struct End {
  std::string family, addr;
  uint16_t port = 0;
};

End end_of(const std::vector<uint8_t>& a) {
  End e;
  char host[INET6_ADDRSTRLEN] = {};
  if (a.size() >= sizeof(sockaddr_in6) && reinterpret_cast<const sockaddr*>(a.data())->sa_family == AF_INET6) {
    sockaddr_in6 s;
    std::memcpy(&s, a.data(), sizeof s);
    e.port = ntohs(s.sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&s.sin6_addr)) {
      ::inet_ntop(AF_INET, s.sin6_addr.s6_addr + 12, host, sizeof host);
      e.family = "ip";
    } else {
      ::inet_ntop(AF_INET6, &s.sin6_addr, host, sizeof host);
      e.family = "ip6";
    }
  } else if (a.size() >= sizeof(sockaddr_in) && reinterpret_cast<const sockaddr*>(a.data())->sa_family == AF_INET) {
    sockaddr_in s;
    std::memcpy(&s, a.data(), sizeof s);
    e.port = ntohs(s.sin_port);
    ::inet_ntop(AF_INET, &s.sin_addr, host, sizeof host);
    e.family = "ip";
  } else {
    fail(Errc::internal, "network lock: a connection end that is neither IPv4 nor IPv6");
  }
  e.addr = host;
  return e;
}

std::string rule(const End& from, const End& to) {
  return from.family + " saddr " + from.addr + " " + to.family + " daddr " + to.addr +
         " tcp sport " + std::to_string(from.port) + " tcp dport " + std::to_string(to.port) + " drop";
}

// The commands making a lock's table: owned by the netlink socket that runs them, or kept
// with a comment. Priority -300: before connection tracking (-200), which must not see the
// dropped packets either (it would mark a later one of the same connection invalid).
std::string table_commands(const std::string& table, const std::string& flags_or_comment,
                           const std::vector<Connection>& connections) {
  std::ostringstream in, out;
  for (auto& [local, peer] : connections) {
    const End l = end_of(local), p = end_of(peer);
    for (auto* chain : {&in, &out}) {
      const char* hook = chain == &in ? "input" : "output";
      *chain << "add rule inet " << table << " " << hook << " " << rule(p, l) << "\n";
      *chain << "add rule inet " << table << " " << hook << " " << rule(l, p) << "\n";
    }
  }
  return "add table inet " + table + " { " + flags_or_comment + " }\n" +
         "add chain inet " + table + " input { type filter hook input priority -300; policy accept; }\n" +
         "add chain inet " + table + " output { type filter hook output priority -300; policy accept; }\n" +
         in.str() + out.str();
}

// The owned table of a lock named `table` ("crest_…" -> "crestheld_…"): not a kept lock, and
// not one `crest unlock` could remove (only its owner may touch it).
std::string held_name(const std::string& table) { return "crestheld_" + table.substr(6); }

const char kCommentHead[] = "crest: kept for the tree of pid ";

std::string comment_for(pid_t root, uint64_t starttime) {
  return "comment \"" + std::string(kCommentHead) + std::to_string(root) + " started at " +
         std::to_string(starttime) + "\";";
}

}  // namespace

void CtxFree::operator()(nft_ctx* c) const { nft_ctx_free(c); }

Lock::Lock() = default;

Lock::~Lock() {
  try {
    release();
  } catch (const Error& e) {
    // Our table goes with our netlink socket anyway.
    log::get("core.netlock")->warn("{}", e.what());
  }
}

std::string table_for(const std::string& uuid) {
  std::string t = "crest_";
  for (char c : uuid)
    if (std::isalnum(static_cast<unsigned char>(c))) t += c;
  return t;
}

void Lock::take(const std::string& table, const std::vector<Connection>& connections) {
  if (held()) fail(Errc::internal, "network lock: taken twice");
  auto c = make_ctx();
  const std::string held = held_name(table);
  const std::string err = run(c.get(), table_commands(held, "flags owner;", connections));
  if (!err.empty()) {
    run(c.get(), "delete table inet " + held + "\n");  // nothing half made is left
    fail(Errc::kernel, "cannot lock the network of the tree's connections to the outside "
                       "(nftables table inet " + held + "; needs CAP_NET_ADMIN, nf_tables and "
                       "Linux 5.12 or later for owned tables): " + err);
  }
  ctx_ = std::move(c);
  table_ = table;
  connections_ = connections;
}

void Lock::keep(pid_t root, uint64_t root_starttime) {
  if (!held()) return;
  const std::string err = run(ctx_.get(), table_commands(table_, comment_for(root, root_starttime),
                                                         connections_));
  if (!err.empty()) {
    run(ctx_.get(), "delete table inet " + table_ + "\n");
    fail(Errc::kernel, "cannot keep the network lock for the restore (nftables table inet " +
                           table_ + "): " + err);
  }
  const std::string held = held_name(table_);
  table_.clear();
  connections_.clear();
  run(ctx_.get(), "delete table inet " + held + "\n");  // else it goes with our socket
  ctx_.reset();
}

void Lock::release() {
  if (!held()) return;
  const std::string held = held_name(table_);
  table_.clear();
  connections_.clear();
  const std::string err = run(ctx_.get(), "delete table inet " + held + "\n");
  ctx_.reset();  // closing our socket removes the table in any case
  if (!err.empty() && err.find("No such file or directory") == std::string::npos)
    fail(Errc::kernel, "cannot remove the network lock (nftables table inet " + held + "): " + err);
}

bool unlock(const std::string& table) {
  auto c = make_ctx();
  std::string err = run(c.get(), "delete table inet " + table + "\n");
  if (err.empty()) return true;
  if (err.find("No such file or directory") != std::string::npos) return false;
  fail(Errc::kernel, "cannot remove the network lock (nftables table inet " + table + "): " + err);
}

std::vector<Kept> kept() {
  auto c = make_ctx();
  std::string listing;
  std::string err = run(c.get(), "list tables inet\n", &listing);
  if (!err.empty()) fail(Errc::kernel, "cannot list nftables tables: " + err);
  std::vector<Kept> out;
  std::istringstream lines(listing);
  std::string word, family, name;
  while (lines >> word >> family >> name) {  // "table inet NAME"
    if (word != "table" || name.rfind("crest_", 0) != 0) continue;
    Kept k;
    k.table = name;
    std::string table;
    if (run(c.get(), "list table inet " + name + "\n", &table).empty()) {
      const auto at = table.find(kCommentHead);
      if (at != std::string::npos) {
        unsigned long long starttime = 0;
        int root = 0;
        if (std::sscanf(table.c_str() + at + sizeof kCommentHead - 1, "%d started at %llu", &root,
                        &starttime) == 2) {
          k.root = root;
          k.root_starttime = starttime;
        }
      }
    }
    if (k.root > 0) {
      try {
        k.stale = proc::stat(k.root).starttime == k.root_starttime;
      } catch (const Error&) {
        // gone: the tree was killed as planned
      }
    }
    out.push_back(std::move(k));
  }
  return out;
}

std::vector<std::string> remove_stale() {
  std::vector<std::string> removed;
  if (!unavailable().empty()) return removed;  // no nftables here: no lock either
  try {
    for (auto& k : kept()) {
      if (!k.stale) continue;
      if (!unlock(k.table)) continue;
      removed.push_back(k.table);
      log::get("core.netlock")->warn("removed the network lock inet {}: kept for the tree of pid {}, "
                                     "which still runs (its dump died before the kill)", k.table, k.root);
    }
  } catch (const Error& e) {
    log::get("core.netlock")->warn("stale network locks: {}", e.what());
  }
  return removed;
}

std::string unavailable() {
  try {
    auto c = make_ctx();
    std::string listing;
    const std::string err = run(c.get(), "list tables\n", &listing);
    return err;
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace crest::netlock
