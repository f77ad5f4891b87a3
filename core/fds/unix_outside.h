// Unix sockets of the tree connected to a socket outside it (CRIU's --ext-unix-sk): syslog's
// /dev/log, a daemon's socket, a scheduler's PMIx server.
//
// Without --ext-unix-sk such a socket is refused, naming the peer's name and saying that the
// option would take it. With it, a peer that can be reached again by its name is recorded
// (sockets.external, peer_name) and, at restore, the program gets:
//
//  - a datagram socket connected to a name outside: the same socket (its name, options and
//    queued messages restored as any other's), connected again to that name — to whatever
//    socket is bound there at restore (a restarted daemon's). The messages it had sent were
//    delivered at the time and stay with their receiver.
//  - a stream or seqpacket socket connected to a listener outside by its name (or waiting in
//    its backlog): a NEW connection to that name, made by the first process that holds it, with
//    that process's credentials (the listener's SO_PEERCRED names it). The listener sees a new
//    client; the old connection ends with the dumped tree (its side reads end-of-file), and the
//    bytes the program had sent that the listener had not read yet stay on the old connection:
//    the dump's report says how many (the note). Shutdowns are made again on the new connection.
//    The program's SO_PEERCRED names the listener's process at restore (pid 0 if it is not
//    visible in the restored tree's pid namespace). What this means for the program's protocol
//    (a session to open again, a request to send again) is the user's responsibility, as in CRIU.
//
// Refused even with the option, by name: a peer outside without a name (a socketpair end held
// outside, a connection accepted from outside: nothing can reach it again); a peer bound to a
// relative path; a peer whose name no longer leads to it, or to the listener that accepted it (a newer socket bound there since);
// a listener that is gone; a connection accepted from a listener of the tree by a process outside
// it; data the listener's side sent that the program has not read yet (it cannot be put in the
// receive queue of a new connection: dump once the program has read it); messages waiting in an
// unnamed datagram socket whose peer is outside (only that peer can send to it).
//
// At restore a name that does not lead to a socket listening (stream, seqpacket) or bound
// (datagram) of the same type fails the restore naming it, before the tree runs.
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "core/context.h"

namespace crest::fds {

// Dump, once every socket of the tree is known: `r` is a socket of the tree whose peer is not
// (r.peer_ino, or none for a client waiting in a listener's backlog); `holder` names it
// ("process P: fd N"); `tree` holds the inodes of the tree's Unix sockets. Marks r.external
// and adds the report's note with --ext-unix-sk when the peer can be reached again; otherwise
// refuses, naming the peer and why.
void dump_outside_peer(DumpContext& ctx, schema::SocketRecord& r, const std::string& holder,
                       const std::set<uint64_t>& tree);

}  // namespace crest::fds
