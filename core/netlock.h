// The network lock: an nftables table of crest's own (family inet, one per checkpoint) that
// drops, in the kernel, every packet of a set of TCP connections, both ways. Taken while a tree
// whose connections reach outside it is frozen for a dump, and kept from the kill of that tree
// until its restored connections are back, so that the peers outside see neither a reset nor a
// byte lost: what they send meanwhile is dropped before any socket sees it, and sent again by
// their TCP once the lock is gone.
//
// Through libnftables (the library the nft command is built on): no command is run.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace crest::netlock {

// A connection as its end in the tree sees it: its own address and its peer's (raw sockaddr
// bytes, as getsockname/getpeername give them).
using Connection = std::pair<std::vector<uint8_t>, std::vector<uint8_t>>;

// The table of a checkpoint, from its uuid: "crest_" and the uuid's hex digits.
std::string table_for(const std::string& uuid);

// Makes the table, dropping the packets of every connection both ways at the input and output
// hooks (before connection tracking). Throws Errc::kernel naming what nftables said.
void lock(const std::string& table, const std::vector<Connection>& connections);

// Deletes the table. False when there was none (already removed).
bool unlock(const std::string& table);

// The tables of crest present now (names starting with "crest_").
std::vector<std::string> tables();

// "" when nftables can be used here, else why not (for `crest check`).
std::string unavailable();

}  // namespace crest::netlock
