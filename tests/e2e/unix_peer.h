// Unix sockets of the harness that workloads connect to from inside their tree: the outside
// peers of `crest dump --ext-unix-sk` (tests/workloads/unix_external.c, unix_outside_test.cpp).
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace crest::e2e {

// A thread of the harness, so outside any tree crest dumps, serving two sockets:
//  - a datagram receiver bound at `log_path` (a tiny /dev/log): keeps every message it gets, in
//    order; answers a message "ping X" from a named sender with "pong X" sent to that name;
//  - a stream listener at `srv_path`: accepts any number of clients and answers each line:
//    "req X" -> "ans X", "seen? X" -> "yes"/"no" (whether the receiver got a message holding X,
//    every datagram waiting read first), "push" -> "pushed" (data the client did not ask to
//    read), anything else -> "?".
class UnixPeer {
 public:
  UnixPeer(std::string log_path, std::string srv_path);  // throws if a socket cannot be made
  ~UnixPeer();
  UnixPeer(const UnixPeer&) = delete;
  UnixPeer& operator=(const UnixPeer&) = delete;

  std::vector<std::string> messages() const;  // every datagram received, in order
  int connections() const;                    // clients accepted so far
  std::string error() const;                  // the first thing that went wrong ("" if none)
  // Closes the listener and removes its socket file (a daemon gone), within a second.
  void stop_listener();

 private:
  void run();
  void receive_all();
  void answer(int fd, std::string& pending);
  std::string log_path_, srv_path_;
  int receiver_ = -1, listener_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false}, close_listener_{false}, listener_closed_{false};
  mutable std::mutex mu_;
  std::vector<std::string> messages_;
  int connections_ = 0;
  std::string error_;
};

}  // namespace crest::e2e
