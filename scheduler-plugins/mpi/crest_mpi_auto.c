/* libcrest-mpi-auto: checkpoints an unchanged MPI program at its own synchronisation points.
 *
 *   crest run -- mpirun -np 4 -x LD_PRELOAD=/usr/local/lib/libcrest-mpi-auto.so \
 *                       -x CREST_MPI_INTERVAL=30s ./app
 *
 * A PMPI wrapper of MPI_Barrier and MPI_Allreduce: at the first of these calls after each
 * CREST_MPI_INTERVAL (default 10m; 30s, 10m, 1h30m, 500ms, or plain seconds), once the program's
 * own call has returned on every rank, it calls crest_mpi_checkpoint on the same communicator,
 * then returns to the program. Only calls on a communicator holding every rank of the job
 * (MPI_COMM_WORLD or one with its group, as a Cartesian communicator) count.
 *
 * Every rank must take the same decision, or some rank would wait in a checkpoint the others
 * never join. Rank 0 alone reads the clock and decides, and tells the others with a broadcast on
 * the same communicator, right after the program's call (which the ranks make in the same order
 * on one communicator). So as not to add a broadcast to every call of a program that makes
 * thousands per second, decisions are taken every `stride` calls, a number rank 0 sends with
 * each decision, chosen so that decisions come about every 50 ms (and never less often than a
 * tenth of the interval): every rank counts the same calls, so all meet at the same call.
 *
 * Rank 0 says what happened on stderr, one line per checkpoint ("crest-mpi-auto: ...";
 * CREST_MPI_QUIET=1: nothing but errors). Without a crest agent (the program is not run by
 * crest) it says so once and stops trying. For programs whose collectives come from one thread
 * at a time (MPI_THREAD_FUNNELED or SERIALIZED use).
 *
 * The wrapper cannot complete the program's own non-blocking requests for it (the program will
 * wait on them itself): one still pending at the collective stays pending, its message is saved
 * with the job as any message in flight is, and the program completes it after the checkpoint or
 * after the restore as it would have.
 *
 * Fortran programs. Open MPI's Fortran bindings (libmpi_mpifh: mpif.h and `use mpi`; and
 * libmpi_usempif08: `use mpi_f08`) call the C library's PMPI_ entry points, never MPI_Barrier
 * or MPI_Allreduce, so the C wrappers below never see a Fortran program's calls. The wrapper
 * therefore also defines the Fortran names the MPI standard gives tools to intercept: the
 * mpif.h / `use mpi` subroutines in each of the usual manglings (mpi_barrier_, mpi_barrier,
 * mpi_barrier__, MPI_BARRIER, and the same for allreduce) and the `use mpi_f08` ones
 * (mpi_barrier_f08_, mpi_allreduce_f08_). Each calls the binding's own profiling entry
 * (pmpi_barrier_, pmpi_barrier_f08_...: found at run time with dlsym, so that the wrapper needs
 * no Fortran library of its own and a C program loads none), then does what the C wrapper does
 * on the communicator the Fortran handle names (MPI_Comm_f2c). Arguments are passed on
 * untouched: buffers (MPI_IN_PLACE, MPI_BOTTOM) mean to the binding what they meant to the
 * program.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crest_mpi.h"

enum { undecided, running, stopped };

static int state = undecided;
static long countdown = 1;      /* calls left before the next decision (the same on every rank) */
/* Rank 0's clock. */
static double interval_s = 600, next_due = 0, last_decision = 0;
static long stride = 1;
static long calls = 0;          /* counted calls, for the messages */
static int quiet = 0;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "30s", "10m", "1h30m", "500ms", "45" (seconds): seconds, or -1. */
static double parse_interval(const char* s) {
  double total = 0;
  int parts = 0;
  while (*s != '\0') {
    char* end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    s = end;
    double unit = 1;
    if (strncmp(s, "ms", 2) == 0) unit = 0.001, s += 2;
    else if (*s == 's') unit = 1, s++;
    else if (*s == 'm') unit = 60, s++;
    else if (*s == 'h') unit = 3600, s++;
    else if (*s != '\0') return -1;
    total += v * unit;
    parts++;
  }
  return parts > 0 && total > 0 ? total : -1;
}

/* Rank 0, first decision: reads the settings. Returns 0 to stop. */
static int setup(void) {
  const char* q = getenv("CREST_MPI_QUIET");
  quiet = q != NULL && *q == '1';
  const char* iv = getenv("CREST_MPI_INTERVAL");
  if (iv != NULL && *iv != '\0') {
    double v = parse_interval(iv);
    if (v <= 0) {
      fprintf(stderr,
              "crest-mpi-auto: CREST_MPI_INTERVAL='%s' is not an interval (30s, 10m, 1h30m, "
              "500ms, or seconds); no checkpoints\n",
              iv);
      return 0;
    }
    interval_s = v;
  }
  last_decision = now_s();
  next_due = last_decision + interval_s;
  return 1;
}

/* Whether comm holds every rank of the job, remembered as an attribute of comm (which MPI drops
 * when comm is freed, so a handle used again for another communicator is asked again). */
static int spans_job(MPI_Comm comm) {
  static int keyval = MPI_KEYVAL_INVALID;
  if (comm == MPI_COMM_WORLD) return 1;
  if (comm == MPI_COMM_NULL) return 0;
  if (keyval == MPI_KEYVAL_INVALID &&
      PMPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, MPI_COMM_NULL_DELETE_FN, &keyval, NULL) != MPI_SUCCESS)
    return 0;
  void* value = NULL;
  int found = 0;
  if (PMPI_Comm_get_attr(comm, keyval, &value, &found) == MPI_SUCCESS && found)
    return (intptr_t)value == 1;
  int same = MPI_UNEQUAL;
  int spans = PMPI_Comm_compare(comm, MPI_COMM_WORLD, &same) == MPI_SUCCESS &&
              (same == MPI_IDENT || same == MPI_CONGRUENT);
  PMPI_Comm_set_attr(comm, keyval, (void*)(intptr_t)(spans ? 1 : 2));
  return spans;
}

static void after(MPI_Comm comm, const char* where) {
  if (state == stopped) return;
  /* Calls on other communicators are not made by every rank: not counted. */
  if (!spans_job(comm)) return;
  calls++;
  if (--countdown > 0) return;
  int rank = 0;
  PMPI_Comm_rank(comm, &rank);
  /* decision[0]: 0 nothing, 1 checkpoint now, 2 stop for good; decision[1]: the next stride. */
  int decision[2] = {0, 1};
  if (rank == 0) {
    if (state == undecided) {
      decision[0] = setup() ? 0 : 2;
    } else {
      /* The calls to skip before the next decision: about `window` seconds' worth at the rate
       * of the last stride, changing at most twofold at a time. */
      double now = now_s();
      double window = interval_s / 10 < 0.05 ? interval_s / 10 : 0.05;
      double rate = (double)stride / (now - last_decision > 1e-6 ? now - last_decision : 1e-6);
      double next = rate * window;
      if (next > 2.0 * (double)stride) next = 2.0 * (double)stride;
      if (next < (double)stride / 2) next = (double)stride / 2;
      stride = next < 1 ? 1 : next > 100000 ? 100000 : (long)next;
      last_decision = now;
      decision[0] = now >= next_due ? 1 : 0;
      decision[1] = (int)stride;
    }
  }
  if (PMPI_Bcast(decision, 2, MPI_INT, 0, comm) != MPI_SUCCESS) {
    state = stopped;
    return;
  }
  state = decision[0] == 2 ? stopped : running;
  countdown = decision[1] > 0 ? decision[1] : 1;
  if (decision[0] != 1) return;

  double t0 = now_s();
  int r = crest_mpi_checkpoint(comm);
  if (rank == 0) {
    double t1 = now_s();
    if (r == CREST_MPI_CHECKPOINTED) {
      if (!quiet)
        fprintf(stderr, "crest-mpi-auto: checkpoint %s at %s (call %ld) in %.2f s\n",
                crest_mpi_last_checkpoint(), where, calls, t1 - t0);
    } else if (r == CREST_MPI_RESTORED) {
      if (!quiet)
        fprintf(stderr, "crest-mpi-auto: restored from the checkpoint taken at %s (call %ld)\n",
                where, calls);
    } else {
      fprintf(stderr, "crest-mpi-auto: no checkpoint at %s: %s%s\n", where,
              *crest_mpi_last_error() ? crest_mpi_last_error() : crest_mpi_strerror(r),
              r == CREST_MPI_ENOAGENT ? "; no more attempts" : "");
    }
    fflush(stderr);
    next_due = now_s() + interval_s;
    last_decision = now_s();
  }
  if (r == CREST_MPI_ENOAGENT) state = stopped; /* the same result on every rank */
}

int MPI_Barrier(MPI_Comm comm) {
  int rc = PMPI_Barrier(comm);
  if (rc == MPI_SUCCESS) after(comm, "MPI_Barrier");
  return rc;
}

int MPI_Allreduce(const void* sendbuf, void* recvbuf, int count, MPI_Datatype datatype, MPI_Op op,
                  MPI_Comm comm) {
  int rc = PMPI_Allreduce(sendbuf, recvbuf, count, datatype, op, comm);
  if (rc == MPI_SUCCESS) after(comm, "MPI_Allreduce");
  return rc;
}

/* ---- Fortran bindings --------------------------------------------------------------------- */

typedef void (*f_barrier_fn)(MPI_Fint* comm, MPI_Fint* ierr);
typedef void (*f_allreduce_fn)(void* sendbuf, void* recvbuf, MPI_Fint* count, MPI_Fint* datatype,
                               MPI_Fint* op, MPI_Fint* comm, MPI_Fint* ierr);

/* The first of `names` the libraries loaded after this one define; NULL if none. */
static void* next_symbol(const char* const* names) {
  for (; *names != NULL; names++) {
    void* f = dlsym(RTLD_NEXT, *names);
    if (f != NULL) return f;
  }
  return NULL;
}

static void after_fortran(MPI_Fint comm, const char* where) {
  after(PMPI_Comm_f2c(comm), where);
}

/* mpif.h and `use mpi`: MPI_BARRIER(COMM, IERROR). */
void mpi_barrier_(MPI_Fint* comm, MPI_Fint* ierr) {
  static f_barrier_fn real = NULL;
  static const char* const names[] = {"pmpi_barrier_", "pmpi_barrier", "pmpi_barrier__", "PMPI_BARRIER", NULL};
  if (real == NULL) real = (f_barrier_fn)next_symbol(names);
  if (real != NULL) {
    real(comm, ierr);
  } else {
    /* No Fortran binding loaded (cannot happen in a program that called this): do its work. */
    *ierr = (MPI_Fint)PMPI_Barrier(PMPI_Comm_f2c(*comm));
  }
  if (*ierr == MPI_SUCCESS) after_fortran(*comm, "MPI_BARRIER");
}
void mpi_barrier(MPI_Fint* comm, MPI_Fint* ierr) __attribute__((alias("mpi_barrier_")));
void mpi_barrier__(MPI_Fint* comm, MPI_Fint* ierr) __attribute__((alias("mpi_barrier_")));
void MPI_BARRIER(MPI_Fint* comm, MPI_Fint* ierr) __attribute__((alias("mpi_barrier_")));

/* mpif.h and `use mpi`: MPI_ALLREDUCE(SENDBUF, RECVBUF, COUNT, DATATYPE, OP, COMM, IERROR). */
void mpi_allreduce_(void* sendbuf, void* recvbuf, MPI_Fint* count, MPI_Fint* datatype, MPI_Fint* op,
                    MPI_Fint* comm, MPI_Fint* ierr) {
  static f_allreduce_fn real = NULL;
  static const char* const names[] = {"pmpi_allreduce_", "pmpi_allreduce", "pmpi_allreduce__",
                                      "PMPI_ALLREDUCE", NULL};
  if (real == NULL) real = (f_allreduce_fn)next_symbol(names);
  if (real == NULL) {
    /* The binding's translation of MPI_IN_PLACE and MPI_BOTTOM is its own: without it, refuse. */
    *ierr = MPI_ERR_INTERN;
    fprintf(stderr, "crest-mpi-auto: MPI_ALLREDUCE called from Fortran but no Fortran MPI binding "
                    "(pmpi_allreduce_) is loaded\n");
    return;
  }
  real(sendbuf, recvbuf, count, datatype, op, comm, ierr);
  if (*ierr == MPI_SUCCESS) after_fortran(*comm, "MPI_ALLREDUCE");
}
void mpi_allreduce(void* sendbuf, void* recvbuf, MPI_Fint* count, MPI_Fint* datatype, MPI_Fint* op,
                   MPI_Fint* comm, MPI_Fint* ierr) __attribute__((alias("mpi_allreduce_")));
void mpi_allreduce__(void* sendbuf, void* recvbuf, MPI_Fint* count, MPI_Fint* datatype, MPI_Fint* op,
                     MPI_Fint* comm, MPI_Fint* ierr) __attribute__((alias("mpi_allreduce_")));
void MPI_ALLREDUCE(void* sendbuf, void* recvbuf, MPI_Fint* count, MPI_Fint* datatype, MPI_Fint* op,
                   MPI_Fint* comm, MPI_Fint* ierr) __attribute__((alias("mpi_allreduce_")));

/* `use mpi_f08`: MPI_Barrier_f08(comm, ierror) with TYPE(MPI_Comm) comm (one INTEGER, passed by
 * reference) and an OPTIONAL ierror (a null pointer when the program leaves it out). */
void mpi_barrier_f08_(MPI_Fint* comm, MPI_Fint* ierror) {
  static f_barrier_fn real = NULL;
  static const char* const names[] = {"pmpi_barrier_f08_", NULL};
  if (real == NULL) real = (f_barrier_fn)next_symbol(names);
  MPI_Fint rc;
  if (real != NULL) real(comm, &rc);
  else rc = (MPI_Fint)PMPI_Barrier(PMPI_Comm_f2c(*comm));
  if (ierror != NULL) *ierror = rc;
  if (rc == MPI_SUCCESS) after_fortran(*comm, "MPI_Barrier (mpi_f08)");
}

/* `use mpi_f08`: MPI_Allreduce_f08(sendbuf, recvbuf, count, datatype, op, comm, ierror); the
 * handles are TYPE(MPI_...) of one INTEGER each, ierror OPTIONAL. */
void mpi_allreduce_f08_(void* sendbuf, void* recvbuf, MPI_Fint* count, MPI_Fint* datatype,
                        MPI_Fint* op, MPI_Fint* comm, MPI_Fint* ierror) {
  static f_allreduce_fn real = NULL;
  static const char* const names[] = {"pmpi_allreduce_f08_", NULL};
  if (real == NULL) real = (f_allreduce_fn)next_symbol(names);
  MPI_Fint rc;
  if (real == NULL) {
    fprintf(stderr, "crest-mpi-auto: MPI_Allreduce called from Fortran (mpi_f08) but its binding "
                    "(pmpi_allreduce_f08_) is not loaded\n");
    rc = MPI_ERR_INTERN;
  } else {
    real(sendbuf, recvbuf, count, datatype, op, comm, &rc);
  }
  if (ierror != NULL) *ierror = rc;
  if (rc == MPI_SUCCESS) after_fortran(*comm, "MPI_Allreduce (mpi_f08)");
}
