#!/usr/bin/env python3
"""kill -9 anywhere (issue 13): crest killed at random moments must never harm the job or a
committed checkpoint.

  python3 bench/kill9.py --build BUILD [--trials 100] [--quick] [--programs LIST] [--dir DIR]
                         [--seed N] [--mib M] [--json FILE] [-v]

Programs (--programs, comma-separated; all by default):
  dump-R     `crest dump -R` of a job alone in a cgroup of its own (so the dump freezes the cgroup
             first), alternately --stop-copy and --cow
  dump       `crest dump` (kill mode) of the same job: after the kill the job runs on, or it was
             killed after its checkpoint was committed, which then restores (the harness restores
             it and goes on with the restored job)
  restore    `crest restore -d` of a kill-mode checkpoint: after the kill the tree was released
             (it runs, untraced) or nothing of it is left
  compact    `crest compact` of a chain made longer by two `crest dump -R --parent` per trial
  crestd     crestd, killed during a periodic checkpoint of a job it supervises (crest run
             --every 1s through crestd), then started again: it must re-adopt the job, which
             must be running, and checkpoint it again
  run        `crest run --no-daemon`, whose own supervisor is killed during a periodic
             checkpoint: the job must run on, unfrozen and untraced

Each kill lands in a phase. The harness first runs the operation once whole, with crest's
--log-level debug, timing when each phase starts (crest's progress lines and debug log lines,
stamped as they arrive); trial i then aims at phase i mod P, at a uniformly random moment within
it (every eighth trial at a uniformly random moment of the whole operation instead, so that
short windows between the markers are hit too). The phase a trial is counted in is the one the
killed process had last announced. For crestd and crest run the clock starts at the debug line
that opens a checkpoint.

After every kill the harness checks:
  job       every process of the job is there, none a zombie, stopped or traced (TracerPid 0),
            its cgroup not frozen, and every thread of the job's processes runs (its run time in
            schedstat advances). For a restore: all of the tree runs, or none of its pids is
            left. Otherwise the job is counted as harmed.
  images    every checkpoint committed before is still there (a compaction or crestd's retention
            may remove what nothing depends on), every committed file verifies (`crest verify`,
            with its chain), and the newest verifies; every 25 trials and at the end, the newest
            is restored for real and the restored job checked the same way.
  leftovers what a killed crest leaves for the next one to clean (a .tmp in the images
            directory, the snapshot copies of a copy-on-write dump as zombies in the job, crest
            run's control socket directory and the job's cgroup) is counted in "left for next
            op"; it must be gone once the next operation of the same kind has completed, else it
            is a leftover. So is anything nobody will clean.
  in job    a change in the job's mappings or descriptors: what crest injected, left behind
            (reported, not a failure: the job runs on with it, and checkpoints save it).
  crestd    restarted on the same state file: it re-adopts the job (same pid, running) and its
            next checkpoint commits.

The table: program x phase -> trials, job harmed, checkpoint damaged, left for next op,
leftovers, left in job.
Exit status 0 only if no trial harmed a job, damaged a checkpoint or left a leftover.
Needs root (ptrace of any process, cgroups); the machine may be shared (all timing is relative
to measured durations).
"""
import argparse
import collections
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
JOB_COMM = "crest-kill9-job"


# ---- /proc -------------------------------------------------------------------------------------

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def status(pid, key):
    text = read("/proc/%d/status" % pid)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return None


def exists(pid):
    return os.path.exists("/proc/%d" % pid)


def comm(pid):
    c = read("/proc/%d/comm" % pid)
    return c.strip() if c else "?"


def children(pid):
    out = []
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for t in tids:
        c = read("/proc/%d/task/%s/children" % (pid, t))
        if c:
            out += [int(x) for x in c.split()]
    return out


def tree_of(root):
    if not exists(root):
        return []
    seen, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += children(p)
    return sorted(seen)


def threads(pid):
    try:
        return sorted(int(t) for t in os.listdir("/proc/%d/task" % pid))
    except OSError:
        return []


def runtime_ns(pid, tid):
    s = read("/proc/%d/task/%d/schedstat" % (pid, tid))
    return int(s.split()[0]) if s else None


def fds_of(pid):
    out = []
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    for n in sorted(names, key=int):
        try:
            out.append((int(n), os.readlink("/proc/%d/fd/%s" % (pid, n))))
        except OSError:
            pass
    return out


def maps_of(pid):
    return read("/proc/%d/maps" % pid)


def reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def reap_orphans(keep=()):
    """Zombies handed to us as subreaper (a killed crest's children), except our own commands."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in keep:
            continue
        st = read("/proc/%d/stat" % pid)
        if not st:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            reap(pid)


def wait_gone(pids, timeout):
    end = time.monotonic() + timeout
    while True:
        for p in pids:
            reap(p)
        left = [p for p in pids if exists(p)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.01)


# ---- commands with their stderr stamped as it arrives -------------------------------------------

class Stamped:
    """A process whose stderr lines are collected with their arrival time (and kept in a file)."""

    def __init__(self, argv, log_path, env=None, stdout=subprocess.DEVNULL, cwd=None):
        self.t0 = time.monotonic()
        self.lines = []  # (seconds since start, line)
        self.cond = threading.Condition()
        self.log_path = log_path
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.pid = self.proc.pid
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.log_path, "w") as log:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                t = time.monotonic() - self.t0
                log.write("%8.3f %s\n" % (t, line))
                log.flush()
                with self.cond:
                    self.lines.append((t, line))
                    self.cond.notify_all()
        with self.cond:
            self.lines.append((time.monotonic() - self.t0, None))  # EOF
            self.cond.notify_all()

    def wait_line(self, pattern, timeout, start=0):
        """Index of the first line at or after `start` matching, or None (EOF or timeout)."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    line = self.lines[i][1]
                    if line is None:
                        return None
                    if rx.search(line):
                        return i
                    i += 1
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.finish()

    def finish(self, timeout=None):
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        return rc

    def text(self):
        with self.cond:
            return "\n".join(l for _, l in self.lines if l is not None)


# ---- phases -------------------------------------------------------------------------------------

# (regex on a line, phase it starts); the last matching line before the kill names the phase.
PHASES = {
    "dump": [
        (r"crest: freezing the tree", "freezing"),
        (r"\[core\.freeze\] froze|crest: collecting state", "collecting"),
        (r"crest: saving .*copy-on-write", "snapshot, reading (cow)"),
        (r"crest: saving", "reading pages (frozen)"),
        (r"the tree runs on; writing", "writing (thawed)"),
        (r"crest: committing", "writing tables"),
        (r"writing the tables, fsync and rename", "fsync, rename"),
        (r"in place; moving latest", "moving latest"),
        (r"\[storage\.pipeline\] committed", "committed"),
        (r"killing the tree", "killing the tree"),
        (r"crest: checkpoint ckpt", "done"),
    ],
    "restore": [
        (r"crest: verifying", "verifying"),
        (r"crest: recreating files", "files, pipes, memory objects"),
        (r"crest: creating the tree", "creating the tree"),
        (r"writing its memory", "writing memory"),
        (r"descriptors and state", "creating the tree"),
        (r"crest: locks, timers", "locks, timers, credentials"),
        (r"crest: releasing the tree", "releasing"),
        (r"crest: restored ckpt", "done"),
    ],
    "compact": [
        (r"rewriting a chain", "reading, writing"),
        (r"writing the tables, fsync and rename", "fsync, rename"),
        (r"in place; moving latest", "moving latest"),
        (r"committed; removing ancestors", "removing ancestors"),
        (r"compacted a chain", "done"),
    ],
    # crestd and crest run: the supervisor's log (the engine's stages via agent.job debug lines)
    "supervisor": [
        (r"checkpoint starting", "starting (pre-copy, smaps)"),
        (r": freezing the tree", "freezing"),
        (r"\[core\.freeze\] froze|: collecting state", "collecting"),
        (r": saving .*copy-on-write", "snapshot, reading (cow)"),
        (r": saving", "reading pages (frozen)"),
        (r"the tree runs on; writing", "writing (thawed)"),
        (r": committing", "writing tables"),
        (r"writing the tables, fsync and rename", "fsync, rename"),
        (r"in place; moving latest", "moving latest"),
        (r"\[storage\.pipeline\] committed", "committed"),
        (r"ms in all", "retention, compaction"),
        (r"retention \(keep", "retention"),
        (r"compacting ckpt", "compacting"),
        (r"checkpoint over", "after the checkpoint"),
    ],
}


def phase_of(kind, lines, start=0, initial="start"):
    phase = initial
    rules = [(re.compile(rx), name) for rx, name in PHASES[kind]]
    for _, line in lines[start:]:
        if line is None:
            continue
        for rx, name in rules:
            if rx.search(line):
                phase = name
                break
    return phase


def timeline(kind, lines, start=0, t0=0.0, initial="start"):
    """[(phase, begins at)] relative to t0, from a whole run's stamped lines."""
    out = [(initial, 0.0)]
    rules = [(re.compile(rx), name) for rx, name in PHASES[kind]]
    for t, line in lines[start:]:
        if line is None:
            continue
        for rx, name in rules:
            if rx.search(line):
                if name != out[-1][0]:
                    out.append((name, max(0.0, t - t0)))
                break
    return out


class Aim:
    """Delays spread over the phases of a measured run."""

    def __init__(self, tl, length, rng):
        self.rng = rng
        self.length = max(length, 0.01)
        self.windows = []
        for i, (name, begin) in enumerate(tl):
            end = tl[i + 1][1] if i + 1 < len(tl) else self.length
            if name != "done" and end > begin:
                self.windows.append((name, begin, end))
        if not self.windows:
            self.windows = [("start", 0.0, self.length)]

    def delay(self, i):
        if i % 8 == 7:
            return self.rng.uniform(0, 1.1 * self.length)
        _, begin, end = self.windows[i % len(self.windows)]
        return self.rng.uniform(begin, end)


# ---- the job -------------------------------------------------------------------------------------

class Job:
    """A tree to keep an eye on: its processes, their mappings and descriptors."""

    def __init__(self, root, cgroup=None):
        self.root = root
        self.cgroup = cgroup
        self.baseline()

    def baseline(self):
        self.pids = tree_of(self.root)
        self.maps = {p: maps_of(p) for p in self.pids}
        self.fds = {p: fds_of(p) for p in self.pids}

    def workers(self):
        return [p for p in self.pids if comm(p) == JOB_COMM]

    def problems(self, progress_timeout=5.0):
        bad = []
        for p in self.pids:
            if not exists(p):
                bad.append("process %d is gone" % p)
                continue
            state = status(p, "State") or "?"
            if state.startswith("Z") or state.startswith("X"):
                bad.append("process %d is a zombie" % p)
            elif state[0] in "Tt":
                bad.append("process %d is %s" % (p, state))
            tracer = status(p, "TracerPid")
            if tracer not in (None, "0"):
                bad.append("process %d is traced by %s (%s)" % (p, tracer, comm(int(tracer))))
        if bad:
            return bad
        if self.cgroup:
            if (read(self.cgroup + "/cgroup.freeze") or "0").strip() != "0":
                bad.append("its cgroup %s is left frozen" % self.cgroup)
        # Every thread of the job's own processes runs.
        start = {}
        for p in self.workers():
            for t in threads(p):
                start[(p, t)] = runtime_ns(p, t)
        end = time.monotonic() + progress_timeout
        stuck = set(start)
        while stuck and time.monotonic() < end:
            time.sleep(0.02)
            for key in list(stuck):
                r = runtime_ns(*key)
                if r is not None and start[key] is not None and r > start[key]:
                    stuck.discard(key)
        for p, t in sorted(stuck):
            bad.append("thread %d of process %d makes no progress (%s, wchan %s)" %
                       (t, p, status(t, "State"), (read("/proc/%d/wchan" % t) or "?").strip()))
        return bad

    def strays(self):
        """Processes in the job's tree that are not the job's (snapshot copies left behind)."""
        extra = sorted(set(tree_of(self.root)) - set(self.pids))
        return ["%d (%s, %s)" % (p, comm(p), status(p, "State")) for p in extra]

    def leftovers(self):
        """What a killed crest left in the job: mappings, descriptors."""
        bad = []
        for p in self.pids:
            if not exists(p):
                continue
            now_maps = maps_of(p)
            if now_maps != self.maps[p]:
                old = set((self.maps[p] or "").splitlines())
                new = set((now_maps or "").splitlines())
                bad.append("the mappings of process %d changed: gone [%s], new [%s]" %
                           (p, "; ".join(sorted(old - new)), "; ".join(sorted(new - old))))
            if fds_of(p) != self.fds[p]:
                bad.append("the descriptors of process %d changed: %s -> %s" %
                           (p, self.fds[p], fds_of(p)))
        return bad

    def thaw(self):
        if self.cgroup and os.path.isdir(self.cgroup):
            try:
                with open(self.cgroup + "/cgroup.freeze", "w") as f:
                    f.write("0")
            except OSError:
                pass

    def kill(self):
        self.thaw()
        pids = tree_of(self.root) or self.pids
        for p in [self.root] + pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return wait_gone(sorted(set(pids + self.pids)), 10)


# ---- the harness ---------------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.rows = collections.OrderedDict()
        self.details = []

    def add(self, program, phase, harmed=None, damaged=None, pending=False, leftover=None,
            in_job=None):
        row = self.rows.setdefault((program, phase), [0] * 6)
        row[0] += 1
        row[1] += bool(harmed)
        row[2] += bool(damaged)
        row[3] += bool(pending)
        row[4] += bool(leftover)
        row[5] += bool(in_job)
        for what, text in (("job harmed", harmed), ("checkpoint damaged", damaged),
                           ("leftover", leftover), ("left in the job", in_job)):
            if text:
                self.details.append("%s / %s: %s: %s" % (program, phase, what, text))

    def bad(self):
        return any(r[1] or r[2] or r[4] for r in self.rows.values())

    def table(self):
        head = ("program", "phase", "trials", "job harmed", "ckpt damaged", "left for next op",
                "leftovers", "left in job")
        rows = [(p, ph) + tuple(v) for (p, ph), v in self.rows.items()]
        totals = collections.OrderedDict()
        for (p, _), v in self.rows.items():
            t = totals.setdefault(p, [0] * 6)
            for i in range(6):
                t[i] += v[i]
        rows += [(p, "(all)") + tuple(v) for p, v in totals.items()]
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        fmt = " | ".join("%%-%ds" % w if i < 2 else "%%%ds" % w for i, w in enumerate(widths))
        out = [fmt % head, "-+-".join("-" * w for w in widths)]
        out += [fmt % r for r in rows]
        return "\n".join(out)


class Harness:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build)
        self.crest_bin = os.path.join(self.build, "bin", "crest")
        self.crestd_bin = os.path.join(self.build, "bin", "crestd")
        self.job_bin = os.path.join(self.build, "bin", "crest-kill9-job")
        for b in (self.crest_bin, self.crestd_bin, self.job_bin):
            if not os.access(b, os.X_OK):
                sys.exit("kill9: %s is missing (build crest, crestd, crest-init and "
                         "crest-kill9-job)" % b)
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.root_dir = args.dir or tempfile.mkdtemp(prefix="crest-kill9-")
        os.makedirs(self.root_dir, exist_ok=True)
        self.verified = {}  # path -> identity of a file that verified
        self.cg_base = self.make_cgroup_base()
        self.log_n = 0

    # -- helpers --
    def say(self, text):
        if self.args.verbose:
            print("kill9: " + text, flush=True)

    def path(self, *parts):
        return os.path.join(self.root_dir, *parts)

    def log_path(self, what):
        self.log_n += 1
        d = self.path("logs")
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, "%05d-%s.log" % (self.log_n, what))

    def crest(self, *argv, timeout=120):
        r = subprocess.run([self.crest_bin] + list(argv), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        return r

    def spawn_crest(self, what, argv, env=None, stdout=subprocess.DEVNULL):
        return Stamped([self.crest_bin, "--log-level", "debug"] + argv, self.log_path(what),
                       env=env, stdout=stdout)

    def make_cgroup_base(self):
        mounts = read("/proc/self/mounts") or ""
        for line in mounts.splitlines():
            f = line.split()
            if len(f) > 2 and f[2] == "cgroup2":
                base = os.path.join(f[1], "crest-kill9-%d" % os.getpid())
                try:
                    os.mkdir(base)
                    return base
                except OSError as e:
                    print("kill9: no cgroup of our own (%s): jobs run without one" % e)
                    return None
        print("kill9: no cgroup v2 hierarchy: jobs run without a cgroup of their own")
        return None

    def new_cgroup(self, name):
        if not self.cg_base:
            return None
        d = os.path.join(self.cg_base, name)
        os.makedirs(d, exist_ok=True)
        return d

    def remove_cgroups(self):
        if not self.cg_base:
            return
        for d, _, _ in sorted(os.walk(self.cg_base), key=lambda x: -len(x[0])):
            try:
                os.rmdir(d)
            except OSError:
                pass

    def start_job(self, cgroup, out):
        """The job, alone in `cgroup` if given, in a session of its own; waits until ready."""
        cmd = [self.job_bin, str(self.args.mib), "1"]
        if cgroup:
            cmd = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup] + cmd
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(out, "w"),
                             stderr=open(out + ".err", "w"), start_new_session=True)
        self.wait_ready(out, p.pid)
        return Job(p.pid, cgroup)

    def wait_ready(self, out, pid, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "ready" in (read(out) or ""):
                return
            time.sleep(0.01)
        raise RuntimeError("the job (pid %d) did not get ready: %s" % (pid, read(out + ".err")))

    @staticmethod
    def committed(d):
        try:
            return sorted(f for f in os.listdir(d) if re.fullmatch(r"ckpt-\d+\.h5", f))
        except OSError:
            return []

    @staticmethod
    def tmps(d):
        try:
            return sorted(f for f in os.listdir(d) if f.endswith(".tmp"))
        except OSError:
            return []

    def identity(self, path):
        try:
            st = os.stat(path)
            return (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return None

    def check_images(self, d, before, may_remove=False):
        """Problems with the committed checkpoints of `d` (None if none)."""
        bad = []
        now = self.committed(d)
        gone = [f for f in before if f not in now]
        if gone and not may_remove:
            bad.append("committed checkpoints disappeared: " + ", ".join(gone))
        if gone:
            self.verified.clear()  # a chain may have lost a link: verify everything again
        for f in now:
            p = os.path.join(d, f)
            ident = self.identity(p)
            if ident is not None and self.verified.get(p) == ident:
                continue
            r = self.crest("verify", p)
            if r.returncode != 0:
                bad.append("%s does not verify: %s" % (f, (r.stderr or r.stdout).strip()[:400]))
            else:
                self.verified[p] = ident
        if now or before:
            r = self.crest("verify", d)
            if r.returncode != 0:
                bad.append("the newest of %s does not verify: %s" % (d, r.stderr.strip()[:400]))
            if before and not now:
                bad.append("no committed checkpoint is left")
        return "; ".join(bad) if bad else None

    def restore_newest(self, d, cgroup, old=None, extra=()):
        """Restores the newest checkpoint of `d` detached, checks it runs; returns the Job.
        `old`: the job it was taken of, whose processes must be gone (reaped) first."""
        if old is not None:
            left = wait_gone(old.pids, 10)
            if left:
                raise RuntimeError("the job's processes %s are still there" % left)
        r = self.crest("restore", "-D", d, "-d", *extra, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("the newest checkpoint of %s does not restore: %s" % (d, r.stderr.strip()))
        m = re.search(r"root pid (\d+)", r.stderr)
        root = int(m.group(1))
        if cgroup:
            for p in tree_of(root):
                try:
                    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                        f.write(str(p))
                except OSError:
                    pass
        job = Job(root, cgroup)
        bad = job.problems()
        if bad:
            raise RuntimeError("the restored job does not run: " + "; ".join(bad))
        return job

    def measure(self, kind, what, argv, env=None, initial="start"):
        s = self.spawn_crest(what, argv, env=env)
        rc = s.finish(600)
        length = time.monotonic() - s.t0
        if rc != 0:
            raise RuntimeError("crest %s failed (%d):\n%s" % (" ".join(argv), rc, s.text()))
        tl = timeline(kind, s.lines, initial=initial)
        self.say("%s: %.3f s: %s" % (what, length, ", ".join("%s@%.3f" % x for x in tl)))
        return Aim(tl, length, self.rng)

    # -- programs --
    def prune(self, d, keep):
        """Full checkpoints only: the oldest go (nothing depends on them)."""
        files = self.committed(d)
        for f in files[:-keep] if len(files) > keep else []:
            os.unlink(os.path.join(d, f))
            self.verified.pop(os.path.join(d, f), None)

    def run_dump(self, leave_running):
        program = "dump -R" if leave_running else "dump"
        what = "dump-R" if leave_running else "dump"
        cg = self.new_cgroup(what)
        d = self.path(what, "img")
        shutil.rmtree(os.path.dirname(d), ignore_errors=True)
        os.makedirs(os.path.dirname(d))
        job = self.start_job(cg, self.path(what, "job.out"))
        modes = ["--stop-copy", "--cow"] if leave_running else [None]
        aims = {}

        def argv(mode):
            a = ["dump", "-t", str(job.root), "-D", d]
            if leave_running:
                a.append("-R")
            if mode:
                a.append(mode)
            return a

        def measure_all():
            for mode in modes:
                if leave_running:
                    aims[mode] = self.measure("dump", what, argv(mode))
                else:
                    # A kill-mode dump kills the job: measure it, then restore.
                    aims[mode] = self.measure("dump", what, argv(mode))
                    wait_gone(job.pids, 10)
            return None

        measure_all()
        if not leave_running:
            job = self.restore_newest(d, cg, job)
        for i in range(self.args.trials):
            if i and i % 25 == 0:
                # The newest restores for real; a fresh measure (the machine's load changes).
                if leave_running:
                    left = job.kill()
                    if left:
                        self.tally.add(program, "(restore check)", harmed="the job did not die: %s" % left)
                        return
                    job = self.restore_newest(d, cg, job)
                    aims.clear()
                    measure_all()
                else:
                    aims.clear()
                    measure_all()
                    job = self.restore_newest(d, cg, job)
                self.prune(d, 3)
            mode = modes[i % len(modes)]
            before = self.committed(d)
            s = self.spawn_crest(what, argv(mode))
            delay = aims[mode].delay(i // len(modes))
            time.sleep(delay)
            s.kill()
            phase = phase_of("dump", s.lines)
            if mode:
                phase += " " + mode
            time.sleep(0.05)
            reap_orphans()
            harmed = damaged = leftover = None
            tmp = bool(self.tmps(d))
            job_gone = not exists(job.root) or (status(job.root, "State") or "Z").startswith("Z")
            left_in_job = []
            strays = []
            if leave_running or not job_gone:
                bad = job.problems()
                harmed = "; ".join(bad) if bad else None
                left_in_job = job.leftovers()
                strays = job.strays()
                live = [x for x in strays if "zombie" not in x]
                if live:
                    # A snapshot copy that escaped: a second copy of a job process, running.
                    harmed = "; ".join(([harmed] if harmed else []) +
                                       ["processes not of the job run in its tree: " + ", ".join(live)])
            else:
                # Killed by the dump: only after a committed checkpoint, which must restore.
                left = wait_gone(job.pids, 5)
                if left:
                    harmed = "the dump killed part of the job: %s left" % left
                elif len(self.committed(d)) <= len(before):
                    harmed = "the job was killed without a committed checkpoint"
            damaged = self.check_images(d, before)
            if not leave_running and job_gone and not harmed and not damaged:
                try:
                    job = self.restore_newest(d, cg, job)
                except RuntimeError as e:
                    damaged = str(e)
            if harmed or damaged:
                self.say("trial %d (%s, %.3f s): %s %s\n%s" % (i, phase, delay, harmed, damaged,
                                                                 s.text()[-3000:]))
            # A .tmp or a snapshot copy the kill left: the next whole dump must take it away.
            if (tmp or strays) and not harmed:
                left_before = self.tmps(d)
                r = self.crest(*argv(mode))
                if leave_running and job.strays():
                    leftover = "snapshot copies left after the next dump: " + ", ".join(job.strays())
                if r.returncode == 0 and not leave_running:
                    try:
                        job = self.restore_newest(d, cg, job)
                    except RuntimeError as e:
                        damaged = damaged or str(e)
                still = [t for t in left_before if t in self.tmps(d)]
                if r.returncode != 0:
                    leftover = "the next dump failed: " + r.stderr.strip()[:300]
                elif still:
                    leftover = "left by the next dump: " + ", ".join(still)
            if left_in_job:
                self.say("trial %d (%s, %.3f s): %s\n%s" % (i, phase, delay, left_in_job, s.text()[-3000:]))
            self.tally.add(program, phase, harmed, damaged, tmp or bool(strays), leftover,
                           "; ".join(left_in_job))
            if harmed:
                job.kill()
                job = self.start_job(cg, self.path(what, "job.out"))
            else:
                job.baseline()
            if leave_running and len(self.committed(d)) > 3:
                self.prune(d, 3)
        # The newest restores.
        job.kill()
        try:
            job = self.restore_newest(d, cg, job)
            job.kill()
        except RuntimeError as e:
            self.tally.add(program, "(final restore)", damaged=str(e))

    def run_restore(self):
        program = "restore -d"
        cg = None
        d = self.path("restore", "img")
        shutil.rmtree(os.path.dirname(d), ignore_errors=True)
        os.makedirs(os.path.dirname(d))
        job = self.start_job(cg, self.path("restore", "job.out"))
        r = self.crest("dump", "-t", str(job.root), "-D", d)
        if r.returncode != 0:
            raise RuntimeError("dump for the restore trials failed: " + r.stderr)
        wait_gone(job.pids, 10)
        pids = list(job.pids)
        root = job.root
        aim = self.measure("restore", "restore", ["restore", "-D", d, "-d"])
        Job(root).kill()
        wait_gone(pids, 10)
        before = self.committed(d)
        for i in range(self.args.trials):
            if i and i % 25 == 0:
                aim = self.measure("restore", "restore", ["restore", "-D", d, "-d"])
                Job(root).kill()
                if wait_gone(pids, 10):
                    raise RuntimeError("the restored job does not die")
            s = self.spawn_crest("restore", ["restore", "-D", d, "-d"])
            delay = aim.delay(i)
            time.sleep(delay)
            rc = s.kill()
            phase = phase_of("restore", s.lines)
            harmed = damaged = leftover = None
            time.sleep(0.05)
            reap_orphans()
            alive = [p for p in pids if exists(p) and not (status(p, "State") or "Z").startswith("Z")]
            released = rc == 0 or (len(alive) == len(pids) and
                                   all(status(p, "TracerPid") == "0" for p in alive))
            if released and len(alive) == len(pids):
                j = Job(root)
                bad = j.problems()
                if set(j.pids) != set(pids):
                    bad.append("the restored tree is %s, not %s" % (j.pids, pids))
                harmed = "; ".join(bad) if bad else None
                if harmed:
                    self.say("trial %d (%s, %.3f s): %s\n%s" % (i, phase, delay, harmed, s.text()[-3000:]))
                phase = phase + " (released)"
                left = j.kill()
                if left:
                    harmed = (harmed or "") + " the released tree does not die: %s" % left
            else:
                left = wait_gone(pids, 5)
                reap_orphans()
                if left:
                    leftover = "half-made tree left: " + ", ".join(
                        "%d (%s, %s, tracer %s)" % (p, comm(p), status(p, "State"), status(p, "TracerPid"))
                        for p in left)
                    self.say("trial %d (%s, %.3f s): %s\n%s" % (i, phase, delay, leftover, s.text()[-3000:]))
                    Job(root).kill()
                    for p in left:
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    wait_gone(left, 5)
            damaged = self.check_images(d, before)
            tmp = bool(self.tmps(d))
            if tmp:
                leftover = (leftover or "") + " restore left " + ", ".join(self.tmps(d))
            self.tally.add(program, phase, harmed, damaged, tmp, leftover)
        try:
            j = self.restore_newest(d, None)
            j.kill()
        except RuntimeError as e:
            self.tally.add(program, "(final restore)", damaged=str(e))

    def run_compact(self):
        program = "compact"
        d = self.path("compact", "img")
        shutil.rmtree(os.path.dirname(d), ignore_errors=True)
        os.makedirs(os.path.dirname(d))
        job = self.start_job(None, self.path("compact", "job.out"))

        def incremental():
            r = self.crest("dump", "-R", "--parent", "-t", str(job.root), "-D", d)
            if r.returncode != 0:
                raise RuntimeError("incremental dump failed: " + r.stderr)

        for _ in range(4):
            incremental()
        aim = self.measure("compact", "compact", ["compact", d])
        for i in range(self.args.trials):
            incremental()
            incremental()
            if i and i % 25 == 0:
                for _ in range(2):
                    incremental()
                aim = self.measure("compact", "compact", ["compact", d])
                incremental()
                incremental()
            before = self.committed(d)
            s = self.spawn_crest("compact", ["compact", d])
            delay = aim.delay(i)
            time.sleep(delay)
            s.kill()
            phase = phase_of("compact", s.lines)
            damaged = self.check_images(d, before, may_remove=True)
            tmp = bool(self.tmps(d))
            leftover = None
            if damaged:
                self.say("trial %d (%s, %.3f s): %s\n%s" % (i, phase, delay, damaged, s.text()[-3000:]))
            if tmp:
                left_before = self.tmps(d)
                r = self.crest("compact", d)
                still = [t for t in left_before if t in self.tmps(d)]
                if r.returncode != 0:
                    leftover = "the next compact failed: " + r.stderr.strip()[:300]
                elif still:
                    leftover = "left by the next compact: " + ", ".join(still)
                damaged = damaged or self.check_images(d, self.committed(d))
            self.tally.add(program, phase, None, damaged, tmp, leftover)
        job.kill()
        try:
            j = self.restore_newest(d, None)
            j.kill()
        except RuntimeError as e:
            self.tally.add(program, "(final restore)", damaged=str(e))

    # crestd and crest run: a supervisor checkpointing a job every second.
    def supervised_job(self, run, init_pid_hint=None):
        """The job of a crest run: crest-init (pid 1 of its namespace) and its tree."""
        out = run["out"]
        self.wait_ready(out, 0)
        # crest-init is a child of crestd or of crest run.
        end = time.monotonic() + 10
        while time.monotonic() < end:
            for p in tree_of(run["owner"]):
                if comm(p) == "crest-init" and len(tree_of(p)) >= 3:
                    j = Job(p)
                    j.cgroup = self.job_cgroup(p)
                    return j
            time.sleep(0.02)
        raise RuntimeError("no crest-init below pid %d" % run["owner"])

    @staticmethod
    def job_cgroup(pid):
        text = read("/proc/%d/cgroup" % pid) or ""
        for line in text.splitlines():
            if line.startswith("0::"):
                rel = line[3:]
                for m in (read("/proc/self/mounts") or "").splitlines():
                    f = m.split()
                    if len(f) > 2 and f[2] == "cgroup2" and rel not in ("", "/"):
                        return f[1] + rel
        return None

    def run_crestd(self):
        program = "crestd"
        base = self.path("crestd")
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        sock = os.path.join(base, "crestd.sock")
        d = os.path.join(base, "img")
        env = dict(os.environ, CREST_SOCKET=sock)

        def start_crestd():
            s = Stamped([self.crestd_bin, "-c", "/dev/null", "--socket", sock, "--storage-root",
                         os.path.join(base, "store"), "--metrics-file", "", "--log", "stderr",
                         "--log-level", "debug", "--every", "1s"], self.log_path("crestd"))
            if s.wait_line(r"ready \(", 30) is None:
                raise RuntimeError("crestd did not start:\n" + s.text())
            return s

        daemon = start_crestd()
        out = os.path.join(base, "job.out")
        client = subprocess.Popen([self.crest_bin, "run", "--daemon", "--every", "1s", "-D", d,
                                   "--", self.job_bin, str(self.args.mib), "1"],
                                  stdin=subprocess.DEVNULL, stdout=open(out, "w"),
                                  stderr=open(out + ".err", "w"), env=env)
        job = self.supervised_job({"out": out, "owner": daemon.pid})
        # A reference checkpoint: from its start to the "in all" line.
        aim = self.supervisor_aim(daemon, 0)
        for i in range(self.args.trials):
            if i and i % 25 == 0:
                aim = self.supervisor_aim(daemon, len(daemon.lines))
            else:
                daemon.wait_line(r"checkpoint over", 30, len(daemon.lines))
            job.baseline()  # between two checkpoints: nothing of crest in the job
            before = self.committed(d)
            at = daemon.wait_line(r"checkpoint starting", 30, len(daemon.lines))
            if at is None:
                raise RuntimeError("crestd took no checkpoint:\n" + daemon.text()[-3000:])
            t_start = daemon.lines[at][0]
            delay = aim.delay(i)
            wait = t_start + delay - (time.monotonic() - daemon.t0)
            if wait > 0:
                time.sleep(wait)
            daemon.kill()
            phase = phase_of("supervisor", daemon.lines, at, "starting (pre-copy, smaps)")
            time.sleep(0.05)
            reap_orphans(keep=(client.pid,))
            bad = job.problems()
            harmed = "; ".join(bad) if bad else None
            left_in_job = job.leftovers()
            strays = job.strays()
            damaged = self.check_images(d, before, may_remove=True)
            tmp = bool(self.tmps(d)) or bool(strays)
            leftover = None
            # The next crestd: re-adopts the job and checkpoints it again.
            left_tmp = self.tmps(d)
            daemon = start_crestd()
            r = subprocess.run([self.crest_bin, "jobs", "--json"], env=env, capture_output=True,
                               text=True, timeout=30)
            try:
                jobs = json.loads(r.stdout)
                jobs = jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs
                mine = [j for j in jobs if j.get("pid") == job.root]
            except (ValueError, AttributeError):
                mine = []
            if not mine:
                harmed = (harmed or "") + " the restarted crestd does not know the job: " + r.stdout[:300]
            elif mine[0].get("state") != "running":
                harmed = (harmed or "") + " the restarted crestd says the job is %s" % mine[0].get("state")
            if daemon.wait_line(r"checkpoint over", 30, 0) is None:
                harmed = (harmed or "") + " the restarted crestd took no checkpoint of the job"
            else:
                still = [t for t in left_tmp if t in self.tmps(d)] + job.strays()
                if still:
                    leftover = (leftover + "; " if leftover else "") + \
                        "left after the next checkpoint: " + ", ".join(still)
            if harmed or damaged:
                self.say("trial %d (%s, %.3f s): %s %s" % (i, phase, delay, harmed, damaged))
            self.tally.add(program, phase, harmed, damaged, tmp, leftover, "; ".join(left_in_job))
            if harmed:
                break
        daemon.kill()
        job.kill()
        if job.cgroup:
            try:
                os.rmdir(job.cgroup)  # crestd is gone: nobody else removes it
            except OSError:
                pass
        client.kill()
        client.wait()
        try:
            # The job's stderr is crest run's, which said it lost crestd meanwhile.
            j = self.restore_newest(d, None, extra=("--file-changes", "ignore"))
            j.kill()
        except RuntimeError as e:
            self.tally.add(program, "(final restore)", damaged=str(e))
        reap_orphans()

    def supervisor_aim(self, sup, start):
        """Phases of the next whole checkpoint in a supervisor's log."""
        a = sup.wait_line(r"checkpoint starting", 30, start)
        if a is None:
            raise RuntimeError("no checkpoint started:\n" + sup.text()[-3000:])
        b = sup.wait_line(r"checkpoint over", 30, a)
        if b is None:
            raise RuntimeError("the checkpoint did not end:\n" + sup.text()[-3000:])
        t0 = sup.lines[a][0]
        length = sup.lines[b][0] - t0
        tl = timeline("supervisor", sup.lines[a:b + 1], t0=t0, initial="starting (pre-copy, smaps)")
        tl = [x for x in tl if x[0] != "after the checkpoint"]
        self.say("checkpoint: %.3f s: %s" % (length, ", ".join("%s@%.3f" % x for x in tl)))
        return Aim(tl, length * 1.05, self.rng)

    def run_run(self):
        program = "crest run"
        base = self.path("run")
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        tmpdir = os.path.join(base, "tmp")
        os.makedirs(tmpdir)
        env = dict(os.environ, TMPDIR=tmpdir, XDG_RUNTIME_DIR="")
        env.pop("CREST_SOCKET", None)
        aim = None
        pending = None  # the last trial's tally, waiting for the next crest run to clean up

        def settle(pending):
            # What the killed crest run could not remove, the next crest run does: its control
            # socket directory and the job's (empty) cgroup.
            row, paths = pending
            still = [p for p in paths if os.path.exists(p)]
            if still:
                row[4] = "; ".join(([row[4]] if row[4] else []) +
                                   ["left after the next crest run: " + ", ".join(still)])
                for p in still:
                    if p.startswith(tmpdir):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        try:
                            os.rmdir(p)
                        except OSError:
                            pass
            self.tally.add(*row)

        for i in range(self.args.trials):
            d = os.path.join(base, "img%d" % (i % 2))
            shutil.rmtree(d, ignore_errors=True)
            out = os.path.join(base, "job.out")
            sup = self.spawn_crest("run", ["run", "--no-daemon", "--every", "1s", "-D", d, "--",
                                          self.job_bin, str(self.args.mib), "1"],
                                   env=env, stdout=open(out, "w"))
            job = self.supervised_job({"out": out, "owner": sup.pid})
            if pending:
                settle(pending)
                pending = None
            first = sup.wait_line(r"checkpoint over", 30)
            if first is None:
                raise RuntimeError("crest run took no checkpoint:\n" + sup.text()[-3000:])
            if aim is None or i % 25 == 0:
                aim = self.supervisor_aim(sup, first + 1)
            job.baseline()  # between two checkpoints: nothing of crest in the job
            at = sup.wait_line(r"checkpoint starting", 30, len(sup.lines))
            if at is None:
                raise RuntimeError("crest run took no checkpoint:\n" + sup.text()[-3000:])
            before = self.committed(d)
            t_start = sup.lines[at][0]
            delay = aim.delay(i)
            wait = t_start + delay - (time.monotonic() - sup.t0)
            if wait > 0:
                time.sleep(wait)
            sup.kill()
            phase = phase_of("supervisor", sup.lines, at, "starting (pre-copy, smaps)")
            time.sleep(0.05)
            reap_orphans()
            bad = job.problems()
            harmed = "; ".join(bad) if bad else None
            damaged = self.check_images(d, before, may_remove=True)
            tmp = bool(self.tmps(d))
            left_in_job = job.leftovers()
            leftovers = []
            if job.strays():
                # Nobody checkpoints the orphaned job again: nothing reaps them.
                leftovers.append("snapshot copies in the job: " + ", ".join(job.strays()))
            if harmed or damaged:
                self.say("trial %d (%s, %.3f s): %s %s\n%s" % (i, phase, delay, harmed, damaged,
                                                                 sup.text()[-3000:]))
            # The job runs on, unsupervised; the harness ends it.
            cg = job.cgroup
            left = job.kill()
            if left:
                leftovers.append("the job does not die: %s" % left)
            paths = [os.path.join(tmpdir, e) for e in os.listdir(tmpdir)]
            if cg and os.path.isdir(cg):
                paths.append(cg)
            pending = ([program, phase, harmed, damaged, tmp or bool(paths),
                        "; ".join(leftovers) or None, "; ".join(left_in_job)], paths)
        if pending:
            # One more crest run, to clean up after the last.
            r = subprocess.run([self.crest_bin, "run", "--no-daemon", "--every", "1h", "-D",
                                os.path.join(base, "img-last"), "--", "true"], env=env,
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                pending[0][4] = (pending[0][4] or "") + " the next crest run failed: " + r.stderr[:300]
            settle(pending)
        reap_orphans()

    def run(self):
        programs = self.args.programs.split(",")
        known = {"dump-R": lambda: self.run_dump(True), "dump": lambda: self.run_dump(False),
                 "restore": self.run_restore, "compact": self.run_compact,
                 "crestd": self.run_crestd, "run": self.run_run}
        for p in programs:
            if p not in known:
                sys.exit("kill9: unknown program %s (known: %s)" % (p, ", ".join(known)))
        try:
            for p in programs:
                t0 = time.monotonic()
                print("kill9: %s: %d trials" % (p, self.args.trials), flush=True)
                known[p]()
                print("kill9: %s: done in %.0f s" % (p, time.monotonic() - t0), flush=True)
        finally:
            reap_orphans()
            self.remove_cgroups()
        print()
        print(self.tally.table())
        if self.tally.details:
            print("\nproblems:")
            for d in self.tally.details:
                print("  " + d)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump({"rows": [{"program": p, "phase": ph, "trials": v[0], "job_harmed": v[1],
                                     "checkpoint_damaged": v[2], "left_for_next_op": v[3],
                                     "leftovers": v[4], "left_in_job": v[5]} for (p, ph), v in self.tally.rows.items()],
                           "problems": self.tally.details}, f, indent=2)
        if not self.args.dir and not self.tally.bad():
            shutil.rmtree(self.root_dir, ignore_errors=True)
        elif self.tally.bad():
            print("\nkill9: logs in %s" % self.root_dir)
        return 1 if self.tally.bad() else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True, help="crest's build directory (with bin/)")
    ap.add_argument("--trials", type=int, default=100, help="trials per program (default 100)")
    ap.add_argument("--quick", action="store_true", help="3 trials per program (CI)")
    ap.add_argument("--programs", default="dump-R,dump,restore,compact,crestd,run")
    ap.add_argument("--dir", help="scratch directory (kept); default a temporary one, removed "
                                  "when every trial passed")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--mib", type=int, default=16, help="MiB of memory per job process (default 16)")
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.trials = 3
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    if os.geteuid() != 0:
        print("kill9: SKIP: needs root (ptrace of the job, cgroups)")
        return 77
    print("kill9: seed %d" % args.seed, flush=True)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return Harness(args).run()


if __name__ == "__main__":
    sys.exit(main())
