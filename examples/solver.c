/* solver: the demo's HPC job. A deterministic Jacobi solve of the steady 2-D heat equation on an
 * N x N grid (two grids of doubles: 256 MiB at the default N = 4096), split over threads by rows.
 *
 *   solver [-n N] [-s SWEEPS] [-t THREADS] [-r REPORT_EVERY]
 *
 * The top edge is held hot with a sine profile, the other edges cold; every sweep replaces each
 * interior point by the mean of its four neighbours. It prints a progress line every REPORT_EVERY
 * sweeps and at the end one line
 *
 *   answer: <64-bit checksum of the final grid, hex> (mean temperature <value>)
 *
 * The result depends only on the arguments: the threads own fixed rows and meet at a barrier
 * after each sweep, and every sum is taken in the same order by one thread. So a run that is
 * checkpointed, killed and restored any number of times prints the same answer as one that ran
 * straight through. Nothing in here knows about crest.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long n = 4096;
static long sweeps = 1000;
static int threads = 2;
static long report_every = 50;

static double* grid[2];
static pthread_barrier_t barrier;
static double partial[64];  /* per-thread change of the last sweep, summed in order */

static double* at(double* g, long i, long j) { return g + i * n + j; }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct worker {
  int id;
  long row0, row1; /* interior rows [row0, row1) */
};

static void* work(void* arg) {
  struct worker* w = arg;
  for (long s = 0; s < sweeps; s++) {
    double* cur = grid[s & 1];
    double* next = grid[(s + 1) & 1];
    int measure = (s + 1) % report_every == 0 || s + 1 == sweeps;
    double change = 0;
    for (long i = w->row0; i < w->row1; i++) {
      const double* up = at(cur, i - 1, 0);
      const double* row = at(cur, i, 0);
      const double* down = at(cur, i + 1, 0);
      double* out = at(next, i, 0);
      for (long j = 1; j < n - 1; j++) {
        double v = 0.25 * (up[j] + down[j] + row[j - 1] + row[j + 1]);
        if (measure) change += fabs(v - row[j]);
        out[j] = v;
      }
    }
    partial[w->id] = change;
    pthread_barrier_wait(&barrier);
    if (w->id == 0 && measure) {
      double total = 0;
      for (int t = 0; t < threads; t++) total += partial[t];
      printf("sweep %5ld/%ld  mean change %.6e\n", s + 1, sweeps,
             total / (double)((n - 2) * (n - 2)));
      fflush(stdout);
    }
    pthread_barrier_wait(&barrier);
  }
  return NULL;
}

static void usage(void) {
  fprintf(stderr, "usage: solver [-n N] [-s SWEEPS] [-t THREADS] [-r REPORT_EVERY]\n");
  exit(2);
}

int main(int argc, char** argv) {
  int opt;
  while ((opt = getopt(argc, argv, "n:s:t:r:")) != -1) {
    switch (opt) {
      case 'n': n = atol(optarg); break;
      case 's': sweeps = atol(optarg); break;
      case 't': threads = atoi(optarg); break;
      case 'r': report_every = atol(optarg); break;
      default: usage();
    }
  }
  if (n < 8 || sweeps < 1 || threads < 1 || threads > 64 || report_every < 1) usage();

  size_t bytes = (size_t)n * (size_t)n * sizeof(double);
  for (int g = 0; g < 2; g++) {
    grid[g] = calloc((size_t)n * (size_t)n, sizeof(double));
    if (grid[g] == NULL) {
      perror("solver: calloc");
      return 1;
    }
    /* Hot top edge, cold elsewhere; the boundary never changes. */
    for (long j = 0; j < n; j++) *at(grid[g], 0, j) = 100.0 * sin(M_PI * (double)j / (double)(n - 1));
  }
  printf("solver: %ld x %ld grid (%.0f MiB), %ld sweeps, %d threads, pid %d\n", n, n,
         2.0 * (double)bytes / (1 << 20), sweeps, threads, (int)getpid());
  fflush(stdout);

  double t0 = now();
  pthread_barrier_init(&barrier, NULL, (unsigned)threads);
  pthread_t tid[64];
  struct worker w[64];
  long rows = n - 2;
  for (int t = 0; t < threads; t++) {
    w[t].id = t;
    w[t].row0 = 1 + rows * t / threads;
    w[t].row1 = 1 + rows * (t + 1) / threads;
    if (t > 0) pthread_create(&tid[t], NULL, work, &w[t]);
  }
  work(&w[0]);
  for (int t = 1; t < threads; t++) pthread_join(tid[t], NULL);

  /* FNV-1a over the bits of the final grid, row by row: one number that any difference
   * anywhere changes. */
  const double* fin = grid[sweeps & 1];
  uint64_t h = 1469598103934665603ull;
  double sum = 0;
  for (long i = 0; i < n * n; i++) {
    uint64_t bits;
    memcpy(&bits, &fin[i], sizeof bits);
    h = (h ^ bits) * 1099511628211ull;
    sum += fin[i];
  }
  printf("solver: done in %.1f s\n", now() - t0);
  printf("answer: %016llx (mean temperature %.12f)\n", (unsigned long long)h,
         sum / (double)(n * n));
  fflush(stdout);
  return 0;
}
