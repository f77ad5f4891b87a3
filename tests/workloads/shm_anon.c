/* Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) between a parent and its child: 4 MiB, the
 * parent wrote the first MiB, the child the third, the rest never touched. After the request
 * each side writes a page the other must see, proving the two mappings are still one object. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "workload.h"

#define PG WL_PAGE
#define NPAGES 1024

static char* g_shm;

static void check_layout(const char* who) {
  wl_expect(wl_check(g_shm, 256 * PG, 51) < 0, "%s: parent's pages differ", who);
  wl_expect(wl_check(g_shm + 512 * PG, 256 * PG, 52) < 0, "%s: child's pages differ", who);
  wl_expect(wl_check_zero(g_shm + 256 * PG, 44 * PG) < 0 &&
                wl_check_zero(g_shm + 301 * PG, 211 * PG) < 0 &&
                wl_check_zero(g_shm + 768 * PG, 32 * PG) < 0 &&
                wl_check_zero(g_shm + 801 * PG, 223 * PG) < 0,
            "%s: untouched pages are not zero", who);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  g_shm = mmap(NULL, NPAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_shm == MAP_FAILED) wl_die("mmap: %m");
  wl_fill(g_shm, 256 * PG, 51);

  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t child = wl_fork("child");
  if (child == 0) {
    wl_fill(g_shm + 512 * PG, 256 * PG, 52);
    wl_sync_post(&sync, NULL, 0);
    wl_wait_term();
    check_layout("child");
    wl_expect(wl_check(g_shm + 300 * PG, PG, 53) < 0, "child does not see the parent's new page");
    wl_fill(g_shm + 800 * PG, PG, 54);
    wl_finish();
  }
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("child died during setup");

  wl_ready();
  wl_wait_term();

  check_layout("parent");
  wl_fill(g_shm + 300 * PG, PG, 53);
  kill(child, SIGTERM);
  wl_reap(child, "child");
  wl_expect(wl_check(g_shm + 800 * PG, PG, 54) < 0, "parent does not see the child's new page");
  wl_finish();
}
