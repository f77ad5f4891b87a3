// crestd's request path up to the supervisor: bytes as they arrive on the socket, cut into lines
// by the server's LineReader (with its size limit), each line parsed as a request and every
// field of every op decoded (protocol.h). Any input gives requests or named Errc::usage errors;
// never a crash, another exception, or a line longer than the limit.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "agent/crestd/protocol.h"
#include "core/util/error.h"

namespace {

using nlohmann::json;
using namespace crest::agent;

// What Server::dispatch reads from a request of each op (before it asks the supervisor).
void decode(const json& req) {
  static const JobPolicy defaults;
  std::string op = str_field(req, "op");
  if (op == "status" || op == "checkpoint" || op == "pause" || op == "resume" ||
      op == "forget" || op == "signal" || op == "restore" || op == "watch")
    (void)job_ref(req);
  if (op == "checkpoint") (void)bool_field(req, "wait", true);
  if (op == "forget") (void)bool_field(req, "remove_images", false);
  if (op == "signal") {
    auto it = req.find("signal");
    if (it == req.end()) crest::fail(crest::Errc::usage, "missing 'signal'");
    int s = parse_signal(*it);
    if (s < 1 || s >= 65) std::abort();
  }
  if (op == "register") {
    pid_t pid = pid_field(req);
    if (pid <= 1) std::abort();
    (void)str_field(req, "name", false);
    (void)id_field(req, "uid", 0);
    (void)id_field(req, "gid", 0);
    (void)str_field(req, "dir", false);
    JobPolicy p = policy_from(req, defaults);
    (void)p.to_json().dump();
    (void)bool_field(req, "watch", false);
  }
  if (op == "run") {
    if (string_list(req, "argv", true).empty()) std::abort();
    (void)string_list(req, "env", false);
    (void)str_field(req, "cwd", false);
    (void)str_field(req, "name", false);
    (void)str_field(req, "dir", false);
    JobPolicy p = policy_from(req, defaults);
    (void)p.to_json().dump();
    (void)bool_field(req, "transient", true);
    (void)bool_field(req, "watch", true);
  }
}

void handle_line(const std::string& line) {
  try {
    auto req = parse_request(line);
    if (!req) return;
    if (!req->is_object()) std::abort();
    decode(*req);
    // A reply echoing what was sent serializes, whatever bytes the strings hold.
    (void)error_reply("usage", line).dump(-1, ' ', false, json::error_handler_t::replace);
  } catch (const crest::Error& e) {
    if (e.kind() != crest::Errc::usage) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The first byte picks how the bytes are cut into writes; a small limit makes the fuzzer
  // reach the too-long path.
  if (size < 1) return 0;
  const size_t kMax = 4096;
  size_t piece = 1 + data[0] % 64;
  ++data;
  --size;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  LineReader reader(sv[0], kMax);
  size_t off = 0;
  bool open = true;
  while (open && off < size) {
    size_t n = std::min(piece, size - off);
    if (::write(sv[1], data + off, n) != static_cast<ssize_t>(n)) std::abort();
    off += n;
    if (reader.read_some() != LineReader::Status::line) std::abort();
    std::string line;
    while (reader.pop_line(line)) handle_line(line);
    if (reader.over_limit()) open = false;  // the server answers and closes
  }
  if (open) {
    ::close(sv[1]);
    sv[1] = -1;
    if (reader.read_some() != LineReader::Status::eof) std::abort();
  }
  ::close(sv[0]);
  if (sv[1] >= 0) ::close(sv[1]);
  return 0;
}
