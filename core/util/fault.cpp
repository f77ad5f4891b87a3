#include "core/util/fault.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace crest {

void fault_point(const char* name) {
  static const char* const wanted = std::getenv("CREST_FAULT_KILL");
  if (wanted != nullptr && std::strcmp(wanted, name) == 0) ::kill(::getpid(), SIGKILL);
}

}  // namespace crest
