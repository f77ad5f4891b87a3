#!/usr/bin/env python3
"""crest at the edge of a resource: a tree with very many mappings, threads, processes or
descriptors, dumped and restored with the crest command as a user runs it.

    bench/limits.py --build BUILD [--maps 100000] [--threads 5000] [--procs 2000]
                    [--fds 100000] [--fdprocs 1000000] [--only KIND,...] [--timeout 600]
                    [--dir DIR] [--quick]

For each kind, a fresh crest-bench-limits-job (bench/limits_job.c) makes N of them and says it
is ready; then, each timed from fork to exit with the peak RSS of crest itself (wait4):
    dump     crest dump -t ROOT -D DIR --json          (the tree is killed once committed)
    restore  crest restore -D DIR -d --json            (returns once the tree runs)
and the restored job checks from inside that every mapping, thread, child or descriptor is
there with what it held (SIGUSR1; it prints PASS). A kind crest cannot take must be refused by
name (a non-zero exit with one `crest: <kind>: ...` line), never a crash, a hang (--timeout) or
a restore that passes without its contents. Machine limits in the way are raised for the run
when root may (vm.max_map_count for maps and threads; kernel.pid_max and kernel.threads-max for
threads and processes) and put back after.

fdprocs: N descriptors over child processes of up to 10,000 each (fewer under a lower hard
RLIMIT_NOFILE): a tree holding more descriptors than one process may; one in 100 is an eventfd,
the rest dups of a pipe end, since the restorer holds every description at once (more
descriptions than its RLIMIT_NOFILE: refused by name, which counts as done).

fdwide: N eventfds over child processes of 500 each, each its own description, restored under an
RLIMIT_NOFILE of N/2 (at least 1,024): the restore must be refused before anything is made,
naming the descriptions and the limit.

fdtop: one descriptor at the top of the hard RLIMIT_NOFILE: works where the restorer may go
higher (CAP_SYS_RESOURCE and a higher hard limit), else the restore is refused naming
RLIMIT_NOFILE, before anything is made.

--quick runs small sizes (maps 20000, threads 500, procs 300, fds 20000, fdprocs 30000,
fdwide 4000): the ctest `cli.limits_quick` runs that. Exit status 0 when every kind worked or was refused by name.
"""
import argparse
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def raise_sysctl(path, want):
    """Raises /proc/sys/PATH to at least want; returns (path, old value) to put back, or None."""
    cur = int(read("/proc/sys/" + path) or 0)
    if cur >= want:
        return None
    try:
        with open("/proc/sys/" + path, "w") as f:
            f.write(str(want))
    except OSError as e:
        print("limits: cannot raise %s to %d (%s): the job may fail" % (path.replace("/", "."), want, e))
        return None
    print("limits: %s raised from %d to %d for this run" % (path.replace("/", "."), cur, want), flush=True)
    return (path, cur)


def run_timed(argv, timeout, nofile=None):
    """Runs argv (under RLIMIT_NOFILE nofile if given); returns (status, seconds, peak RSS in MiB,
    stdout, stderr, timed_out)."""
    t0 = time.monotonic()
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=limit)
        deadline = t0 + timeout
        timed_out = False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        p.returncode = 0  # reaped here: keep Popen from waiting again
        secs = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return status, secs, ru.ru_maxrss / 1024.0, out.read().decode(errors="replace"), \
            err.read().decode(errors="replace"), timed_out


def describe(status):
    if os.WIFEXITED(status):
        return "exit %d" % os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return "killed by signal %d" % os.WTERMSIG(status)
    return "status %d" % status


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reap_every_child():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def first_error(out, err):
    """The `crest: <kind>: ...` line, from stderr or from the --json document on stdout."""
    line = next((l for l in err.splitlines() if l.startswith("crest: ") and ": " in l[7:]), "")
    if line:
        return line
    try:
        e = json.loads(out).get("error", {})
        if e:
            return "crest: %s: %s" % (e.get("kind", "?"), e.get("message", ""))
    except (ValueError, AttributeError):
        pass
    return ""


def kill_tree(root):
    """SIGKILLs root and every descendant (by /proc children), then reaps."""
    todo, seen = [root], []
    while todo:
        p = todo.pop()
        seen.append(p)
        for t in os.listdir("/proc/%d/task" % p) if os.path.isdir("/proc/%d/task" % p) else []:
            todo += [int(c) for c in read("/proc/%d/task/%s/children" % (p, t)).split()]
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: (reap_all() or True) and not os.path.exists("/proc/%d" % root), 30)


def one(kind, n, args, crest, job_bin):
    work = tempfile.mkdtemp(prefix="limits-%s-" % kind, dir=args.dir)
    log = os.path.join(work, "job.log")
    images = os.path.join(work, "img")
    row = {"kind": kind, "n": n}
    try:
        t0 = time.monotonic()
        job = subprocess.Popen([job_bin, kind, str(n), log], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        if not wait_for(lambda: "READY" in read(log) or "FAIL" in read(log) or job.poll() is not None,
                        args.timeout):
            row["outcome"] = "the job did not get ready"
            return row
        if "READY" not in read(log):
            row["outcome"] = "the job could not be made: " + read(log).strip()
            return row
        row["setup_s"] = round(time.monotonic() - t0, 2)
        st, secs, rss, out, err, to = run_timed(
            [crest, "dump", "-t", str(job.pid), "-D", images, "--json"], args.timeout)
        row.update(dump_s=round(secs, 2), dump_rss_mib=round(rss, 1))
        if to:
            row["outcome"] = "HANG: crest dump did not end within %d s" % args.timeout
            kill_tree(job.pid)
            return row
        if not (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0):
            first = first_error(out, err)
            named = os.WIFEXITED(st) and first != ""
            row["outcome"] = ("refused: " if named else "CRASH/UNNAMED: %s: " % describe(st)) + \
                (first or err.strip()[-300:])
            kill_tree(job.pid)  # a failed dump leaves the tree running
            return row
        job.wait()  # killed once committed
        reap_every_child()  # the tree's other processes, reparented to us: their pids free again
        try:
            stats = json.loads(out)
            row["dump_json_keys"] = len(stats)
        except ValueError:
            pass
        row["image_mib"] = round(sum(os.path.getsize(os.path.join(images, f))
                                     for f in os.listdir(images) if f.startswith("ckpt-")) / 2**20, 1)
        # fdwide: a restorer whose limit is below the tree's descriptions, which must refuse.
        st, secs, rss, out, err, to = run_timed(
            [crest, "restore", "-D", images, "-d", "--json"], args.timeout,
            nofile=max(1024, n // 2) if kind == "fdwide" else None)
        row.update(restore_s=round(secs, 2), restore_rss_mib=round(rss, 1))
        if to:
            row["outcome"] = "HANG: crest restore did not end within %d s" % args.timeout
            return row
        if not (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0):
            first = first_error(out, err)
            row["outcome"] = ("restore refused: " if os.WIFEXITED(st) and first else
                              "RESTORE CRASH/UNNAMED: %s: " % describe(st)) + (first or err.strip()[-300:])
            return row
        # The restored root has the original pid and is our child now (we are a subreaper).
        root = job.pid
        os.kill(root, signal.SIGUSR1)
        ok = wait_for(lambda: "PASS" in read(log) or "FAIL" in read(log).split("READY")[-1], args.timeout)
        verdict = read(log).split("READY")[-1].strip().splitlines()
        verdict = verdict[-1] if verdict else ""
        if not ok:
            row["outcome"] = "HANG: the restored job did not answer its check"
            kill_tree(root)
        elif verdict == "PASS":
            row["outcome"] = "ok"
            wait_for(lambda: (reap_all() or True) and not os.path.exists("/proc/%d" % root), 60)
        else:
            row["outcome"] = "RESTORED WRONG: " + verdict
            kill_tree(root)
        return row
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="the build directory")
    ap.add_argument("--maps", type=int, default=100000)
    ap.add_argument("--threads", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=2000)
    ap.add_argument("--fds", type=int, default=100000)
    ap.add_argument("--fdprocs", type=int, default=1000000)
    ap.add_argument("--fdwide", type=int, default=4000)
    ap.add_argument("--only", default="maps,threads,procs,fds,fdprocs,fdwide,fdtop")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--dir", default=None, help="scratch directory (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.maps, args.threads, args.procs, args.fds, args.fdprocs = 20000, 500, 300, 20000, 30000
        args.timeout = min(args.timeout, 120)
    crest = os.path.join(args.build, "bin", "crest")
    job_bin = os.path.join(args.build, "bin", "crest-bench-limits-job")
    for b in (crest, job_bin):
        if not os.access(b, os.X_OK):
            sys.exit("limits: %s is not built" % b)
    if os.geteuid() != 0:
        sys.exit("limits: run as root (crest restores with the pids it had)")
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)

    sizes = {"maps": args.maps, "threads": args.threads, "procs": args.procs, "fds": args.fds,
             "fdprocs": args.fdprocs, "fdwide": args.fdwide, "fdtop": 1}
    # The job raises RLIMIT_NOFILE to fit its descriptors; past the hard limit only with
    # CAP_SYS_RESOURCE (a container may not have it).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cap_eff = int(next((l.split()[1] for l in read("/proc/self/status").splitlines()
                        if l.startswith("CapEff:")), "0"), 16)
    if not cap_eff & (1 << 24) and hard != resource.RLIM_INFINITY and args.fds + 64 > hard:
        print("limits: no CAP_SYS_RESOURCE here: descriptors capped at the hard RLIMIT_NOFILE, %d"
              % hard)
        sizes["fds"] = hard - 64
    kinds = [k for k in args.only.split(",") if k]
    print("limits: vm.max_map_count %s, kernel.threads-max %s, fs.nr_open %s, %d cpus" % (
        read("/proc/sys/vm/max_map_count").strip(), read("/proc/sys/kernel/threads-max").strip(),
        read("/proc/sys/fs/nr_open").strip(), os.cpu_count()), flush=True)
    bad = 0
    for kind in kinds:
        n = sizes[kind]
        # Machine limits in the way, raised for this kind's run and put back after: the job's
        # mappings besides its own; a pid for every task of it, with room for the rest of the node.
        raised = []
        if kind == "maps":
            raised.append(raise_sysctl("vm/max_map_count", n + 1000))
        if kind in ("threads", "procs"):
            raised.append(raise_sysctl("kernel/pid_max", min(4194304, 2 * n + 32768)))
            raised.append(raise_sysctl("kernel/threads-max", 2 * n + 32768))
        if kind == "threads":  # each stack is a mapping and its guard page another
            raised.append(raise_sysctl("vm/max_map_count", 2 * n + 1000))
        try:
            row = one(kind, n, args, crest, job_bin)
        finally:
            for path, old in reversed([r for r in raised if r]):
                with open("/proc/sys/" + path, "w") as f:
                    f.write(str(old))
        print(json.dumps(row), flush=True)
        out = row.get("outcome", "")
        # A checkpoint taken but refused at restore is a failure (that job could not come back),
        # except fdtop's, which no restorer under the same hard limit can take, and fdprocs' when
        # its descriptions outnumber the restorer's limit: refused by name. fdwide's restore
        # must be refused so.
        named_limit = (kind in ("fdtop", "fdprocs") and out.startswith("restore refused: ")
                       and "RLIMIT_NOFILE" in out)
        if kind == "fdwide":
            if not (out.startswith("restore refused: ") and "open file descriptions" in out):
                bad += 1
        elif not (out == "ok" or named_limit or out.startswith("refused: ")
                  or out.startswith("the job could not be made")):
            bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
