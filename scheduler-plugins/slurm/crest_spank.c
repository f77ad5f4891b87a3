/* crest_spank: Slurm SPANK plugin that checkpoints batch jobs with crest and restores them when
 * Slurm runs them again after a requeue.
 *
 * The user's side: one option, on sbatch, salloc or srun (or in the environment,
 * SLURM_SPANK__SLURM_SPANK_OPTION_crest_checkpoint=2m); only batch steps are checkpointed (an
 * srun step that asks says in its output that it is not: README "Slurm"):
 *     --checkpoint=INTERVAL|auto   checkpoint every INTERVAL (30s, 10m, 1h30m) or at Daly's interval
 *     --checkpoint-dir=DIR         where the images go (default <storage>/<uid>/slurm-<job id>)
 *     --checkpoint-keep=N          checkpoints kept (default: crestd's, or keep= below)
 *     --checkpoint-margin=D|auto   the last checkpoint this long before the time limit, after
 *                                  which crestd requeues the job (default: margin= below)
 * and SIGUSR1 to the batch step (scancel --signal=USR1 --batch, sbatch --signal=B:USR1@T) asks
 * for a checkpoint now instead of reaching the job.
 *
 * The admin's side: one line in plugstack.conf, every argument optional:
 *     required /usr/local/lib/crest/crest_spank.so socket=/run/crest/crestd.sock \
 *         storage=/var/lib/crest/images crest=/usr/local/bin/crest interval=10m keep=3 \
 *         jobs=opt-in restore=yes wrap=yes
 *   jobs=opt-in   only jobs that ask (--checkpoint) are checkpointed (default)
 *   jobs=all      every batch job is, at `interval` unless it asks for another
 *   restore=no    a requeued job starts from the top even when it has a checkpoint
 *   init=PATH     crest-init (default: next to crest=)
 *   wrap=no       run the script as slurmstepd's task itself rather than under crest-init in a
 *                 pid namespace of its own (then a restored job is not checkpointed again)
 *   margin=D|auto the default --checkpoint-margin (default: crestd's time_limit_margin)
 *   signal=USR1   the "checkpoint now" signal: USR1 (default), USR2, or none (passed on)
 *   socket=…%h…   %h is the node's short host name (one crestd per node on a shared path)
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
 *                                --owner`, run from slurmstepd). In an srun step's slurmstepd
 *                                that was asked for checkpoints: notes that srun steps are not
 *                                checkpointed (said by task 0 in task_init_privileged).
 *   slurm_spank_task_init_privileged  (remote, in the task's process before it executes the
 *                                script, still root) for a restart with a checkpoint: executes
 *                                `crest restore --pidns --launcher-session --owner UID:GID` in
 *                                its place, so that slurmstepd's task is the restorer, which
 *                                waits for the restored job and exits the way it does; for a
 *                                restart without one it says in the job's output why the job
 *                                starts from the top. Otherwise (wrap=yes) it makes a pid
 *                                namespace and forks the job's init-to-be, which goes on as the
 *                                task in a session of its own, while this process waits for it,
 *                                passes signals on and ends the way the job does.
 *   slurm_spank_task_init        (remote, in the init-to-be, as the user, with the task's final
 *                                environment) executes crest-init with the task's command: the
 *                                job is crest-init's child, pid 2 of its namespace, and the tree
 *                                (crest-init's) is one crest restores and checkpoints again.
 *   slurm_spank_task_post_fork   (remote, slurmstepd) once the job has started (crest-init runs
 *                                the script; or the task executed it; or crest restore let the
 *                                restored tree go), hands its tree to the node's crestd with
 *                                `register` (as root, for the job's uid and gid, with the Slurm
 *                                job id), from a thread so that slurmstepd never waits for crestd.
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
#include <sched.h>
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
static char cfg_init[PATH_MAX]; /* crest-init; default: next to cfg_crest */
static int cfg_wrap = 1;
static char cfg_margin[64];    /* time_limit_margin for crestd; "": crestd's default */
static int cfg_signal = SIGUSR1; /* "checkpoint now" (0: none, every signal is passed on) */

/* ---- the job's options --------------------------------------------------------------------- */

static char opt_interval[64];
static char opt_dir[PATH_MAX];
static long opt_keep;
static char opt_margin[64];

/* ---- decisions of this slurmstepd (inherited by the task's process at fork) ----------------- */

static int job_enabled;         /* this batch step is checkpointed */
static uint32_t job_id;
static uid_t job_uid;
static gid_t job_gid;
static char job_dir[PATH_MAX];
static long restart_count;
static int restore_it;          /* restart with a checkpoint: restore instead of the script */
static char start_note[1024];   /* why a restart starts from the top, for the job's output */
static time_t job_end;          /* the job's time limit (0: none) */
static int output_appends;      /* Slurm appends to the job's output when it runs again */
static char restored_note[512]; /* what the restore brings back, for the job's output */
static int wrapped_task;        /* in the task's process: this is the job's init-to-be */
static int not_checkpointed;    /* asked for, but refused: start_note says why */
static char step_note[512];     /* an srun step that asked: why it is not checkpointed */

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
  size_t len = arg ? strlen(arg) : 0;
  if (arg == NULL || arg[0] != '/' || strstr(arg, "/../") != NULL ||
      (len >= 3 && strcmp(arg + len - 3, "/..") == 0) ||
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

/* "auto" is a valid_interval too. */
static int cb_margin(int val, const char* arg, int remote) {
  (void)val;
  (void)remote;
  if (arg == NULL || !valid_interval(arg)) {
    slurm_error("crest: --checkpoint-margin=%s: give a duration (90s, 5m) or auto", arg ? arg : "");
    return -1;
  }
  return copy_str(opt_margin, sizeof opt_margin, arg);
}

static struct spank_option options[] = {
    {"checkpoint", "INTERVAL|auto",
     "Checkpoint the job with crest every INTERVAL (30s, 10m, 1h30m) or at the optimal interval "
     "(auto); a requeued job is restored from its newest checkpoint",
     1, 0, cb_checkpoint},
    {"checkpoint-dir", "DIR", "Directory for the job's crest checkpoints", 1, 0, cb_dir},
    {"checkpoint-keep", "N", "Number of crest checkpoints kept", 1, 0, cb_keep},
    {"checkpoint-margin", "DURATION|auto",
     "Take the last checkpoint this long before the time limit, then requeue the job (needs "
     "--requeue or JobRequeue=1); auto: 3 x the checkpoint time + 60s",
     1, 0, cb_margin},
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
    } else if (KEY("init")) {
      bad = v[0] != '/' || copy_str(cfg_init, sizeof cfg_init, v);
    } else if (KEY("wrap")) {
      if (strcmp(v, "yes") == 0) cfg_wrap = 1;
      else if (strcmp(v, "no") == 0) cfg_wrap = 0;
      else bad = 1;
    } else if (KEY("margin")) {
      bad = !valid_interval(v) || copy_str(cfg_margin, sizeof cfg_margin, v);
    } else if (KEY("signal")) {
      const char* n = strncmp(v, "SIG", 3) == 0 ? v + 3 : v;
      if (strcmp(n, "USR1") == 0) cfg_signal = SIGUSR1;
      else if (strcmp(n, "USR2") == 0) cfg_signal = SIGUSR2;
      else if (strcmp(n, "none") == 0) cfg_signal = 0;
      else bad = 1;
    } else if (KEY("restore")) {
      if (strcmp(v, "yes") == 0) cfg_restore = 1;
      else if (strcmp(v, "no") == 0) cfg_restore = 0;
      else bad = 1;
    } else {
      slurm_error("crest: unknown plugstack.conf argument '%s' (socket, storage, crest, init, "
                  "interval, keep, jobs, restore, wrap, margin, signal)", a);
      return -1;
    }
#undef KEY
    if (bad) {
      slurm_error("crest: bad plugstack.conf argument '%s'", a);
      return -1;
    }
  }
  if (cfg_init[0] == '\0') {
    /* crest-init next to crest. */
    const char* slash = strrchr(cfg_crest, '/');
    size_t dir = slash ? (size_t)(slash - cfg_crest) : 0;
    if (dir + sizeof "/crest-init" > sizeof cfg_init) return -1;
    memcpy(cfg_init, cfg_crest, dir);
    memcpy(cfg_init + dir, "/crest-init", sizeof "/crest-init");
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

/* How many times Slurm has requeued this job, and when its time limit ends it (job_end; 0 for
 * none). On 22.05 slurmstepd knows the count only late: the job's SLURM_RESTART_COUNT appears in
 * its environment after task_init_privileged (too late to restore as root), and
 * S_SLURM_RESTART_COUNT reads 0 on a requeued batch step. So ask slurmctld, as scontrol does
 * (slurm_load_job resolves inside slurmstepd); the environment first, in case a later Slurm sets
 * it in time. -1: unknown. */
static long restart_count_of(spank_t sp, uint32_t id) {
  long count = -1;
  char buf[32];
  if (spank_getenv(sp, "SLURM_RESTART_COUNT", buf, sizeof buf) == ESPANK_SUCCESS) {
    char* end = NULL;
    long v = strtol(buf, &end, 10);
    if (end != buf && v >= 0) count = v;
  }
  job_info_msg_t* info = NULL;
  if (slurm_load_job(&info, id, SHOW_ALL) != 0 || info == NULL) {
    slurm_error("crest: job %u: cannot ask slurmctld for the job's restart count and time "
                "limit: %s", id, slurm_strerror(slurm_get_errno()));
    return count;
  }
  for (uint32_t i = 0; i < info->record_count; i++) {
    slurm_job_info_t* j = &info->job_array[i];
    if (j->job_id != id) continue;
    if (count < 0) count = j->restart_cnt;
    if (j->time_limit != INFINITE && j->time_limit != NO_VAL && j->end_time > j->start_time)
      job_end = j->end_time;
  }
  slurm_free_job_info_msg(info);
  return count;
}

/* "2026-12-07T09:00:00.123Z" in ns since the epoch; 0 if it is not that. */
static int64_t parse_iso_ns(const char* text) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  const char* rest = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
  if (rest == NULL) return 0;
  int64_t ns = (int64_t)timegm(&tm) * 1000000000;
  if (*rest == '.') ns += strtol(rest + 1, NULL, 10) * 1000000;
  return ns;
}

/* When the job's previous run ended, as its node's crestd wrote it into the images directory
 * (0: not written, e.g. the node died). */
static int64_t run_end_of(const char* dir) {
  char path[PATH_MAX + 16], buf[64];
  snprintf(path, sizeof path, "%s/run-end", dir);
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return 0;
  struct stat st;
  ssize_t n = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, buf, sizeof buf - 1) : -1;
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  return strtoll(buf, NULL, 10);
}

/* From `crest restore --check-only`'s line "crest: ckpt-000007.h5 in DIR can be restored
 * (taken 2026-12-07T09:00:00.123Z)": what the job's output says once it is restored. */
static void note_restore(const char* check_out) {
  const char* name = strstr(check_out, "ckpt-");
  const char* taken = strstr(check_out, "(taken ");
  if (name == NULL || taken == NULL) return;
  long seq = strtol(name + 5, NULL, 10);
  int64_t taken_ns = parse_iso_ns(taken + 7);
  if (taken_ns == 0) return;
  time_t secs = (time_t)(taken_ns / 1000000000);
  struct tm tm;
  char when[64];
  gmtime_r(&secs, &tm);
  strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
  int64_t ended = run_end_of(job_dir);
  if (ended > taken_ns)
    snprintf(restored_note, sizeof restored_note,
             "crest: restored from checkpoint %ld taken at %s, lost %.1f s of work\n", seq, when,
             (double)(ended - taken_ns) / 1e9);
  else {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    snprintf(restored_note, sizeof restored_note,
             "crest: restored from checkpoint %ld taken at %s, lost at most %.0f s of work (the "
             "end of its last run was not recorded: its node failed?)\n",
             seq, when, (double)(now_ns - taken_ns) / 1e9);
  }
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char** av) {
  (void)ac;
  (void)av;
  if (spank_context() != S_CTX_REMOTE) return 0;
  uint32_t step = 0;
  if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS) return 0;
  if (step != BATCH_STEP) {
    /* An srun step that asks (its own --checkpoint, or the one sbatch exported to the script's
     * environment): refused by name, once per step, in task 0's output (task_init_privileged).
     * The step's tasks run under this slurmstepd, outside the batch script's tree; the srun that
     * started them keeps connections to it and to slurmctld that end with the allocation, so
     * neither the step nor a batch script running srun could be restored after a requeue. */
    uint32_t id = 0;
    if (opt_interval[0] != '\0' && spank_get_item(sp, S_JOB_ID, &id) == ESPANK_SUCCESS)
      snprintf(step_note, sizeof step_note,
               "crest: step %u.%u is not checkpointed: srun steps are not, only batch steps (a "
               "step runs under a slurmstepd of its own, and srun's connections to it cannot be "
               "restored after a requeue); a batch script is not checkpointed while it runs an "
               "srun step\n", id, step);
    return 0;
  }
  if (opt_interval[0] == '\0' && !cfg_all_jobs) return 0;
  if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_UID, &job_uid) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_GID, &job_gid) != ESPANK_SUCCESS) {
    slurm_error("crest: cannot learn the job's id, uid or gid: the job is not checkpointed");
    return 0;
  }
  if (opt_dir[0] != '\0') {
    /* crestd takes a directory root names as given (and gives it to the job's user): the
     * user's own choice must be theirs, as crestd checks when a user registers a job. */
    struct stat st;
    const char* why = NULL;
    if (lstat(opt_dir, &st) == 0) {
      if (!S_ISDIR(st.st_mode) || st.st_uid != job_uid) why = "is not a directory of yours";
    } else {
      char parent[PATH_MAX];
      copy_str(parent, sizeof parent, opt_dir);
      char* slash = strrchr(parent, '/');
      if (slash == parent) slash[1] = '\0';
      else if (slash) *slash = '\0';
      if (lstat(parent, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != job_uid)
        why = "does not exist and its parent is not a directory of yours";
    }
    if (why != NULL) {
      snprintf(start_note, sizeof start_note,
               "crest: job %u is not checkpointed: --checkpoint-dir=%s %s\n", job_id, opt_dir, why);
      slurm_info("%s", start_note);
      not_checkpointed = 1;
      return 0;
    }
    copy_str(job_dir, sizeof job_dir, opt_dir);
  } else
    snprintf(job_dir, sizeof job_dir, "%s/%u/slurm-%u", cfg_storage, (unsigned)job_uid, job_id);
  job_enabled = 1;

  /* Slurm truncates the job's output when it runs again unless the job asked for appending
   * (sbatch --open-mode=append, which sets SLURM_OPEN_MODE=a) or the cluster appends to all
   * (JobFileAppend=1): then the next run could not be restored. */
  char mode[8];
  if (spank_getenv(sp, "SLURM_OPEN_MODE", mode, sizeof mode) == ESPANK_SUCCESS) {
    output_appends = mode[0] == 'a' || mode[0] == 'A';
  } else {
    slurm_conf_t* conf = NULL;
    if (slurm_load_ctl_conf((time_t)0, &conf) == 0 && conf != NULL) {
      output_appends = conf->job_file_append != 0;
      slurm_free_ctl_conf(conf);
    }
  }

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
    note_restore(out);
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

/* Signals the task's process passes on to the job's init (slurmstepd signals the task). */
static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM,
                                SIGCONT, SIGXCPU, SIGPWR,  SIGTSTP, SIGWINCH};

static int crestd_call(const char* request, char* reply, size_t size, char* err, size_t err_size);
static void json_pick(const char* json, const char* key, char* out, size_t size);

/* The "checkpoint now" signal reached the job's task (scancel --signal=USR1 --batch, or
 * sbatch --signal=B:USR1@T): ask crestd for a checkpoint of the job, without waiting for it. */
static void checkpoint_now(int sig) {
  char req[256], reply[4096], err[512] = "", msg[1024] = "";
  snprintf(req, sizeof req, "{\"op\":\"checkpoint\",\"slurm_job\":%u,\"wait\":false}\n", job_id);
  int rc = crestd_call(req, reply, sizeof reply, err, sizeof err);
  if (rc == 0 && strstr(reply, "\"ok\":true") != NULL) {
    dprintf(2, "crest: job %u: SIG%s: checkpoint requested\n", job_id, sigabbrev_np(sig));
    return;
  }
  if (rc == 0) json_pick(reply, "message", msg, sizeof msg);
  dprintf(2, "crest: job %u: SIG%s: no checkpoint: %s\n", job_id, sigabbrev_np(sig),
          rc == 0 ? msg : err);
}

/* The task's process after it made the job's init: waits for the init, passing signals on, and
 * ends the way the job did, so that slurmstepd sees the job's own status. The "checkpoint now"
 * signal (signal=, SIGUSR1 by default) is not passed on: it asks crestd for a checkpoint of the
 * job. Never returns. */
static void supervise_init(pid_t init) {
  sigset_t set;
  sigemptyset(&set);
  for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaddset(&set, forwarded[i]);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, NULL);
  int st = 0;
  for (;;) {
    pid_t r = waitpid(init, &st, WNOHANG);
    if (r == init) break;
    if (r < 0 && errno != EINTR) _exit(1);
    siginfo_t info;
    struct timespec tick = {1, 0};
    int sig = sigtimedwait(&set, &info, &tick);
    if (sig > 0 && sig == cfg_signal) checkpoint_now(sig);
    else if (sig > 0 && sig != SIGCHLD) kill(init, sig);
  }
  /* crest-init reports a job killed by signal N as 128 + N: end by that signal again. */
  int sig = WIFSIGNALED(st) ? WTERMSIG(st)
            : WIFEXITED(st) && WEXITSTATUS(st) > 128 && WEXITSTATUS(st) <= 128 + 64
                ? WEXITSTATUS(st) - 128
                : 0;
  if (sig != 0 && sig != SIGKILL && sig != SIGSTOP) {
    signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    sigprocmask(SIG_UNBLOCK, &one, NULL);
    raise(sig);
  }
  if (sig == SIGKILL) raise(SIGKILL);
  _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 1);
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char** av) {
  (void)ac;
  (void)av;
  if (step_note[0] != '\0') {
    uint32_t task = 1;
    if (spank_get_item(sp, S_TASK_GLOBAL_ID, &task) == ESPANK_SUCCESS && task == 0)
      (void)!write(2, step_note, strlen(step_note));
    return 0;
  }
  if (not_checkpointed) (void)!write(2, start_note, strlen(start_note));
  if (!job_enabled) return 0;
  if (start_note[0] != '\0') (void)!write(2, start_note, strlen(start_note));
  if (restore_it) {
    /* This process is the task slurmstepd waits for: it becomes the restorer, which stays the
     * restored job's parent and ends the way the job ends. crest's output goes to the job's. */
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
    /* slurmstepd puts the task in a process group of its own (setpgid from the parent) after
     * this hook may already run, and a process that has executed a program can no longer be
     * moved (EACCES: slurmstepd then kills the task). So wait for it first. */
    for (int i = 0; i < 1000 && getpgid(0) != getpid(); i++) {
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
    /* With a "checkpoint now" signal, this process stays the task and supervises crest restore
     * as it does crest-init (so that the signal asks crestd for a checkpoint rather than
     * reaching the job); otherwise the task is crest restore itself. */
    pid_t restorer = cfg_signal != 0 ? fork() : 0;
    if (restorer < 0) {
      dprintf(2, "crest: job %u: cannot fork the restorer (%s)\n", job_id, strerror(errno));
      _exit(1);
    }
    if (restorer > 0) supervise_init(restorer);
    execve(cfg_crest, argv, env);
    dprintf(2, "crest: job %u: cannot execute %s: %s\n", job_id, cfg_crest, strerror(errno));
    _exit(127);
  }
  if (!cfg_wrap) return 0;
  /* The job runs under crest-init as pid 1 of a pid namespace of its own, in a session of its
   * own: a tree that can be restored anywhere, and checkpointed again after a restore. This
   * process stays the task slurmstepd knows; the child goes on as the task (it becomes the
   * user, and task_init executes crest-init with the script). */
  if (unshare(CLONE_NEWPID) != 0) {
    dprintf(2, "crest: job %u: cannot make a pid namespace (%s); the job runs without one\n",
            job_id, strerror(errno));
    return 0;
  }
  pid_t init = fork();
  if (init < 0) {
    dprintf(2, "crest: job %u: cannot fork the job's init (%s)\n", job_id, strerror(errno));
    _exit(1);
  }
  if (init == 0) {
    setsid();
    wrapped_task = 1;
    return 0;
  }
  supervise_init(init);
  return 0;
}

/* In the job's init-to-be, as the user, with the task's final environment: executes crest-init
 * with the task's command instead of the command itself. */
int slurm_spank_task_init(spank_t sp, int ac, char** av) {
  (void)ac;
  (void)av;
  if (!wrapped_task) return 0;
  int argc = 0;
  char** argv = NULL;
  char** env = NULL;
  if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1 ||
      spank_get_item(sp, S_JOB_ENV, &env) != ESPANK_SUCCESS) {
    dprintf(2, "crest: job %u: cannot read the task's command and environment\n", job_id);
    _exit(127);
  }
  char** args = calloc((size_t)argc + 3, sizeof *args);
  if (args == NULL) _exit(127);
  args[0] = cfg_init;
  args[1] = "--";
  for (int i = 0; i < argc; i++) args[i + 2] = argv[i];
  execve(cfg_init, args, env);
  dprintf(2, "crest: job %u: cannot execute %s: %s\n", job_id, cfg_init, strerror(errno));
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
  /* "%h" in socket= is this node's short host name: one crestd per node on a path all nodes
   * see (the tests' nodes are network and UTS namespaces of one machine). */
  const char* h = strstr(cfg_socket, "%h");
  if (h != NULL) {
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    char* dot = strchr(host, '.');
    if (dot) *dot = '\0';
    snprintf(addr.sun_path, sizeof addr.sun_path, "%.*s%s%s", (int)(h - cfg_socket), cfg_socket,
             host, h + 2);
  } else {
    memcpy(addr.sun_path, cfg_socket, sizeof cfg_socket);
  }
  struct timeval tv = {.tv_sec = 60};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(s, (struct sockaddr*)&addr, sizeof addr) != 0) {
    err[0] = '\0';
    appendf(err, err_size, "no crestd listening on %s (%s)", addr.sun_path, strerror(errno));
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

/* The first child of pid, 0 if none. */
static pid_t first_child(pid_t pid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  return (pid_t)strtol(buf, NULL, 10);
}

/* The executable of pid ("" if unknown). */
static void exe_of(pid_t pid, char* out, size_t size) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
  ssize_t n = readlink(path, out, size - 1);
  out[n > 0 ? n : 0] = '\0';
}

/* A line "Key:\tvalue" of /proc/PID/status, its value in out. */
static int status_line(pid_t pid, const char* key, char* out, size_t size) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  size_t klen = strlen(key);
  for (char* line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
      char* v = line + klen + 1;
      while (*v == '\t' || *v == ' ') v++;
      size_t i = 0;
      while (v[i] && v[i] != '\n' && i + 1 < size) {
        out[i] = v[i];
        i++;
      }
      out[i] = '\0';
      return 0;
    }
  }
  return -1;
}

/* pid is the init of a pid namespace of its own (NSpid: "<ours> ... 1"). */
static int is_ns_init(pid_t pid) {
  char v[128];
  if (status_line(pid, "NSpid", v, sizeof v) != 0) return 0;
  const char* last = strrchr(v, '\t');
  return last != NULL && strcmp(last + 1, "1") == 0;
}

static int untraced(pid_t pid) {
  char v[32];
  return status_line(pid, "TracerPid", v, sizeof v) == 0 && strcmp(v, "0") == 0;
}

/* The restored job's root under a running `crest restore` (its child, the init of a pid
 * namespace), once crest has let the restored tree go: untraced, with a child, seen so three
 * times in a row. 0 until then. */
static pid_t restored_root(pid_t crest_pid, int* settled) {
  pid_t c = first_child(crest_pid);
  if (c > 0 && is_ns_init(c) && untraced(c)) {
    pid_t g = first_child(c);
    if (g > 0 && untraced(g) && ++*settled >= 3) return c;
  }
  return 0;
}

static void* register_task(void* arg) {
  struct reg* r = arg;
  /* Which process is the job's root, once it is ready for crestd:
   *   - a task that executes crest restore (a restart): its child that is the init of a pid
   *     namespace (the restored crest-init), once crest has let the restored tree go;
   *   - a wrapped task: its child, crest-init, once crest-init has started the script;
   *   - otherwise the task itself, once it has executed the script (it is a fork of slurmstepd
   *     until then), so that crestd checks and watches the job, not slurmstepd's copy. */
  char self[PATH_MAX] = "", crest[PATH_MAX] = "", init[PATH_MAX] = "", exe[PATH_MAX];
  exe_of(getpid(), self, sizeof self);
  if (realpath(cfg_crest, crest) == NULL) crest[0] = '\0';
  if (realpath(cfg_init, init) == NULL) init[0] = '\0';
  double deadline = mono_now() + 60;
  pid_t target = 0;
  int settled = 0;
  while (mono_now() < deadline) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d", (int)r->pid);
    if (access(path, F_OK) != 0) break; /* gone already */
    exe_of(r->pid, exe, sizeof exe);
    if (exe[0] != '\0' && crest[0] != '\0' && strcmp(exe, crest) == 0) {
      if ((target = restored_root(r->pid, &settled)) > 0) break;
    } else if (exe[0] != '\0' && strcmp(exe, self) == 0) {
      /* still slurmstepd's fork: not executed yet, or the wrapped task waiting for its init,
       * or for crest restore (a restart with a "checkpoint now" signal) */
      pid_t c = first_child(r->pid);
      char cexe[PATH_MAX];
      if (c > 0) {
        exe_of(c, cexe, sizeof cexe);
        if (crest[0] != '\0' && strcmp(cexe, crest) == 0) {
          if ((target = restored_root(c, &settled)) > 0) break;
          struct timespec ts = {0, 20 * 1000 * 1000};
          nanosleep(&ts, NULL);
          continue;
        }
        pid_t g = init[0] != '\0' && strcmp(cexe, init) == 0 ? first_child(c) : 0;
        char gexe[PATH_MAX];
        if (g > 0) {
          exe_of(g, gexe, sizeof gexe);
          if (gexe[0] != '\0' && strcmp(gexe, init) != 0) {
            target = c;
            break;
          }
        }
      }
    } else if (exe[0] != '\0') {
      target = r->pid;
      break;
    }
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (target == 0) {
    slurm_error("crest: job %u: its task %d never started the job; not checkpointed", r->job,
                (int)r->pid);
    free(r);
    return NULL;
  }
  r->pid = target;
  /* After crest restore truncated the job's output back to the checkpoint's size. */
  if (restored_note[0] != '\0') tell_job(r->pid, "%s", restored_note);
  char req[8192] = "";
  appendf(req, sizeof req, "{\"op\":\"register\",\"pid\":%d,\"uid\":%u,\"gid\":%u,\"slurm_job\":%u,",
          (int)r->pid, (unsigned)r->uid, (unsigned)r->gid, r->job);
  appendf(req, sizeof req, "\"name\":\"slurm-%u\",\"dir\":", r->job);
  append_json_str(req, sizeof req, r->dir);
  appendf(req, sizeof req, ",\"every\":");
  append_json_str(req, sizeof req, r->every);
  if (r->keep > 0) appendf(req, sizeof req, ",\"keep\":%ld", r->keep);
  /* The time limit: crestd takes a last checkpoint before it and requeues the job, unless the
   * next run could not be restored (its output truncated by Slurm). end_time 0 (no limit now):
   * crestd still follows it, as any end, in case `scontrol update TimeLimit=` sets one. */
  if (job_end > 0 && !output_appends) {
    tell_job(r->pid, "crest: job %u: not requeued at its time limit: Slurm would truncate its "
             "output when it runs again, and the restore needs it whole (sbatch "
             "--open-mode=append)\n", r->job);
  } else if (output_appends) {
    appendf(req, sizeof req, ",\"end_time\":%lld", (long long)job_end);
  }
  const char* margin = opt_margin[0] ? opt_margin : cfg_margin;
  if (margin[0] != '\0') {
    appendf(req, sizeof req, ",\"time_limit_margin\":");
    append_json_str(req, sizeof req, margin);
  }
  /* Slurm restarts the job (requeue), not crestd. */
  appendf(req, sizeof req, ",\"auto_restore\":0}\n");

  char reply[16384], err[512] = "";
  /* A tree caught at a passing moment (a shell between vfork and exec) is refused by crestd's
   * check; such a refusal is tried again for a while, anything else is final. */
  int rc = -1;
  for (int attempt = 0; attempt < 25; attempt++) {
    err[0] = '\0';
    rc = crestd_call(req, reply, sizeof reply, err, sizeof err);
    if (rc != 0 || strstr(reply, "\"ok\":true") != NULL || strstr(reply, "vfork") == NULL) break;
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (rc != 0) {
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
  if (!job_enabled) return 0;
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

