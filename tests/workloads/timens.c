/* A pending time namespace: child T did unshare(CLONE_NEWTIME) and wrote the offsets
 * (monotonic +86400 s, boottime +172800 s) to /proc/self/timens_offsets, and has not forked
 * since: T itself still lives in the root's time namespace, only its time_for_children differs
 * (no process is in the new namespace yet).
 * On request: in T, /proc/self/ns/time_for_children differs from /proc/self/ns/time, which is
 * the root's; T's clocks agree with the root's (within 5 s); T's timens_offsets exceed the
 * root's by exactly the written offsets. Then T forks G, the first process of the new namespace:
 * G's CLOCK_MONOTONIC and CLOCK_BOOTTIME are ahead of T's (read just before the fork) by 86400 s
 * and 172800 s (within 5 s), CLOCK_REALTIME is not, and G's ns/time is T's time_for_children. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

#define MONO_OFF 86400L
#define BOOT_OFF 172800L
#define TOLERANCE 5.0

/* Written by the root just before it sends the request. */
struct shared {
  double root_mono, root_boot;
  ino_t root_time_ns;
  long root_off_mono, root_off_boot;
  int root_offsets_ok;
};

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static ino_t ns_ino(const char* name) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/ns/%s", name);
  struct stat st;
  return stat(path, &st) == 0 ? st.st_ino : 0;
}

/* Parses /proc/self/timens_offsets (the offsets of our time_for_children namespace). */
static bool read_offsets(long* mono, long* boot) {
  FILE* f = fopen("/proc/self/timens_offsets", "re");
  if (!f) return false;
  char name[32];
  long sec, nsec;
  int found = 0;
  *mono = *boot = 0;
  while (fscanf(f, "%31s %ld %ld", name, &sec, &nsec) == 3) {
    if (strcmp(name, "monotonic") == 0) {
      *mono = sec;
      found |= 1;
    } else if (strcmp(name, "boottime") == 0) {
      *boot = sec;
      found |= 2;
    }
  }
  fclose(f);
  return found == 3;
}

static bool near(double got, double want) { return got >= want - 1 && got <= want + TOLERANCE; }

static void child_t(struct wl_sync* sync, struct shared* sh) {
  if (unshare(CLONE_NEWTIME) != 0) wl_die("unshare(CLONE_NEWTIME): %m");
  /* Before any process enters the namespace: once one has, the offsets are fixed. */
  int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
  if (fd < 0) wl_die("open timens_offsets: %m");
  char text[96];
  int len = snprintf(text, sizeof text, "monotonic %ld 0\nboottime %ld 0\n", MONO_OFF, BOOT_OFF);
  if (write(fd, text, (size_t)len) != len) wl_die("write timens_offsets: %m");
  close(fd);
  if (ns_ino("time") == ns_ino("time_for_children")) wl_die("no new time namespace");
  wl_sync_post(sync, NULL, 0);
  wl_wait_term();

  ino_t mine = ns_ino("time"), kids = ns_ino("time_for_children");
  wl_expect(mine != 0 && kids != 0 && mine != kids,
            "ns/time %lu and ns/time_for_children %lu, expected two namespaces",
            (unsigned long)mine, (unsigned long)kids);
  wl_expect(mine == sh->root_time_ns, "T's ns/time %lu is not the root's %lu", (unsigned long)mine,
            (unsigned long)sh->root_time_ns);
  double mono = clock_s(CLOCK_MONOTONIC), boot = clock_s(CLOCK_BOOTTIME);
  double real = clock_s(CLOCK_REALTIME);
  wl_expect(near(mono - sh->root_mono, 0) && near(boot - sh->root_boot, 0),
            "T's clocks differ from the root's by %.3f / %.3f s", mono - sh->root_mono,
            boot - sh->root_boot);
  long om, ob;
  if (wl_expect(read_offsets(&om, &ob), "cannot read T's timens_offsets") && sh->root_offsets_ok) {
    wl_expect(om - sh->root_off_mono == MONO_OFF && ob - sh->root_off_boot == BOOT_OFF,
              "T's timens_offsets %ld/%ld, the root's %ld/%ld: difference should be %ld/%ld", om,
              ob, sh->root_off_mono, sh->root_off_boot, MONO_OFF, BOOT_OFF);
  }

  pid_t g = wl_fork("G");
  if (g == 0) {
    double gm = clock_s(CLOCK_MONOTONIC), gb = clock_s(CLOCK_BOOTTIME);
    double gr = clock_s(CLOCK_REALTIME);
    wl_expect(near(gm - mono, MONO_OFF), "G's CLOCK_MONOTONIC is %.3f s ahead of T's, expected %ld",
              gm - mono, MONO_OFF);
    wl_expect(near(gb - boot, BOOT_OFF), "G's CLOCK_BOOTTIME is %.3f s ahead of T's, expected %ld",
              gb - boot, BOOT_OFF);
    wl_expect(near(gr - real, 0), "G's CLOCK_REALTIME is %.3f s ahead of T's", gr - real);
    ino_t gns = ns_ino("time");
    wl_expect(gns == kids, "G's ns/time %lu, expected T's time_for_children %lu",
              (unsigned long)gns, (unsigned long)kids);
    wl_finish();
  }
  wl_reap(g, "G");
  wl_finish();
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct shared* sh =
      mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) wl_die("mmap: %m");
  struct wl_sync sync;
  wl_sync_init(&sync);
  pid_t t = wl_fork("T");
  if (t == 0) child_t(&sync, sh);
  if (!wl_sync_wait(&sync, 1, NULL, 0)) wl_die("T died during setup");

  wl_ready();
  wl_wait_term();

  sh->root_time_ns = ns_ino("time");
  wl_expect(sh->root_time_ns == ns_ino("time_for_children"),
            "the root's children would get another time namespace");
  long om, ob;
  sh->root_offsets_ok = read_offsets(&om, &ob);
  sh->root_off_mono = om;
  sh->root_off_boot = ob;
  sh->root_mono = clock_s(CLOCK_MONOTONIC);
  sh->root_boot = clock_s(CLOCK_BOOTTIME);
  kill(t, SIGTERM);
  wl_reap(t, "T");
  wl_finish();
}
