/* crest_spank: Slurm SPANK plugin that checkpoints batch jobs with crest and restores them when
 * Slurm runs them again after a requeue.
 *
 * The user's side: one option, on sbatch, salloc or srun (or in the environment,
 * SLURM_SPANK__SLURM_SPANK_OPTION_crest_checkpoint=2m):
 *     --checkpoint=INTERVAL|auto   checkpoint every INTERVAL (30s, 10m, 1h30m) or at Daly's interval
 *     --checkpoint-dir=DIR         where the images go (default <storage>/<uid>/slurm-<job id>)
 *     --checkpoint-keep=N          checkpoints kept (default: crestd's, or keep= below)
 *
 * The admin's side: one line in plugstack.conf, every argument optional:
 *     required /usr/local/lib/crest/crest_spank.so socket=/run/crest/crestd.sock \
 *         storage=/var/lib/crest/images crest=/usr/local/bin/crest interval=10m keep=3 \
 *         jobs=opt-in restore=yes
 *   jobs=opt-in   only jobs that ask (--checkpoint) are checkpointed (default)
 *   jobs=all      every batch job is, at `interval` unless it asks for another
 *   restore=no    a requeued job starts from the top even when it has a checkpoint
 *
 * What it does, by SPANK hook (remote context = slurmstepd of the job's batch step on its node):
 *   slurm_spank_init             registers the options (in every context: sbatch and salloc only
 *                                know options registered this way) and reads the arguments.
 *   option callbacks             check the values (a bad one fails sbatch/srun at once) and keep
 *                                them; in slurmstepd they run before init_post_opt.
 *   slurm_spank_init_post_opt    (remote, batch step) decides: checkpointed or not, the images
 *                                directory, and whether this run is a restart (the job's
 *                                restart count, asked of slurmctld, >= 1) that has a complete
 *                                checkpoint its user may restore (`crest restore --check-only
 *                                --owner`, run from slurmstepd).
 *   slurm_spank_task_init_privileged  (remote, in the task's process before it executes the
 *                                script, still root) for a restart with a checkpoint: executes
 *                                `crest restore --pidns --launcher-session --owner UID:GID` in
 *                                its place, so that slurmstepd's task is the restorer, which
 *                                waits for the restored job and exits the way it does; for a
 *                                restart without one it says in the job's output why the job
 *                                starts from the top.
 *   slurm_spank_task_post_fork   (remote, slurmstepd) once the task has executed the script,
 *                                hands its process tree to the node's crestd with `register`
 *                                (as root, for the job's uid and gid, with the Slurm job id), from
 *                                a thread so that slurmstepd never waits for crestd.
 *
 * Written against slurm/spank.h only: the symbols resolve inside srun, sbatch and slurmstepd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/slurm_errno.h>
#include <slurm/spank.h>

SPANK_PLUGIN(crest, 1);

#define BATCH_STEP 0xfffffffbU /* SLURM_BATCH_SCRIPT */

/* ---- configuration (plugstack.conf) ------------------------------------------------------ */

static char cfg_socket[sizeof(((struct sockaddr_un*)0)->sun_path)] = "/run/crest/crestd.sock";
static char cfg_storage[PATH_MAX - 64] = "/var/lib/crest/images";
static char cfg_crest[PATH_MAX] = "/usr/local/bin/crest";
static char cfg_interval[64] = "10m";
static long cfg_keep = 0; /* 0: crestd's default */
static int cfg_all_jobs = 0;
static int cfg_restore = 1;

/* ---- the job's options --------------------------------------------------------------------- */

static char opt_interval[64];
static char opt_dir[PATH_MAX];
static long opt_keep;

/* ---- decisions of this slurmstepd (inherited by the task's process at fork) ----------------- */

static int job_enabled;         /* this batch step is checkpointed */
static uint32_t job_id;
static uid_t job_uid;
static gid_t job_gid;
static char job_dir[PATH_MAX];
static long restart_count;
static int restore_it;          /* restart with a checkpoint: restore instead of the script */
static char start_note[1024];   /* why a restart starts from the top, for the job's output */

static int copy_str(char* dst, size_t size, const char* src) {
  size_t n = strlen(src);
  if (n >= size) return -1;
  memcpy(dst, src, n + 1);
  return 0;
}

/* INTERVAL: "auto", or numbers with units as crestd reads them (500ms, 30s, 10m, 1h30m, 2d). */
static int valid_interval(const char* text) {
  const char* s = text;
  if (strcmp(s, "auto") == 0) return 1;
  if (*s == '\0' || strlen(s) >= sizeof opt_interval) return 0;
  while (*s) {
    const char* num = s;
    while ((*s >= '0' && *s <= '9') || *s == '.') s++;
    if (s == num) return 0;
    const char* unit = s;
    while ((*s >= 'a' && *s <= 'z')) s++;
    size_t len = (size_t)(s - unit);
    if (len == 0) return *s == '\0' && num == text; /* a bare number: seconds */
    if (!((len == 2 && strncmp(unit, "ms", 2) == 0) || (len == 1 && strchr("smhd", *unit)) ||
          (len == 3 && strncmp(unit, "min", 3) == 0)))
      return 0;
  }
  return 1;
}

static int parse_count(const char* s, long* out) {
  char* end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 100000) return -1;
  *out = v;
  return 0;
}

static int cb_checkpoint(int val, const char* arg, int remote) {
  (void)val;
  (void)remote;
  if (arg == NULL || !valid_interval(arg)) {
    slurm_error("crest: --checkpoint=%s: give an interval (30s, 10m, 1h30m) or auto",
                arg ? arg : "");
    return -1;
  }
  return copy_str(opt_interval, sizeof opt_interval, arg);
}

static int cb_dir(int val, const char* arg, int remote) {
  (void)val;
  (void)remote;
  if (arg == NULL || arg[0] != '/' || strstr(arg, "/../") != NULL ||
      copy_str(opt_dir, sizeof opt_dir, arg) != 0) {
    slurm_error("crest: --checkpoint-dir=%s: give an absolute directory", arg ? arg : "");
    return -1;
  }
  return 0;
}

static int cb_keep(int val, const char* arg, int remote) {
  (void)val;
  (void)remote;
  if (arg == NULL || parse_count(arg, &opt_keep) != 0) {
    slurm_error("crest: --checkpoint-keep=%s: give a number of checkpoints, 1 or more",
                arg ? arg : "");
    return -1;
  }
  return 0;
}

static struct spank_option options[] = {
    {"checkpoint", "INTERVAL|auto",
     "Checkpoint the job with crest every INTERVAL (30s, 10m, 1h30m) or at the optimal interval "
     "(auto); a requeued job is restored from its newest checkpoint",
     1, 0, cb_checkpoint},
    {"checkpoint-dir", "DIR", "Directory for the job's crest checkpoints", 1, 0, cb_dir},
    {"checkpoint-keep", "N", "Number of crest checkpoints kept", 1, 0, cb_keep},
};

static int parse_args(int ac, char** av) {
  for (int i = 0; i < ac; i++) {
    const char* a = av[i];
    const char* eq = strchr(a, '=');
    if (eq == NULL) {
      slurm_error("crest: plugstack.conf argument '%s' is not KEY=VALUE", a);
      return -1;
    }
    size_t klen = (size_t)(eq - a);
    const char* v = eq + 1;
    int bad = 0;
#define KEY(k) (klen == strlen(k) && strncmp(a, k, klen) == 0)
    if (KEY("socket")) {
      bad = v[0] != '/' || copy_str(cfg_socket, sizeof cfg_socket, v);
    } else if (KEY("storage")) {
      bad = v[0] != '/' || copy_str(cfg_storage, sizeof cfg_storage, v);
    } else if (KEY("crest")) {
      bad = v[0] != '/' || copy_str(cfg_crest, sizeof cfg_crest, v);
    } else if (KEY("interval")) {
      bad = !valid_interval(v) || copy_str(cfg_interval, sizeof cfg_interval, v);
    } else if (KEY("keep")) {
      bad = parse_count(v, &cfg_keep);
    } else if (KEY("jobs")) {
      if (strcmp(v, "all") == 0) cfg_all_jobs = 1;
      else if (strcmp(v, "opt-in") == 0) cfg_all_jobs = 0;
      else bad = 1;
    } else if (KEY("restore")) {
      if (strcmp(v, "yes") == 0) cfg_restore = 1;
      else if (strcmp(v, "no") == 0) cfg_restore = 0;
      else bad = 1;
    } else {
      slurm_error("crest: unknown plugstack.conf argument '%s' (socket, storage, crest, interval, "
                  "keep, jobs, restore)", a);
      return -1;
    }
#undef KEY
    if (bad) {
      slurm_error("crest: bad plugstack.conf argument '%s'", a);
      return -1;
    }
  }
  return 0;
}

/* ---- helpers --------------------------------------------------------------------------------- */

/* Appends printf output to a fixed buffer, truncating. */
static void appendf(char* buf, size_t size, const char* fmt, ...) {
  size_t used = strlen(buf);
  if (used + 1 >= size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + used, size - used, fmt, ap);
  va_end(ap);
}

/* A JSON string literal of s (quotes and escapes). */
static void append_json_str(char* buf, size_t size, const char* s) {
  appendf(buf, size, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') appendf(buf, size, "\\%c", c);
    else if (c < 0x20) appendf(buf, size, "\\u%04x", c);
    else appendf(buf, size, "%c", c);
  }
  appendf(buf, size, "\"");
}

/* Runs argv (no shell), its stdout and stderr captured into out; returns its exit status as
 * waitpid gives it, or -1 if it could not run. Used in slurmstepd before any task exists. */
static int run_capture(char* const argv[], char* out, size_t out_size) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    dup2(p[1], 1);
    dup2(p[1], 2);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, 0);
    char* env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", NULL};
    execve(argv[0], argv, env);
    dprintf(2, "cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(p[1]);
  size_t used = 0;
  out[0] = '\0';
  for (;;) {
    char chunk[512];
    ssize_t n = read(p[0], chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n && used + 1 < out_size; i++) out[used++] = chunk[i];
    out[used] = '\0';
  }
  close(p[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return st;
}

/* The last non-empty line of text, without "crest: " in front. */
static const char* last_line(char* text) {
  size_t n = strlen(text);
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ')) text[--n] = '\0';
  char* nl = strrchr(text, '\n');
  char* line = nl ? nl + 1 : text;
  if (strncmp(line, "crest: ", 7) == 0) line += 7;
  return line;
}

/* ---- hooks ----------------------------------------------------------------------------------- */

int slurm_spank_init(spank_t sp, int ac, char** av) {
  for (size_t i = 0; i < sizeof options / sizeof options[0]; i++) {
    spank_err_t rc = spank_option_register(sp, &options[i]);
    if (rc != ESPANK_SUCCESS) {
      slurm_error("crest: cannot register --%s: %s", options[i].name, spank_strerror(rc));
      return -1;
    }
  }
  return parse_args(ac, av);
}

/* How many times Slurm has requeued this job. On 22.05 slurmstepd knows it only late: the job's
 * SLURM_RESTART_COUNT appears in its environment after task_init_privileged (too late to restore
 * as root), and S_SLURM_RESTART_COUNT reads 0 on a requeued batch step. So ask slurmctld, as
 * scontrol does (slurm_load_job resolves inside slurmstepd); the environment first, in case a
 * later Slurm sets it in time. -1: unknown. */
static long restart_count_of(spank_t sp, uint32_t id) {
  char buf[32];
  if (spank_getenv(sp, "SLURM_RESTART_COUNT", buf, sizeof buf) == ESPANK_SUCCESS) {
    char* end = NULL;
    long v = strtol(buf, &end, 10);
    if (end != buf && v >= 0) return v;
  }
  job_info_msg_t* info = NULL;
  if (slurm_load_job(&info, id, SHOW_ALL) != 0 || info == NULL) {
    slurm_error("crest: job %u: cannot ask slurmctld for the job's restart count: %s", id,
                slurm_strerror(slurm_get_errno()));
    return -1;
  }
  long count = -1;
  for (uint32_t i = 0; i < info->record_count; i++)
    if (info->job_array[i].job_id == id) count = info->job_array[i].restart_cnt;
  slurm_free_job_info_msg(info);
  return count;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char** av) {
  (void)ac;
  (void)av;
  if (spank_context() != S_CTX_REMOTE) return 0;
  uint32_t step = 0;
  if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS || step != BATCH_STEP) return 0;
  if (opt_interval[0] == '\0' && !cfg_all_jobs) return 0;
  if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_UID, &job_uid) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_GID, &job_gid) != ESPANK_SUCCESS) {
    slurm_error("crest: cannot learn the job's id, uid or gid: the job is not checkpointed");
    return 0;
  }
  if (opt_dir[0] != '\0')
    copy_str(job_dir, sizeof job_dir, opt_dir);
  else
    snprintf(job_dir, sizeof job_dir, "%s/%u/slurm-%u", cfg_storage, (unsigned)job_uid, job_id);
  job_enabled = 1;

  restart_count = restart_count_of(sp, job_id);
  if (restart_count == 0) return 0;
  if (restart_count < 0) {
    snprintf(start_note, sizeof start_note,
             "crest: job %u: cannot learn from slurmctld whether this is a requeued run; the job "
             "starts from the top\n", job_id);
    return 0;
  }
  if (!cfg_restore) {
    snprintf(start_note, sizeof start_note,
             "crest: job %u, run %ld: restores are off on this cluster (restore=no); the job "
             "starts from the top\n", job_id, restart_count + 1);
    return 0;
  }
  /* Is there a complete checkpoint this job's user may restore? crest checks every checksum of
   * the newest complete one and its chain, and that every process in it is the user's. */
  char owner[64];
  snprintf(owner, sizeof owner, "%u:%u", (unsigned)job_uid, (unsigned)job_gid);
  char* argv[] = {cfg_crest, "restore", "--check-only", "-D", job_dir, "--owner", owner, NULL};
  char out[4096];
  int st = run_capture(argv, out, sizeof out);
  if (st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    restore_it = 1;
    slurm_info("crest: job %u run %ld: restoring from %s", job_id, restart_count + 1, job_dir);
    return 0;
  }
  snprintf(start_note, sizeof start_note,
           "crest: job %u, run %ld: no checkpoint to restore from %s (%s); the job starts from "
           "the top\n", job_id, restart_count + 1, job_dir,
           st < 0 ? "crest could not run" : last_line(out));
  slurm_info("%s", start_note);
  return 0;
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char** av) {
  (void)ac;
  (void)av;
  if (!job_enabled) return 0;
  if (start_note[0] != '\0') {
    (void)!write(2, start_note, strlen(start_note));
    return 0;
  }
  if (!restore_it) return 0;
  (void)sp;
  /* This process is the task slurmstepd waits for: it becomes the restorer, which stays the
   * restored job's parent and ends the way the job ends. Output of crest goes to the job's. */
  char owner[64];
  snprintf(owner, sizeof owner, "%u:%u", (unsigned)job_uid, (unsigned)job_gid);
  char* argv[16];
  int n = 0;
  argv[n++] = cfg_crest;
  argv[n++] = "restore";
  argv[n++] = "-D";
  argv[n++] = job_dir;
  argv[n++] = "--pidns";
  argv[n++] = "--owner";
  argv[n++] = owner;
  argv[n++] = "--file-changes=truncate";
  argv[n++] = "--launcher-session";
  argv[n] = NULL;
  char* env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", NULL};
  dprintf(2, "crest: job %u, run %ld: restoring from its newest checkpoint in %s\n", job_id,
          restart_count + 1, job_dir);
  execve(cfg_crest, argv, env);
  dprintf(2, "crest: job %u: cannot execute %s: %s\n", job_id, cfg_crest, strerror(errno));
  _exit(127);
}

/* ---- registering the task with crestd -------------------------------------------------------- */

struct reg {
  pid_t pid;
  uid_t uid;
  gid_t gid;
  uint32_t job;
  char dir[PATH_MAX];
  char every[64];
  long keep;
};

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Says one line in the job's output (its stderr, opened again for appending). */
static void tell_job(pid_t pid, const char* fmt, ...) {
  char path[64], line[2048];
  snprintf(path, sizeof path, "/proc/%d/fd/2", (int)pid);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return;
  (void)!write(fd, line, strlen(line));
  close(fd);
}

/* Sends one request line and reads the one reply line into reply. */
static int crestd_call(const char* request, char* reply, size_t size, char* err, size_t err_size) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    snprintf(err, err_size, "socket: %s", strerror(errno));
    return -1;
  }
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  memcpy(addr.sun_path, cfg_socket, sizeof cfg_socket);
  struct timeval tv = {.tv_sec = 60};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(s, (struct sockaddr*)&addr, sizeof addr) != 0) {
    err[0] = '\0';
    appendf(err, err_size, "no crestd listening on %s (%s)", cfg_socket, strerror(errno));
    close(s);
    return -1;
  }
  size_t len = strlen(request), off = 0;
  while (off < len) {
    ssize_t n = send(s, request + off, len - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      snprintf(err, err_size, "sending to crestd: %s", strerror(errno));
      close(s);
      return -1;
    }
    off += (size_t)n;
  }
  size_t used = 0;
  reply[0] = '\0';
  while (used + 1 < size) {
    ssize_t n = recv(s, reply + used, size - 1 - used, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    used += (size_t)n;
    reply[used] = '\0';
    if (memchr(reply, '\n', used)) break;
  }
  close(s);
  if (used == 0) {
    snprintf(err, err_size, "crestd closed the connection without a reply");
    return -1;
  }
  return 0;
}

/* The string value of "key" in a flat spot of a JSON reply (enough for error messages and ids). */
static void json_pick(const char* json, const char* key, char* out, size_t size) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  out[0] = '\0';
  const char* p = strstr(json, pat);
  if (p == NULL) return;
  p += strlen(pat);
  while (*p == ' ') p++;
  if (*p == '"') {
    p++;
    size_t i = 0;
    while (*p && *p != '"' && i + 1 < size) {
      if (*p == '\\' && p[1]) p++;
      out[i++] = *p++;
    }
    out[i] = '\0';
  } else {
    size_t i = 0;
    while (*p && *p != ',' && *p != '}' && i + 1 < size) out[i++] = *p++;
    out[i] = '\0';
  }
}

static void* register_task(void* arg) {
  struct reg* r = arg;
  /* The task is a fork of slurmstepd until it executes the job's script: wait for that (its
   * executable changes), so that crestd checks and watches the job, not slurmstepd's copy. */
  char self[PATH_MAX] = "", exe[PATH_MAX], path[64];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) self[n] = '\0';
  snprintf(path, sizeof path, "/proc/%d/exe", (int)r->pid);
  double deadline = mono_now() + 60;
  int executed = 0;
  while (mono_now() < deadline) {
    n = readlink(path, exe, sizeof exe - 1);
    if (n < 0 && errno == ENOENT) break; /* gone already */
    if (n > 0) {
      exe[n] = '\0';
      if (strcmp(exe, self) != 0) {
        executed = 1;
        break;
      }
    }
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (!executed) {
    slurm_error("crest: job %u: task %d never executed its script; not checkpointed", r->job,
                (int)r->pid);
    free(r);
    return NULL;
  }
  char req[8192] = "";
  appendf(req, sizeof req, "{\"op\":\"register\",\"pid\":%d,\"uid\":%u,\"gid\":%u,\"slurm_job\":%u,",
          (int)r->pid, (unsigned)r->uid, (unsigned)r->gid, r->job);
  appendf(req, sizeof req, "\"name\":\"slurm-%u\",\"dir\":", r->job);
  append_json_str(req, sizeof req, r->dir);
  appendf(req, sizeof req, ",\"every\":");
  append_json_str(req, sizeof req, r->every);
  if (r->keep > 0) appendf(req, sizeof req, ",\"keep\":%ld", r->keep);
  /* Slurm restarts the job (requeue), not crestd. */
  appendf(req, sizeof req, ",\"auto_restore\":0}\n");

  char reply[16384], err[512] = "";
  if (crestd_call(req, reply, sizeof reply, err, sizeof err) != 0) {
    slurm_error("crest: job %u: not checkpointed: %s", r->job, err);
    tell_job(r->pid, "crest: job %u is not checkpointed: %s\n", r->job, err);
  } else if (strstr(reply, "\"ok\":true") == NULL) {
    char msg[2048];
    json_pick(reply, "message", msg, sizeof msg);
    slurm_error("crest: job %u: not checkpointed: crestd: %s", r->job, msg);
    tell_job(r->pid, "crest: job %u is not checkpointed: crestd refused: %s\n", r->job, msg);
  } else {
    char id[64];
    json_pick(reply, "id", id, sizeof id);
    slurm_info("crest: job %u: crestd job %s, checkpoint every %s into %s", r->job, id, r->every,
               r->dir);
    tell_job(r->pid, "crest: job %u: checkpointed every %s by crestd (job %s) into %s\n", r->job,
             r->every, id, r->dir);
  }
  free(r);
  return NULL;
}

int slurm_spank_task_post_fork(spank_t sp, int ac, char** av) {
  (void)ac;
  (void)av;
  if (!job_enabled || restore_it) return 0;
  pid_t pid = 0;
  if (spank_get_item(sp, S_TASK_PID, &pid) != ESPANK_SUCCESS || pid <= 1) return 0;
  struct reg* r = calloc(1, sizeof *r);
  if (r == NULL) return 0;
  r->pid = pid;
  r->uid = job_uid;
  r->gid = job_gid;
  r->job = job_id;
  copy_str(r->dir, sizeof r->dir, job_dir);
  copy_str(r->every, sizeof r->every, opt_interval[0] ? opt_interval : cfg_interval);
  r->keep = opt_keep ? opt_keep : cfg_keep;
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&t, &attr, register_task, r) != 0) {
    slurm_error("crest: job %u: cannot start the registering thread; not checkpointed", job_id);
    free(r);
  }
  pthread_attr_destroy(&attr);
  return 0;
}

