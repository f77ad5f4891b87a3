/* libcrest-mpi: crest_mpi_checkpoint (see crest_mpi.h for the contract).
 *
 * How rank 0 talks to the agent (crestd, or crest run's embedded supervisor; the same protocol,
 * README "crestd and crest run"): one request line on the agent's Unix socket,
 *
 *   {"op": "checkpoint", "ticket": true, "job": "<CREST_JOB>"}
 *
 * answered at once with {"ok": true, "job": ..., "ticket": PATH}. The agent starts the checkpoint
 * only once this connection is closed, so that the frozen job holds no connection to the agent
 * (a socket to a process outside the job, which a checkpoint would have to refuse or cut). The
 * result then appears as the symlink PATH, whose target is "checkpointed <checkpoint>" or
 * "failed <kind>: <message>"; rank 0 polls it with readlink(), which holds no descriptor either.
 * Meanwhile the other ranks wait for rank 0's broadcast without spinning on a core.
 *
 * Restored or not: a restored process is a new process with the old one's memory, registers and
 * descriptors; only its start time (/proc/self/stat, field 22) is new. Rank 0 reads its own
 * before asking and while waiting: a different one means it runs in a restored job, whichever
 * checkpoint taken during the call it came from and whoever restored it (even `crest restore`
 * by hand, with no agent left to ask).
 *
 * All MPI calls go to the PMPI_ entry points, so that the PMPI wrapper libcrest-mpi-auto (which
 * intercepts MPI_Barrier and MPI_Allreduce) may call this without meeting itself.
 */
#define _GNU_SOURCE
#include "crest_mpi.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CREST_MPI_DEFAULT_SOCKET "/run/crest/crestd.sock"
#define MSG_MAX 480

/* What rank 0 broadcasts: the result and its message. */
struct outcome {
  int code;
  char message[MSG_MAX];
};

static char last_error[MSG_MAX];
static char last_checkpoint[MSG_MAX];

static int fail(struct outcome* o, int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(o->message, sizeof o->message, fmt, ap);
  va_end(ap);
  o->code = code;
  return code;
}

const char* crest_mpi_strerror(int code) {
  switch (code) {
    case CREST_MPI_CHECKPOINTED: return "checkpointed";
    case CREST_MPI_RESTORED: return "restored from the checkpoint";
    case CREST_MPI_ENOAGENT:
      return "no crest agent supervises this job (start it with crest run, or register it with crestd)";
    case CREST_MPI_EREFUSED: return "the crest agent refused the checkpoint request";
    case CREST_MPI_EFAILED: return "the checkpoint failed";
    case CREST_MPI_ETIMEDOUT: return "no checkpoint result within CREST_MPI_TIMEOUT";
    case CREST_MPI_EMPI: return "an MPI call failed";
    case CREST_MPI_ECOMM: return "the communicator does not hold every rank of the job";
    case CREST_MPI_ESYSTEM: return "a system call failed";
    default: return "unknown crest_mpi error";
  }
}

const char* crest_mpi_last_error(void) { return last_error; }

const char* crest_mpi_last_checkpoint(void) { return last_checkpoint; }

/* This process's start time in clock ticks since boot (/proc/self/stat field 22); 0 if unknown. */
static unsigned long long start_time(void) {
  char buf[1024];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  if (p == NULL) return 0;
  p++;
  /* Fields after the name: 3 (state) ... 22 (starttime): skip 19 of them. */
  for (int field = 3; field < 22; field++) {
    while (*p == ' ') p++;
    while (*p != ' ' && *p != '\0') p++;
  }
  return strtoull(p, NULL, 10);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The JSON string value of `key` anywhere in `doc` (a reply line of the agent) into out; 0 if
 * found. Strings are scanned whole, so a key inside a value is never taken for one. */
static int json_string(const char* doc, const char* key, char* out, size_t size) {
  const char* p = doc;
  while ((p = strchr(p, '"')) != NULL) {
    char s[MSG_MAX * 2];
    size_t len = 0;
    p++;
    while (*p != '\0' && *p != '"') {
      char c = *p++;
      if (c == '\\' && *p != '\0') {
        c = *p++;
        switch (c) {
          case 'n': c = '\n'; break;
          case 't': c = '\t'; break;
          case 'r': c = '\r'; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'u': /* \uXXXX: not needed for what the agent says; keep a placeholder */
            for (int i = 0; i < 4 && *p != '\0'; i++) p++;
            c = '?';
            break;
          default: break; /* \" \\ \/ */
        }
      }
      if (len + 1 < sizeof s) s[len++] = c;
    }
    s[len] = '\0';
    if (*p == '"') p++;
    const char* q = p;
    while (*q == ' ') q++;
    if (*q != ':') continue; /* a value, not a key */
    if (strcmp(s, key) != 0) continue;
    q++;
    while (*q == ' ') q++;
    if (*q != '"') return -1;
    /* The value: scan it the same way. */
    p = q + 1;
    len = 0;
    while (*p != '\0' && *p != '"') {
      char c = *p++;
      if (c == '\\' && *p != '\0') {
        c = *p++;
        if (c == 'n') c = '\n';
        else if (c == 't') c = '\t';
        else if (c == 'u') {
          for (int i = 0; i < 4 && *p != '\0'; i++) p++;
          c = '?';
        }
      }
      if (len + 1 < size) out[len++] = c;
    }
    out[len] = '\0';
    return 0;
  }
  return -1;
}

/* Appends s to out as a JSON string. */
static void json_quote(char* out, size_t size, const char* s) {
  size_t len = strlen(out);
  if (len + 1 < size) out[len++] = '"';
  for (; *s != '\0' && len + 7 < size; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[len++] = '\\';
      out[len++] = (char)c;
    } else if (c < 0x20) {
      len += (size_t)snprintf(out + len, size - len, "\\u%04x", c);
    } else {
      out[len++] = (char)c;
    }
  }
  if (len + 1 < size) out[len++] = '"';
  out[len] = '\0';
}

/* Rank 0: asks the agent, returns the ticket's path in `ticket`. */
static int request(struct outcome* o, char* ticket, size_t size) {
  const char* path = getenv("CREST_JOB_SOCKET");
  if (path == NULL || *path == '\0') path = getenv("CREST_SOCKET");
  if (path == NULL || *path == '\0') path = CREST_MPI_DEFAULT_SOCKET;
  const char* job = getenv("CREST_JOB");

  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path)
    return fail(o, CREST_MPI_ENOAGENT, "the agent's socket path is too long: %s", path);
  strcpy(addr.sun_path, path);
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return fail(o, CREST_MPI_ESYSTEM, "socket: %s", strerror(errno));
  if (connect(sock, (struct sockaddr*)&addr, sizeof addr) != 0) {
    int e = errno;
    close(sock);
    if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
      return fail(o, CREST_MPI_ENOAGENT,
                  "no crest agent listening on %s (%s): run the job with crest run, or register "
                  "it with crestd",
                  path, strerror(e));
    return fail(o, CREST_MPI_ESYSTEM, "cannot connect to the crest agent on %s: %s", path, strerror(e));
  }

  char line[512] = "{\"op\": \"checkpoint\", \"ticket\": true";
  if (job != NULL && *job != '\0') {
    strncat(line, ", \"job\": ", sizeof line - strlen(line) - 1);
    json_quote(line, sizeof line - 4, job);
  }
  strncat(line, "}\n", sizeof line - strlen(line) - 1);
  size_t sent = 0, want = strlen(line);
  while (sent < want) {
    ssize_t n = send(sock, line + sent, want - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      close(sock);
      return fail(o, CREST_MPI_ESYSTEM, "cannot send to the crest agent on %s: %s", path, strerror(e));
    }
    sent += (size_t)n;
  }

  char reply[4096];
  size_t got = 0;
  double deadline = now_s() + 30;
  while (got + 1 < sizeof reply && memchr(reply, '\n', got) == NULL) {
    struct pollfd pfd = {sock, POLLIN, 0};
    int left = (int)((deadline - now_s()) * 1000);
    if (left <= 0) {
      close(sock);
      return fail(o, CREST_MPI_ETIMEDOUT, "the crest agent on %s did not answer within 30 s", path);
    }
    int r = poll(&pfd, 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = recv(sock, reply + got, sizeof reply - 1 - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  /* Closing is what lets the agent start the checkpoint. */
  close(sock);
  reply[got] = '\0';
  if (memchr(reply, '\n', got) == NULL)
    return fail(o, CREST_MPI_ESYSTEM, "the crest agent on %s closed the connection without an answer", path);

  if (json_string(reply, "ticket", ticket, size) == 0 && strstr(reply, "\"ok\":true") != NULL)
    return 0;
  char kind[64] = "", message[MSG_MAX] = "";
  json_string(reply, "kind", kind, sizeof kind);
  if (json_string(reply, "message", message, sizeof message) != 0)
    snprintf(message, sizeof message, "unexpected answer: %.200s", reply);
  if (strcmp(kind, "usage") == 0 && strstr(message, "unknown op") != NULL)
    return fail(o, CREST_MPI_EREFUSED, "the crest agent on %s is too old for libcrest-mpi: %s", path, message);
  return fail(o, CREST_MPI_EREFUSED, "the crest agent refused: %s%s%s", kind, *kind ? ": " : "", message);
}

/* Rank 0: the whole exchange with the agent. */
static void rank0(struct outcome* o) {
  unsigned long long born = start_time();
  char ticket[1024];
  if (request(o, ticket, sizeof ticket) != 0) return;

  double timeout = 600;
  const char* t = getenv("CREST_MPI_TIMEOUT");
  if (t != NULL && atof(t) > 0) timeout = atof(t);
  double deadline = now_s() + timeout;
  long pause_ms = 1;
  for (;;) {
    unsigned long long now_born = start_time();
    if (born != 0 && now_born != 0 && now_born != born) {
      o->code = CREST_MPI_RESTORED;
      return;
    }
    char target[MSG_MAX];
    ssize_t n = readlink(ticket, target, sizeof target - 1);
    if (n >= 0) {
      target[n] = '\0';
      if (strncmp(target, "checkpointed ", 13) == 0) {
        /* A restore could have come between the two reads. */
        now_born = start_time();
        o->code = born != 0 && now_born != 0 && now_born != born ? CREST_MPI_RESTORED : CREST_MPI_CHECKPOINTED;
        snprintf(o->message, sizeof o->message, "%s", target + 13);
        return;
      }
      fail(o, CREST_MPI_EFAILED, "%s", strncmp(target, "failed ", 7) == 0 ? target + 7 : target);
      return;
    }
    if (errno != ENOENT) {
      fail(o, CREST_MPI_ESYSTEM, "cannot read the checkpoint ticket %s: %s", ticket, strerror(errno));
      return;
    }
    if (now_s() > deadline) {
      fail(o, CREST_MPI_ETIMEDOUT, "no checkpoint result after %.0f s (ticket %s)", timeout, ticket);
      return;
    }
    sleep_ms(pause_ms);
    if (pause_ms < 20) pause_ms *= 2;
  }
}

int crest_mpi_checkpoint(MPI_Comm comm) {
  struct outcome o;
  memset(&o, 0, sizeof o);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    snprintf(last_error, sizeof last_error, "MPI is not initialized (or already finalized)");
    return CREST_MPI_EMPI;
  }
  /* The same answer on every rank of comm, with no communication: safe to return at once. */
  int same = MPI_UNEQUAL;
  if (comm == MPI_COMM_NULL || PMPI_Comm_compare(comm, MPI_COMM_WORLD, &same) != MPI_SUCCESS ||
      (same != MPI_IDENT && same != MPI_CONGRUENT)) {
    snprintf(last_error, sizeof last_error,
             "crest_mpi_checkpoint needs a communicator with every rank of the job (MPI_COMM_WORLD)");
    return CREST_MPI_ECOMM;
  }
  int rank = 0;
  if (PMPI_Comm_rank(comm, &rank) != MPI_SUCCESS || PMPI_Barrier(comm) != MPI_SUCCESS) {
    snprintf(last_error, sizeof last_error, "MPI_Barrier before the checkpoint failed");
    return CREST_MPI_EMPI;
  }
  if (rank == 0) rank0(&o);
  /* Everyone waits for rank 0 without holding a core: rank 0 waits for the agent, whose
   * checkpoint wants the CPU. */
  MPI_Request req;
  if (PMPI_Ibcast(&o, (int)sizeof o, MPI_BYTE, 0, comm, &req) != MPI_SUCCESS) {
    snprintf(last_error, sizeof last_error, "MPI_Ibcast of the checkpoint's result failed");
    return CREST_MPI_EMPI;
  }
  for (long pause_ms = 0;;) {
    int done = 0;
    if (PMPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      snprintf(last_error, sizeof last_error, "MPI_Test of the checkpoint's result failed");
      return CREST_MPI_EMPI;
    }
    if (done) break;
    if (pause_ms > 0) sleep_ms(pause_ms);
    if (pause_ms < 5) pause_ms++;
  }
  o.message[sizeof o.message - 1] = '\0';
  if (o.code < 0) snprintf(last_error, sizeof last_error, "%s", o.message);
  else last_error[0] = '\0';
  if (o.code == CREST_MPI_CHECKPOINTED) snprintf(last_checkpoint, sizeof last_checkpoint, "%s", o.message);
  return o.code;
}
