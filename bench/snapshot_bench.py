#!/usr/bin/env python3
"""crest snapshot, as cron runs it, with and without crestd (issue 12): what each snapshot reads.

  python3 bench/snapshot_bench.py --build BUILD [--size-mib 1024] [--runs 5] [--dir DIR]
                                  [--keep 1000]

A python3 job holds --size-mib MiB of random bytes (incompressible: stored ~ read) and, before
each snapshot after the first, rewrites 5% of its pages (one byte in every 20th page, a
different 5% each round). Then `crest snapshot PID -D DIR --keep K --json` runs --runs + 1 times:
  - with crestd (a private one on a temporary socket): the tree becomes a crestd job on the first
    snapshot and crestd keeps its uffd-wp tracker, so later snapshots read only written pages;
  - without crestd: every snapshot reads all the job's memory (incremental by content: it stores
    only changed pages).
Reported per mode: the first snapshot, and the median of the later ones (min-max beside it):
wall time of the command (what cron waits for), memory read from the job, bytes stored, time the
job was frozen. --keep defaults to 1000 so that no compaction is timed; pass --keep 3 to see it.
The machine is shared and hands freed memory back to the host: quote medians.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

JOB = r"""
import mmap, os, signal, sys, time
size, out = int(sys.argv[1]) << 20, sys.argv[2]
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private, as malloc gives
for off in range(0, size, 1 << 20):
    m[off:off + (1 << 20)] = os.urandom(1 << 20)
rounds = 0
def rewrite(sig, frame):
    global rounds
    rounds += 1
    for off in range((rounds % 20) * 4096, size, 20 * 4096):
        m[off] = (m[off] + 1) & 255
    with open(out + "/.round", "w") as f:
        f.write(str(rounds))
    os.rename(out + "/.round", out + "/round")
signal.signal(signal.SIGUSR1, rewrite)
with open(out + "/ready", "w") as f:
    f.write("1")
while True:
    signal.pause()
"""


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.01)
    sys.exit("snapshot_bench: timed out waiting for " + what)


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def snapshot(crest, pid, images, keep, socket):
    t0 = time.monotonic()
    p = subprocess.run([crest, "snapshot", str(pid), "-D", images, "--keep", str(keep), "--json",
                        "--socket", socket], capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit("snapshot_bench: crest snapshot failed: " + p.stderr.strip())
    doc = json.loads(p.stdout)
    s = doc["stats"]
    return {"wall_s": wall, "read_mib": s.get("pages_read", 0) * 4096 / 2**20,
            "stored_mib": s.get("bytes_stored", 0) / 2**20, "frozen_ms": s.get("frozen_ns", 0) / 1e6,
            "by": doc.get("by"), "tracker": doc.get("tracker")}


def run_mode(name, crest, pid, work, images, keep, socket, runs):
    rows = []
    for i in range(runs + 1):
        if i > 0:
            before = read(work + "/round")
            os.kill(pid, signal.SIGUSR1)
            wait_for(lambda: read(work + "/round") not in ("", before), 30, "a rewrite round")
        rows.append(snapshot(crest, pid, images, keep, socket))
    return name, rows


def fmt(rows, key, spec):
    vals = [r[key] for r in rows]
    return (spec % statistics.median(vals)) + " (" + (spec % min(vals)) + "-" + (spec % max(vals)) + ")"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True, help="build directory (bin/crest, bin/crestd)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5, help="snapshots after the first, per mode")
    ap.add_argument("--keep", type=int, default=1000)
    ap.add_argument("--dir", help="scratch directory (default: a temporary one, removed)")
    a = ap.parse_args()
    crest = os.path.join(a.build, "bin", "crest")
    crestd = os.path.join(a.build, "bin", "crestd")
    scratch = a.dir or tempfile.mkdtemp(prefix="crest-snapshot-bench-")
    os.makedirs(scratch, exist_ok=True)
    work = os.path.join(scratch, "job")
    os.makedirs(work, exist_ok=True)
    job = subprocess.Popen([sys.executable, "-c", JOB, str(a.size_mib), work], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    daemon = None
    try:
        wait_for(lambda: read(work + "/ready") == "1", 300, "the job to fill its memory")
        results = []
        # With crestd.
        sock = os.path.join(scratch, "crestd.sock")
        conf = os.path.join(scratch, "crestd.toml")
        open(conf, "w").close()
        daemon = subprocess.Popen([crestd, "--config", conf, "--socket", sock, "--storage-root",
                                   os.path.join(scratch, "storage"), "--state-file",
                                   os.path.join(scratch, "state.json"), "--metrics-file", "",
                                   "--log", os.path.join(scratch, "crestd.log")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(sock), 10, "crestd")
        time.sleep(0.2)
        results.append(run_mode("with crestd", crest, job.pid, work, os.path.join(scratch, "with"),
                                a.keep, sock, a.runs))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        daemon = None
        # Without: a socket nobody listens on.
        results.append(run_mode("without crestd", crest, job.pid, work, os.path.join(scratch, "without"),
                                a.keep, os.path.join(scratch, "none.sock"), a.runs))
    finally:
        if daemon:
            daemon.kill()
            daemon.wait()
        job.kill()
        job.wait()
        if not a.dir:
            shutil.rmtree(scratch, ignore_errors=True)

    print("crest snapshot of a %d MiB job, %d%% of its pages rewritten between snapshots; "
          "first snapshot, then the median (min-max) of %d later ones" % (a.size_mib, 5, a.runs))
    print("%-15s %-6s %-9s %-22s %-26s %-24s %s" % ("mode", "which", "tracker", "wall s", "read MiB",
                                                    "stored MiB", "frozen ms"))
    for name, rows in results:
        f, later = rows[0], rows[1:]
        print("%-15s %-6s %-9s %-22s %-26s %-24s %s" % (name, "first", f["tracker"], "%.2f" % f["wall_s"],
                                                        "%.0f" % f["read_mib"], "%.0f" % f["stored_mib"],
                                                        "%.1f" % f["frozen_ms"]))
        print("%-15s %-6s %-9s %-22s %-26s %-24s %s" % (name, "later", later[-1]["tracker"],
                                                        fmt(later, "wall_s", "%.2f"),
                                                        fmt(later, "read_mib", "%.0f"),
                                                        fmt(later, "stored_mib", "%.0f"),
                                                        fmt(later, "frozen_ms", "%.1f")))


if __name__ == "__main__":
    main()
