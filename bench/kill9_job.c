/* crest-kill9-job: the job bench/kill9.py checkpoints, kills crest around and restores.
 *
 *   crest-kill9-job MIB [CHILDREN]
 *
 * A tree of 1 + CHILDREN processes (default 1), each with two threads. Every process owns MIB
 * MiB of anonymous memory (the children's start as copy-on-write copies of the root's) that its
 * main thread sweeps forever: page i gets its index and the sweep's generation number, then the
 * whole region is checked (every page holds its index and the generation just written) before
 * the next sweep. The second thread spins on a counter of its own with short sleeps. Both sleep
 * a little each round: the machine is shared, and the harness only needs every thread to make
 * progress (it reads their run time in /proc/PID/task/TID/schedstat).
 *
 * Anything wrong (a page that lost its content, a counter that went backwards, a child that
 * died) is written to stderr and the process aborts: the harness then sees the tree changed.
 * After setup the job makes no system call that changes its mappings or descriptors, so the
 * harness can compare them before and after a killed crest: a difference is something crest
 * left in the job. Stdout gets one line, "ready", once every process runs. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static uint64_t* region;
static size_t pages;
static volatile uint64_t spin_count;

static void die(const char* what, unsigned long long a, unsigned long long b) {
  fprintf(stderr, "crest-kill9-job[%d]: %s (%llu, %llu)\n", (int)getpid(), what, a, b);
  abort();
}

static void nap(long usec) {
  struct timespec ts = {0, usec * 1000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void* spinner(void* arg) {
  (void)arg;
  uint64_t last = 0;
  for (;;) {
    for (int i = 0; i < 100000; i++) spin_count++;
    if (spin_count < last + 100000) die("spin counter went backwards", spin_count, last);
    last = spin_count;
    nap(2000);
  }
  return NULL;
}

/* Made before the process says it is ready: its stack is then among the mappings the harness
 * sees first. */
static void start_spinner(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, spinner, NULL) != 0) die("pthread_create", 0, 0);
}

static void sweep_forever(void) {
  /* The generation continues from what the region holds (a child inherits the root's). */
  uint64_t gen = region[1];
  for (;;) {
    gen++;
    for (size_t i = 0; i < pages; i++) {
      uint64_t* p = region + i * (PAGE / 8);
      p[0] = i;
      p[1] = gen;
    }
    for (size_t i = 0; i < pages; i++) {
      const uint64_t* p = region + i * (PAGE / 8);
      if (p[0] != i) die("page lost its index", i, p[0]);
      if (p[1] != gen) die("page lost its generation", p[1], gen);
    }
    nap(5000);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: crest-kill9-job MIB [CHILDREN]\n");
    return 2;
  }
  size_t mib = strtoul(argv[1], NULL, 10);
  int children = argc > 2 ? atoi(argv[2]) : 1;
  pages = (mib << 20) / PAGE;
  if (pages == 0) pages = 1;
  region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) die("mmap", pages, errno);
  for (size_t i = 0; i < pages; i++) {
    region[i * (PAGE / 8)] = i;
    region[i * (PAGE / 8) + 1] = 0;
  }
  int ready[2];
  if (pipe(ready) != 0) die("pipe", errno, 0);
  for (int c = 0; c < children; c++) {
    pid_t pid = fork();
    if (pid < 0) die("fork", errno, 0);
    if (pid == 0) {
      close(ready[0]);
      start_spinner();
      char b = 1;
      if (write(ready[1], &b, 1) != 1) die("ready write", errno, 0);
      close(ready[1]);
      sweep_forever();
    }
  }
  close(ready[1]);
  start_spinner();
  /* Until every child has written its byte and closed its end (EOF): no child holds the pipe
   * any more when the harness looks at the job's descriptors. */
  int got = 0;
  char b;
  ssize_t n;
  while ((n = read(ready[0], &b, 1)) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("read of the ready pipe", errno, 0);
    got++;
  }
  if (got != children) die("a child died before it was ready", got, children);
  close(ready[0]);
  printf("ready\n");
  fflush(stdout);
  /* The root sweeps too. A child that dies stays a zombie (nobody waits): the harness sees it. */
  sweep_forever();
}
