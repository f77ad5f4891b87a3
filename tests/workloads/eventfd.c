/* Refusal workload: holds an eventfd with a non-zero counter. `crest dump` must refuse (naming
 * the eventfd) and leave the process running; the check reads the counter. */
#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int efd = eventfd(5, EFD_CLOEXEC);
  if (efd < 0) wl_die("eventfd: %m");
  uint64_t add = 3;
  if (write(efd, &add, sizeof add) != sizeof add) wl_die("eventfd write: %m");

  wl_ready();
  wl_wait_term();

  uint64_t v = 0;
  ssize_t n = read(efd, &v, sizeof v);
  wl_expect(n == (ssize_t)sizeof v && v == 8, "eventfd counter %llu, expected 8",
            (unsigned long long)v);
  wl_finish();
}
