/* libcrest-mpi: checkpoints an MPI program asks for, at a point where its ranks agree.
 *
 *   #include <crest_mpi.h>        cc app.c -lcrest-mpi $(mpicc --showme:link)
 *
 *   int r = crest_mpi_checkpoint(MPI_COMM_WORLD);
 *   if (r == CREST_MPI_RESTORED) reopen_output_files();
 *   else if (r < 0) fprintf(stderr, "no checkpoint: %s\n", crest_mpi_strerror(r));
 *
 * The job runs under crest: `crest run -- mpirun -np 4 ./app` (crest run's own supervisor, or
 * crestd's when one listens), or an mpirun registered with crestd (`crest register`). Every rank
 * of the communicator calls crest_mpi_checkpoint; it is collective and returns the same value on
 * every rank:
 *
 *   1. the ranks meet in a barrier (complete your own non-blocking requests first: the library
 *      cannot wait for requests it does not know; messages still in flight are saved with the
 *      job anyway, since crest checkpoints the transports too);
 *   2. rank 0 asks the agent supervising the job for a checkpoint of the whole job (the agent's
 *      socket is $CREST_JOB_SOCKET, which crest sets for its jobs, else $CREST_SOCKET, else
 *      /run/crest/crestd.sock; the job is $CREST_JOB, else the agent's job holding rank 0);
 *   3. every rank waits until the checkpoint is committed (or has failed), and learns the result
 *      from rank 0.
 *
 * When the job is later restored from that checkpoint (after a failure, by crest run, crestd or
 * `crest restore`), the ranks come back inside this call, which then returns CREST_MPI_RESTORED.
 * Rank 0 knows it from its own process: a restore brings back everything of a process but the
 * time it was made (/proc/self/stat starttime), which is the restore's.
 *
 * Call it from one thread of each rank at a time (the results are kept per process). The library
 * never exits the program and never prints; errors are negative return values.
 * `crest_mpi_last_error()` has the detailed message of the last failure (the same on every
 * rank). Environment: CREST_MPI_TIMEOUT (seconds to wait for the commit, default 600).
 */
#ifndef CREST_MPI_H
#define CREST_MPI_H

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  CREST_MPI_CHECKPOINTED = 0, /* the checkpoint is committed; the job runs on */
  CREST_MPI_RESTORED = 1,     /* the job was restored from a checkpoint taken in this call */

  CREST_MPI_ENOAGENT = -1, /* no crest agent: not started by crest run, nor registered with crestd */
  CREST_MPI_EREFUSED = -2, /* the agent refused the request (another user's job, not running...) */
  CREST_MPI_EFAILED = -3,  /* the agent tried and the checkpoint failed (the job holds something
                              crest refuses, no space...) */
  CREST_MPI_ETIMEDOUT = -4, /* no result within CREST_MPI_TIMEOUT seconds */
  CREST_MPI_EMPI = -5,      /* an MPI call of the library failed */
  CREST_MPI_ECOMM = -6,     /* the communicator does not hold every rank of the job (it must be
                               MPI_COMM_WORLD or have the same group) */
  CREST_MPI_ESYSTEM = -7    /* a system call failed (the message names it and errno) */
};

/* Collective over `comm` (all of MPI_COMM_WORLD's ranks): see above. */
int crest_mpi_checkpoint(MPI_Comm comm);

/* A constant string describing a return value of crest_mpi_checkpoint. */
const char* crest_mpi_strerror(int code);

/* The message of the last failed crest_mpi_checkpoint on this rank ("" if none): what the agent
 * or the system said. Valid until the next call. */
const char* crest_mpi_last_error(void);

/* The checkpoint the last successful crest_mpi_checkpoint made (its file name in the job's
 * images directory, e.g. "ckpt-000004.h5"; the same on every rank), or "". */
const char* crest_mpi_last_checkpoint(void);

#ifdef __cplusplus
}
#endif

#endif
