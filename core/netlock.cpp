#include "core/netlock.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <sys/socket.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>
#include <sstream>

#include "core/util/error.h"

namespace crest::netlock {
namespace {

struct CtxFree {
  void operator()(nft_ctx* c) const { nft_ctx_free(c); }
};
using Ctx = std::unique_ptr<nft_ctx, CtxFree>;

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

}  // namespace

std::string table_for(const std::string& uuid) {
  std::string t = "crest_";
  for (char c : uuid)
    if (std::isalnum(static_cast<unsigned char>(c))) t += c;
  return t;
}

void lock(const std::string& table, const std::vector<Connection>& connections) {
  // Priority -300: before connection tracking (-200), which must not see the dropped packets
  // either (it would mark a later one of the same connection invalid).
  std::ostringstream in, out;
  for (auto& [local, peer] : connections) {
    const End l = end_of(local), p = end_of(peer);
    for (auto* chain : {&in, &out}) {
      *chain << "add rule inet " << table << " " << (chain == &in ? "input" : "output") << " "
             << rule(p, l) << "\n";
      *chain << "add rule inet " << table << " " << (chain == &in ? "input" : "output") << " "
             << rule(l, p) << "\n";
    }
  }
  const std::string commands =
      "add table inet " + table + "\n" +
      "add chain inet " + table + " input { type filter hook input priority -300; policy accept; }\n" +
      "add chain inet " + table + " output { type filter hook output priority -300; policy accept; }\n" +
      in.str() + out.str();
  auto c = make_ctx();
  const std::string err = run(c.get(), commands);
  if (!err.empty()) {
    unlock(table);  // nothing half made is left
    fail(Errc::kernel, "cannot lock the network of the tree's connections to the outside "
                       "(nftables table inet " + table + "; needs CAP_NET_ADMIN and nf_tables): " + err);
  }
}

bool unlock(const std::string& table) {
  auto c = make_ctx();
  std::string err = run(c.get(), "delete table inet " + table + "\n");
  if (err.empty()) return true;
  if (err.find("No such file or directory") != std::string::npos) return false;
  fail(Errc::kernel, "cannot remove the network lock (nftables table inet " + table + "): " + err);
}

std::vector<std::string> tables() {
  auto c = make_ctx();
  std::string listing;
  const std::string err = run(c.get(), "list tables inet\n", &listing);
  if (!err.empty()) fail(Errc::kernel, "cannot list nftables tables: " + err);
  std::vector<std::string> out;
  std::istringstream lines(listing);
  std::string word, family, name;
  while (lines >> word >> family >> name)  // "table inet NAME"
    if (word == "table" && name.rfind("crest_", 0) == 0) out.push_back(name);
  return out;
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
