/* heat: the MPI version of the demo's solver (examples/solver.c). A deterministic Jacobi solve of
 * the steady 2-D heat equation on an N x N grid, split over the ranks in a 2-D Cartesian grid of
 * blocks (MPI_Dims_create), with a one-point halo around each block.
 *
 *   mpirun -np P heat [-n N] [-s SWEEPS] [-r REPORT_EVERY] [-w MICROSECONDS] [-f]
 *
 * The top edge is held hot with a sine profile, the other edges cold; every sweep replaces each
 * interior point by the mean of its four neighbours. Each sweep exchanges the block's edges with
 * its four neighbours (MPI_Irecv/MPI_Isend, then MPI_Waitall), updates the block, and sums the
 * change of the sweep over all ranks with one MPI_Allreduce. -w sleeps that long after each sweep
 * (so that a test can make a small job last a few seconds whatever the machine's speed). -f starts
 * the interior from a smooth non-zero field instead of zero (every page of the grid then holds
 * data from the start, as bench/mpi_bench.py wants; a different, equally deterministic answer).
 *
 * Rank 0 prints a progress line every REPORT_EVERY sweeps, and at the end, after gathering the
 * grid, one line
 *
 *   answer: <64-bit checksum of the final grid, hex> (mean temperature <value>)
 *
 * Every point is computed by the same expression from the same neighbours whatever the
 * decomposition, and the checksum and the mean are taken by rank 0 over the gathered grid in row
 * order, so the answer depends only on N and SWEEPS: the same for any number of ranks, and for a
 * run that is checkpointed, killed and restored any number of times. Nothing in here knows about
 * crest, except in the build crest-heat-mpi-ckpt (HEAT_WITH_CREST_MPI, linked with libcrest-mpi),
 * which takes one more option:
 *
 *   -c EVERY   ask crest for a checkpoint of the job every EVERY sweeps (crest_mpi_checkpoint),
 *              at the end of the sweep, where no halo message is in flight; rank 0 prints
 *              "heat: sweep S: checkpointed <checkpoint>", or, when the job comes back from such
 *              a checkpoint, "heat: sweep S: restored" (or the error).
 */
#define _GNU_SOURCE
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef HEAT_WITH_CREST_MPI
#include <crest_mpi.h>
#endif

static long n = 1024;
static long sweeps = 1000;
static long report_every = 50;
static long pause_us = 0;
static long checkpoint_every = 0;
static int filled = 0;

enum { up, down, left, right };

/* The block a rank owns: global rows [row0, row1) and columns [col0, col1). */
struct block {
  long row0, row1, col0, col1;
};

static struct block block_of(const int dims[2], const int coords[2]) {
  struct block b;
  b.row0 = n * coords[0] / dims[0];
  b.row1 = n * (coords[0] + 1) / dims[0];
  b.col0 = n * coords[1] / dims[1];
  b.col1 = n * (coords[1] + 1) / dims[1];
  return b;
}

static double initial(long i, long j) {
  if (i == 0) return 100.0 * sin(M_PI * (double)j / (double)(n - 1));
  if (filled && i < n - 1 && j > 0 && j < n - 1)
    return 50.0 + 25.0 * sin(0.0123 * (double)i) * cos(0.0071 * (double)j);
  return 0.0;
}

static void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    fprintf(stderr, "heat: %s failed (MPI error %d)\n", what, rc);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

static void usage(int rank) {
  if (rank == 0)
    fprintf(stderr, "usage: heat [-n N] [-s SWEEPS] [-r REPORT_EVERY] [-w MICROSECONDS] [-f]%s\n",
#ifdef HEAT_WITH_CREST_MPI
            " [-c CHECKPOINT_EVERY]"
#else
            ""
#endif
    );
  MPI_Finalize();
  exit(2);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  int opt;
#ifdef HEAT_WITH_CREST_MPI
  const char* opts = "n:s:r:w:fc:";
#else
  const char* opts = "n:s:r:w:f";
#endif
  while ((opt = getopt(argc, argv, opts)) != -1) {
    switch (opt) {
      case 'n': n = atol(optarg); break;
      case 's': sweeps = atol(optarg); break;
      case 'r': report_every = atol(optarg); break;
      case 'w': pause_us = atol(optarg); break;
      case 'f': filled = 1; break;
      case 'c': checkpoint_every = atol(optarg); break;
      default: usage(rank);
    }
  }
  if (n < 8 || sweeps < 1 || report_every < 1 || pause_us < 0 || checkpoint_every < 0) usage(rank);

  int dims[2] = {0, 0}, periods[2] = {0, 0}, coords[2];
  MPI_Dims_create(size, 2, dims);
  if (n < 2L * dims[0] || n < 2L * dims[1]) {
    if (rank == 0) fprintf(stderr, "heat: a %ld x %ld grid is too small for %d ranks\n", n, n, size);
    MPI_Finalize();
    return 2;
  }
  MPI_Comm cart;
  check(MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, 0, &cart), "MPI_Cart_create");
  MPI_Comm_rank(cart, &rank);
  MPI_Cart_coords(cart, rank, 2, coords);
  int nb[4];
  MPI_Cart_shift(cart, 0, 1, &nb[up], &nb[down]);
  MPI_Cart_shift(cart, 1, 1, &nb[left], &nb[right]);

  struct block b = block_of(dims, coords);
  long rows = b.row1 - b.row0, cols = b.col1 - b.col0;
  long stride = cols + 2; /* local arrays: (rows + 2) x (cols + 2), halo all around */
  double* grid[2];
  for (int g = 0; g < 2; g++) {
    grid[g] = calloc((size_t)(rows + 2) * (size_t)stride, sizeof(double));
    if (grid[g] == NULL) {
      perror("heat: calloc");
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (long i = 0; i < rows; i++)
      for (long j = 0; j < cols; j++) grid[g][(i + 1) * stride + j + 1] = initial(b.row0 + i, b.col0 + j);
  }
  MPI_Datatype column;
  MPI_Type_vector((int)rows, 1, (int)stride, MPI_DOUBLE, &column);
  MPI_Type_commit(&column);

  /* The interior of the block: the global boundary never changes. */
  long i0 = b.row0 == 0 ? 2 : 1, i1 = b.row1 == n ? rows : rows + 1;
  long j0 = b.col0 == 0 ? 2 : 1, j1 = b.col1 == n ? cols : cols + 1;

  if (rank == 0) {
    printf("heat: %ld x %ld grid (%.1f MiB), %ld sweeps, %d ranks in %d x %d blocks, pid %d\n", n,
           n, 2.0 * (double)n * (double)n * sizeof(double) / (1 << 20), sweeps, size, dims[0],
           dims[1], (int)getpid());
    fflush(stdout);
  }
  double t0 = MPI_Wtime();
  for (long s = 0; s < sweeps; s++) {
    double* cur = grid[s & 1];
    double* next = grid[(s + 1) & 1];

    /* Halo exchange: receive the neighbours' edges into the halo, send ours. */
    MPI_Request req[8];
    int nreq = 0;
    MPI_Irecv(&cur[1], (int)cols, MPI_DOUBLE, nb[up], 0, cart, &req[nreq++]);
    MPI_Irecv(&cur[(rows + 1) * stride + 1], (int)cols, MPI_DOUBLE, nb[down], 1, cart, &req[nreq++]);
    MPI_Irecv(&cur[stride], 1, column, nb[left], 2, cart, &req[nreq++]);
    MPI_Irecv(&cur[stride + cols + 1], 1, column, nb[right], 3, cart, &req[nreq++]);
    MPI_Isend(&cur[stride + 1], (int)cols, MPI_DOUBLE, nb[up], 1, cart, &req[nreq++]);
    MPI_Isend(&cur[rows * stride + 1], (int)cols, MPI_DOUBLE, nb[down], 0, cart, &req[nreq++]);
    MPI_Isend(&cur[stride + 1], 1, column, nb[left], 3, cart, &req[nreq++]);
    MPI_Isend(&cur[stride + cols], 1, column, nb[right], 2, cart, &req[nreq++]);
    check(MPI_Waitall(nreq, req, MPI_STATUSES_IGNORE), "MPI_Waitall");

    double change = 0;
    for (long i = i0; i < i1; i++) {
      const double* above = &cur[(i - 1) * stride];
      const double* row = &cur[i * stride];
      const double* below = &cur[(i + 1) * stride];
      double* out = &next[i * stride];
      for (long j = j0; j < j1; j++) {
        double v = 0.25 * (above[j] + below[j] + row[j - 1] + row[j + 1]);
        change += fabs(v - row[j]);
        out[j] = v;
      }
    }
    double total = 0;
    check(MPI_Allreduce(&change, &total, 1, MPI_DOUBLE, MPI_SUM, cart), "MPI_Allreduce");
    if (rank == 0 && ((s + 1) % report_every == 0 || s + 1 == sweeps)) {
      printf("sweep %5ld/%ld  mean change %.6e\n", s + 1, sweeps, total / (double)((n - 2) * (n - 2)));
      fflush(stdout);
    }
    if (pause_us > 0) usleep((useconds_t)pause_us);
#ifdef HEAT_WITH_CREST_MPI
    if (checkpoint_every > 0 && (s + 1) % checkpoint_every == 0 && s + 1 < sweeps) {
      /* Every request of the sweep is complete: the ranks agree here, and crest takes the job. */
      int r = crest_mpi_checkpoint(cart);
      if (rank == 0) {
        if (r == CREST_MPI_CHECKPOINTED)
          printf("heat: sweep %ld: checkpointed %s\n", s + 1, crest_mpi_last_checkpoint());
        else if (r == CREST_MPI_RESTORED)
          printf("heat: sweep %ld: restored\n", s + 1);
        else
          printf("heat: sweep %ld: no checkpoint: %s\n", s + 1,
                 *crest_mpi_last_error() ? crest_mpi_last_error() : crest_mpi_strerror(r));
        fflush(stdout);
      }
    }
#endif
  }
  double elapsed = MPI_Wtime() - t0;

  /* Gather the blocks on rank 0 (in rank order, each with its own extent) into the full grid. */
  const double* fin = grid[sweeps & 1];
  double* mine = malloc((size_t)rows * (size_t)cols * sizeof(double));
  if (mine == NULL) MPI_Abort(MPI_COMM_WORLD, 1);
  for (long i = 0; i < rows; i++) memcpy(&mine[i * cols], &fin[(i + 1) * stride + 1], (size_t)cols * sizeof(double));
  if (rank != 0) {
    check(MPI_Send(mine, (int)(rows * cols), MPI_DOUBLE, 0, 9, cart), "MPI_Send");
  } else {
    double* all = malloc((size_t)n * (size_t)n * sizeof(double));
    if (all == NULL) MPI_Abort(MPI_COMM_WORLD, 1);
    for (int r = 0; r < size; r++) {
      int c[2];
      MPI_Cart_coords(cart, r, 2, c);
      struct block o = block_of(dims, c);
      long orows = o.row1 - o.row0, ocols = o.col1 - o.col0;
      const double* src = mine;
      if (r != 0) {
        double* buf = malloc((size_t)orows * (size_t)ocols * sizeof(double));
        if (buf == NULL) MPI_Abort(MPI_COMM_WORLD, 1);
        check(MPI_Recv(buf, (int)(orows * ocols), MPI_DOUBLE, r, 9, cart, MPI_STATUS_IGNORE), "MPI_Recv");
        src = buf;
      }
      for (long i = 0; i < orows; i++)
        memcpy(&all[(o.row0 + i) * n + o.col0], &src[i * ocols], (size_t)ocols * sizeof(double));
      if (r != 0) free((void*)src);
    }
    /* FNV-1a over the bits of the final grid, row by row, as examples/solver.c does. */
    uint64_t h = 1469598103934665603ull;
    double sum = 0;
    for (long k = 0; k < n * n; k++) {
      uint64_t bits;
      memcpy(&bits, &all[k], sizeof bits);
      h = (h ^ bits) * 1099511628211ull;
      sum += all[k];
    }
    printf("heat: done in %.1f s\n", elapsed);
    printf("answer: %016llx (mean temperature %.12f)\n", (unsigned long long)h, sum / (double)(n * n));
    fflush(stdout);
    free(all);
  }
  free(mine);
  MPI_Type_free(&column);
  MPI_Comm_free(&cart);
  MPI_Finalize();
  return 0;
}
