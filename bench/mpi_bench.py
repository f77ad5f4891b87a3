#!/usr/bin/env python3
"""crest on an Open MPI job (run by hand; not a test).

    bench/mpi_bench.py --build BUILD [--np 4] [--mib 1024] [--runs 3] [--gap 1.0]

Each run starts `mpirun -np NP crest-heat-mpi -f` (examples/mpi/heat.c, its grid filled with
non-zero data from the start, so no page is a zero page) with a grid sized so that the ranks
hold MIB MiB of grid in all (two N x N arrays of doubles, split over the ranks), waits
until every rank has filled its blocks and the solve runs, then:

  1. full checkpoint:        crest dump -t <mpirun> -D DIR -R      (the job runs on)
  2. incremental checkpoint: crest dump -t <mpirun> -D DIR -R --parent, GAP seconds later
  3. the job is SIGKILLed (every rank and mpirun), and
     restore:                crest restore -D DIR -d --file-changes=truncate (the newest chain)

and reports, for each step, the job's frozen time, the bytes stored, the checkpoint's total time
and the restore's time (crest's own --json statistics), then the restored job is ended. The
first run is shown beside the median of all runs (the first pays for cold caches and page-cache
misses; the median is the steady figure). The solver sweeps its whole grid every step (Jacobi:
every point of one array is written each sweep), so an incremental checkpoint after a sweep or
more stores about half the job, one after none stores almost nothing: the report gives the
sweeps made between the two checkpoints.

Needs root (crest dump/restore of a tree), Open MPI, and a build with crest, crest-init and
crest-heat-mpi. Uses /dev/shm for Open MPI's session directory and ports from 23000 for the TCP
transport (a range per run).
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def mpi_env(port):
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_tcp_if_include": "lo",
        "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_orte_tmpdir_base": "/dev/shm",
    })
    for v in ("v4", "v6"):
        env[f"OMPI_MCA_btl_tcp_port_min_{v}"] = str(port)
        env[f"OMPI_MCA_btl_tcp_port_range_{v}"] = "100"
    return env


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    for c in f.read().split():
                        out.append(int(c))
                        todo.append(int(c))
        except OSError:
            pass
    return out


def shm_files(pids):
    """Files in /dev/shm the processes map (the job's vader segments and PMIx stores)."""
    names = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/maps") as f:
                for line in f:
                    at = line.find("/dev/shm/")
                    if at >= 0:
                        names.add(line[at:].strip().replace(" (deleted)", ""))
        except OSError:
            pass
    return names


def end_tree(root, leftovers):
    """Asks mpirun to end the job (it then cleans up), then kills what is left."""
    tree = descendants(root)
    for p in [root]:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in [root] + tree):
        try:
            os.waitpid(root, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    for p in tree + [root]:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    for f in leftovers:
        try:
            os.unlink(f)
        except OSError:
            pass


def crest_json(argv, log):
    with open(log, "ab") as err:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, timeout=900)
    if r.returncode != 0:
        sys.exit(f"mpi_bench: {' '.join(argv)} failed ({r.returncode}): {r.stdout.decode(errors='replace')}")
    return json.loads(r.stdout)


def sweeps_in(path):
    with open(path) as f:
        found = re.findall(r"^sweep +(\d+)/", f.read(), re.M)
    return int(found[-1]) if found else 0


def one_run(args, run, work):
    crest, heat = os.path.join(args.build, "bin", "crest"), os.path.join(args.build, "bin", "crest-heat-mpi")
    n = int(((args.mib << 20) / 16) ** 0.5)  # two n x n arrays of doubles
    d = os.path.join(work, f"run{run}")
    os.makedirs(d)
    out, log, img = os.path.join(d, "out"), os.path.join(d, "crest.log"), os.path.join(d, "img")
    env = mpi_env(23000 + 100 * (run % 50))
    with open(out, "wb") as o:
        job = subprocess.Popen(["mpirun", "-np", str(args.np), heat, "-f", "-n", str(n), "-s", "100000000",
                                "-r", "1", "-w", str(int(args.sweep_pause * 1e6))],
                               stdin=subprocess.DEVNULL, stdout=o, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    # Filled and solving: the first progress line comes after one sweep of the whole grid.
    deadline = time.time() + 300
    while sweeps_in(out) < 1:
        if job.poll() is not None or time.time() > deadline:
            sys.exit(f"mpi_bench: the job did not start; see {out}")
        time.sleep(0.2)
    leftovers = shm_files(descendants(job.pid))
    full = crest_json([crest, "dump", "-t", str(job.pid), "-D", img, "-R", "--json"], log)
    s0 = sweeps_in(out)
    time.sleep(args.gap)
    incr = crest_json([crest, "dump", "-t", str(job.pid), "-D", img, "-R", "--parent", "--json"], log)
    between = sweeps_in(out) - s0
    # The failure: every process of the job at once (mpirun cannot clean up).
    for p in descendants(job.pid) + [job.pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    job.wait(timeout=60)
    time.sleep(0.5)  # the ranks, reparented, reaped
    t = time.time()
    # (the job's output grew since the checkpoint: rolled back, as crest run does)
    rest = crest_json([crest, "restore", "-D", img, "-d", "--file-changes=truncate", "--json"], log)
    restore_wall = time.time() - t
    root = rest.get("root_pid", 0)
    if root > 1:
        leftovers |= shm_files(descendants(root))
        end_tree(root, leftovers)
    image_bytes = sum(os.path.getsize(os.path.join(img, f)) for f in os.listdir(img) if f.endswith(".h5"))
    row = {
        "full_frozen_ms": full["stats"]["frozen_ns"] / 1e6,
        "full_total_ms": full["stats"]["total_ns"] / 1e6,
        "full_stored_mib": full["stats"]["bytes_stored"] / 2**20,
        "incr_frozen_ms": incr["stats"]["frozen_ns"] / 1e6,
        "incr_total_ms": incr["stats"]["total_ns"] / 1e6,
        "incr_stored_mib": incr["stats"]["bytes_stored"] / 2**20,
        "sweeps_between": between,
        "restore_ms": rest.get("restore_ns", 0) / 1e6,
        "restore_wall_ms": restore_wall * 1e3,
        "images_mib": image_bytes / 2**20,
    }
    if not args.keep:
        subprocess.run(["rm", "-rf", d])
    return row, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True, help="the build directory (bin/crest, bin/crest-heat-mpi)")
    ap.add_argument("--np", type=int, default=4)
    ap.add_argument("--mib", type=int, default=1024, help="grid memory of all ranks together")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between the two checkpoints")
    ap.add_argument("--sweep-pause", type=float, default=0.0, help="seconds the solver sleeps per sweep")
    ap.add_argument("--keep", action="store_true", help="keep the images and logs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mpi_bench: crest dump and restore of a tree need root here")
    work = tempfile.mkdtemp(prefix="crest-mpi-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    rows = []
    for r in range(args.runs):
        row, n = one_run(args, r, work)
        rows.append(row)
        print(f"run {r + 1}/{args.runs}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()), file=sys.stderr)
    if not args.keep:
        subprocess.run(["rm", "-rf", work])
    summary = {k: {"first": rows[0][k], "median": statistics.median(r[k] for r in rows)} for k in rows[0]}
    if args.json:
        print(json.dumps({"np": args.np, "n": n, "mib": args.mib, "runs": args.runs, "results": summary}, indent=2))
        return
    print(f"mpirun -np {args.np} crest-heat-mpi -n {n}: {args.mib} MiB of grid in all, {args.runs} runs")
    print(f"{'':24}{'first':>12}{'median':>12}")
    for k, v in summary.items():
        print(f"{k:24}{v['first']:12.1f}{v['median']:12.1f}")


if __name__ == "__main__":
    main()
