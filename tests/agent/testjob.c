/* testjob: the job the agent tests hand to crestd and crest run.
 *
 *   testjob [-n STEPS] [-m MS] [-M MIB] [-x EXIT] [-z] [-w] [-t]
 *
 * Fills MIB MiB with deterministic data, then runs STEPS steps: each one rewrites a slice of the
 * memory from the previous step's state (so an incremental checkpoint has fresh pages every
 * time), sleeps MS milliseconds, and prints "step K". At the end it prints
 *
 *   result <64-bit checksum of the memory, hex>
 *
 * and exits with EXIT. The result depends only on -n and -M: a run checkpointed, killed and
 * restored prints the same result as one that ran straight through. -z makes the memory
 * incompressible and slow to checkpoint (random bytes instead of a smooth pattern). With -w the
 * job waits for SIGTERM after its last step and exits with EXIT then. With -t a second thread
 * sleeps alongside (a multi-threaded job). Output is flushed line by line, so a reader of stdout
 * sees progress as it happens. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static volatile sig_atomic_t term;

static void* idle_thread(void* arg) {
  (void)arg;
  for (;;) pause();
  return NULL;
}
static void on_term(int sig) {
  (void)sig;
  term = 1;
}

int main(int argc, char** argv) {
  long steps = 20, ms = 100, mib = 8;
  int code = 0, random_fill = 0, wait_term = 0, second_thread = 0, opt;
  while ((opt = getopt(argc, argv, "n:m:M:x:zwt")) != -1) {
    switch (opt) {
      case 'n': steps = atol(optarg); break;
      case 'm': ms = atol(optarg); break;
      case 'M': mib = atol(optarg); break;
      case 'x': code = atoi(optarg); break;
      case 'z': random_fill = 1; break;
      case 'w': wait_term = 1; break;
      case 't': second_thread = 1; break;
      default:
        fprintf(stderr, "usage: testjob [-n STEPS] [-m MS] [-M MIB] [-x EXIT] [-z] [-w] [-t]\n");
        return 2;
    }
  }
  pthread_t idle;
  if (second_thread && pthread_create(&idle, NULL, idle_thread, NULL) != 0) {
    fprintf(stderr, "testjob: cannot start a thread\n");
    return 2;
  }
  if (wait_term) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
  }
  size_t words = (size_t)mib * (1u << 20) / sizeof(uint64_t);
  if (words < 512) words = 512;
  uint64_t* mem = malloc(words * sizeof(uint64_t));
  if (mem == NULL) {
    perror("testjob: malloc");
    return 1;
  }
  for (size_t i = 0; i < words; i++) mem[i] = random_fill ? mix(i + 1) : (i & 0xff);
  printf("testjob: pid %d, %ld steps of %ld ms, %ld MiB\n", (int)getpid(), steps, ms, mib);
  fflush(stdout);

  /* Each step rewrites a sixteenth of the memory (a different one each time). */
  size_t slice = words / 16;
  for (long k = 1; k <= steps; k++) {
    size_t start = (size_t)(k % 16) * slice;
    uint64_t carry = mem[(start + words - 1) % words];
    for (size_t i = start; i < start + slice; i++) {
      carry = mix(carry ^ mem[i] ^ (uint64_t)k);
      mem[i] = random_fill ? carry : (mem[i] + (carry & 1));
    }
    printf("step %ld\n", k);
    fflush(stdout);
    sleep_ms(ms);
  }
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < words; i++) h = (h ^ mem[i]) * 1099511628211ull;
  printf("result %016llx\n", (unsigned long long)h);
  fflush(stdout);
  if (wait_term) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    while (!term) sigsuspend(&old);
  }
  return code;
}
