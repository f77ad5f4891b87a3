/* A single-threaded process computing in a loop. The loop keeps its state in registers (an
 * integer and a double that must stay equal) and mirrors it to memory (a counter and its
 * complement, a ring of recent values on the stack), so a restore that loses general registers,
 * SSE state, the stack or the data segment breaks an invariant. */
#include <stdio.h>

#include "workload.h"

static volatile uint64_t g_counter;
static volatile uint64_t g_shadow; /* always ~g_counter between iterations */

int main(int argc, char** argv) {
  wl_init(argc, argv);

  volatile uint64_t ring[16] = {0};
  uint64_t c = 0;
  double d = 0.0;
  const char* broken = NULL;
  uint64_t at_ready = 0;
  double t_ready = 0;
  uint64_t extra = 0; /* iterations to run after the check request */

  for (;;) {
    c++;
    d += 1.0;
    g_counter = c;
    g_shadow = ~c;
    ring[c % 16] = c;
    if ((double)c != d) {
      broken = "integer and double counters diverged";
      break;
    }
    if (g_shadow != ~g_counter || ring[c % 16] != c) {
      broken = "memory copies of the counter diverged";
      break;
    }
    if (c == 1000) {
      at_ready = c;
      t_ready = wl_now();
      wl_ready();
    }
    /* After the request, run on a little so the check covers execution after any restore. */
    if (wl_term && ++extra > 100000) break;
  }

  wl_expect(broken == NULL, "%s at iteration %llu", broken ? broken : "", (unsigned long long)c);
  /* At least the iterations run after the request, so past the value at ready. */
  wl_expect(g_counter >= at_ready + 100000, "counter %llu did not advance past %llu",
            (unsigned long long)g_counter, (unsigned long long)at_ready);
  wl_expect(g_shadow == ~g_counter, "shadow copy disagrees");
  for (int i = 0; i < 16; i++) {
    uint64_t v = ring[i];
    wl_expect(v == 0 || (v % 16 == (uint64_t)i && v <= c), "stack ring slot %d holds %llu", i,
              (unsigned long long)v);
  }
  wl_expect(wl_now() >= t_ready, "CLOCK_MONOTONIC went backwards");
  wl_finish();
}
