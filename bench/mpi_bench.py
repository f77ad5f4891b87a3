#!/usr/bin/env python3
"""crest on an Open MPI job (run by hand; not a test).

    bench/mpi_bench.py --build BUILD [--np 4] [--mib 1024] [--runs 3] [--gap 1.0]
    bench/mpi_bench.py --build BUILD --slowdown [--interval 30] [--blocks 2] [--runs 2]

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

With --slowdown it measures instead what periodic checkpoints cost the job (issue 11's target:
at most 1% with a checkpoint every 30 s), with alternating blocks as bench/incremental_bench.cpp
does:

    bench/mpi_bench.py --build BUILD --slowdown [--interval 30] [--blocks 2] [--runs 2]

Each run starts the same job afresh (new processes, new memory) under crest run's own supervisor
(`crest run --no-daemon --every 24h -- mpirun ...`: no timer of its own fires), takes its first
(full) checkpoint, measures the sweep time, and makes blocks of a fixed amount of work: K sweeps,
K chosen so that a block lasts about INTERVAL seconds. 2 * BLOCKS + 1 blocks alternate, first and
last without a checkpoint; in each block with one, the bench asks the job's agent for a
checkpoint (`crest checkpoint JOB`, incremental, the job running on: what --every does at each
interval) once half the block's sweeps are done, and the block ends at its K-th sweep or, if the
checkpoint is still being written then, at the first sweep after it is committed. Each block with
a checkpoint costs its time per sweep over the mean of the two blocks without around it (a
linear drift of the job's own speed cancels): the run's slowdown is the median of those. So a
block with one checkpoint stands for one interval of a job checkpointed every INTERVAL seconds.
Reported per run and as first run / median of runs: time per block without and with, slowdown,
the checkpoints' frozen time (and its share of the block), total time, bytes and the CPU time
crest run's process spent on each (its checkpointer: reading, hashing, compressing, writing;
on a machine whose cores the job already fills, that CPU is taken from the job), with the
machine's cores and load average.

Needs root (crest dump/restore of a tree), Open MPI, and a build with crest, crest-init and
crest-heat-mpi. Uses a directory of its own on /dev/shm for Open MPI's session directory and
vader segments, and ports from 23000 for the TCP transport (a range per run).
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


# The session directory and vader segments in a directory of this bench's own on /dev/shm: under
# crest run mpirun is pid 2 of its pid namespace, and Open MPI names a job's segments after the
# host and mpirun's pid, so another such job on the node at once would share them (README "MPI
# jobs").
SHM_BASE = f"/dev/shm/crest-mpi-bench.{os.getpid()}"


def mpi_env(port):
    os.makedirs(SHM_BASE, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_tcp_if_include": "lo",
        "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_orte_tmpdir_base": SHM_BASE,
        "OMPI_MCA_btl_vader_backing_directory": SHM_BASE,
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


class Progress:
    """Follows the job's output file: the time each progress line ("sweep S/...") was seen."""

    def __init__(self, path):
        self.path, self.offset, self.partial = path, 0, b""
        self.sweep, self.at = 0, time.monotonic()

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        if not data:
            return
        now = time.monotonic()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            m = re.match(rb"sweep +(\d+)/", line)
            if m:
                self.sweep, self.at = int(m.group(1)), now

    def wait_sweep(self, target, job, timeout=600):
        """Waits until sweep `target` is reported; returns the time it was seen."""
        deadline = time.monotonic() + timeout
        while self.sweep < target:
            if job.poll() is not None:
                sys.exit(f"mpi_bench: the job ended (status {job.returncode}); see {self.path}")
            if time.monotonic() > deadline:
                sys.exit(f"mpi_bench: no sweep {target} within {timeout} s; see {self.path}")
            time.sleep(0.002)
            self.poll()
        return self.at


def job_agent(root):
    """CREST_JOB and CREST_JOB_SOCKET of the job under crest run `root` (from mpirun's environment)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for p in descendants(root):
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip() != "mpirun":
                        continue
                with open(f"/proc/{p}/environ", "rb") as f:
                    env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            except OSError:
                continue
            job, sock = env.get(b"CREST_JOB"), env.get(b"CREST_JOB_SOCKET")
            if job and sock:
                return p, job.decode(), sock.decode()
        time.sleep(0.1)
    sys.exit("mpi_bench: no mpirun with CREST_JOB and CREST_JOB_SOCKET under crest run")


def cpu_seconds(pid):
    """CPU time (user + system, every thread) a process has used, in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slowdown_run(args, run, work):
    crest, heat = os.path.join(args.build, "bin", "crest"), os.path.join(args.build, "bin", "crest-heat-mpi")
    n = int(((args.mib << 20) / 16) ** 0.5)
    d = os.path.join(work, f"run{run}")
    os.makedirs(d)
    out, err, log, img = (os.path.join(d, x) for x in ("out", "err", "crest.log", "img"))
    env = mpi_env(23000 + 100 * (run % 50))
    with open(out, "wb") as o, open(err, "wb") as e:
        job = subprocess.Popen([crest, "run", "--no-daemon", "--every", "24h", "-D", img, "--",
                                "mpirun", "-np", str(args.np), heat, "-f", "-n", str(n), "-s", "100000000",
                                "-r", "1"],
                               stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env, start_new_session=True)
    progress = Progress(out)
    leftovers = set()
    try:
        progress.wait_sweep(1, job, timeout=300)  # filled and solving
        mpirun, job_id, sock = job_agent(job.pid)
        leftovers = shm_files(descendants(job.pid))
        ask = [crest, "checkpoint", job_id, "--socket", sock, "--json"]
        first = crest_json(ask, log)  # the first, full checkpoint
        # The sweep time, a few sweeps after the full checkpoint (its copy-on-write faults paid).
        progress.wait_sweep(progress.sweep + 2, job)
        start_sweep = progress.sweep
        t0 = progress.at
        progress.wait_sweep(start_sweep + 3, job)
        while progress.at - t0 < 5:
            progress.wait_sweep(progress.sweep + 1, job)
        sweep_s = (progress.at - t0) / (progress.sweep - start_sweep)
        k = max(4, round(args.interval / sweep_s))
        blocks, ckpts = [], []
        start, t_start = progress.sweep, progress.at
        cpu_start = cpu_seconds(job.pid)  # crest run: its supervisor does the checkpoints
        for b in range(2 * args.blocks + 1):
            with_ckpt = b % 2 == 1
            pending = None
            if with_ckpt:
                progress.wait_sweep(start + k // 2, job)
                with open(log, "ab") as errlog:
                    pending = subprocess.Popen(ask, stdout=subprocess.PIPE, stderr=errlog)
            progress.wait_sweep(start + k, job)
            committed_inside = True
            if pending is not None:
                if pending.poll() is None:
                    committed_inside = False
                    while pending.poll() is None:
                        time.sleep(0.005)
                        progress.poll()
                    # The block ends at the first sweep after the commit.
                    progress.wait_sweep(progress.sweep + 1, job)
                text = pending.stdout.read()
                if pending.wait() != 0:
                    sys.exit(f"mpi_bench: crest checkpoint failed: {text.decode(errors='replace')}; see {log}")
                c = json.loads(text)
                ckpts.append({"frozen_ms": c["stats"]["frozen_ns"] / 1e6, "total_ms": c["stats"]["total_ns"] / 1e6,
                              "stored_mib": c["stats"]["bytes_stored"] / 2**20, "inside": committed_inside})
            end, t_end = progress.sweep, progress.at
            cpu_end = cpu_seconds(job.pid)
            blocks.append({"with": with_ckpt, "sweeps": end - start, "seconds": t_end - t_start,
                           "per_sweep": (t_end - t_start) / (end - start), "agent_cpu_s": cpu_end - cpu_start})
            cpu_start = cpu_end
            print(f"  run {run + 1} block {b + 1}: {'with a checkpoint' if with_ckpt else 'without'}, "
                  f"{end - start} sweeps in {t_end - t_start:.2f} s"
                  + (f" (checkpoint frozen {ckpts[-1]['frozen_ms']:.0f} ms, {ckpts[-1]['total_ms'] / 1e3:.1f} s, "
                     f"{ckpts[-1]['stored_mib']:.0f} MiB, checkpointer CPU {blocks[-1]['agent_cpu_s']:.1f} s"
                     f"{'' if committed_inside else ', committed after the K-th sweep'})"
                     if with_ckpt else ""), file=sys.stderr, flush=True)
            start, t_start = end, t_end
    finally:
        leftovers |= shm_files(descendants(job.pid))
        end_tree(job.pid, leftovers)
    losses = []
    for i in range(1, len(blocks), 2):
        around = (blocks[i - 1]["per_sweep"] + blocks[i + 1]["per_sweep"]) / 2
        losses.append(blocks[i]["per_sweep"] / around - 1)
    without = [b["per_sweep"] for b in blocks if not b["with"]]
    with_ = [b["per_sweep"] for b in blocks if b["with"]]
    row = {
        "sweeps_per_block": k,
        "block_without_s": k * statistics.median(without),
        "block_with_s": k * statistics.median(with_),
        "slowdown_pct": 100 * statistics.median(losses),
        "slowdown_min_pct": 100 * min(losses),
        "slowdown_max_pct": 100 * max(losses),
        "ckpt_frozen_ms": statistics.median(c["frozen_ms"] for c in ckpts),
        "ckpt_total_ms": statistics.median(c["total_ms"] for c in ckpts),
        "ckpt_stored_mib": statistics.median(c["stored_mib"] for c in ckpts),
        "ckpt_cpu_s": statistics.median(b["agent_cpu_s"] for b in blocks if b["with"]),
        "frozen_share_pct": 100 * statistics.median(
            c["frozen_ms"] / 1e3 / b["seconds"] for c, b in zip(ckpts, (b for b in blocks if b["with"]))),
        "ckpts_late": sum(1 for c in ckpts if not c["inside"]),
        "first_full_frozen_ms": first["stats"]["frozen_ns"] / 1e6,
    }
    if not args.keep:
        subprocess.run(["rm", "-rf", d])
    return row, n


def slowdown(args, work):
    load0 = os.getloadavg()
    t0 = time.time()
    rows = []
    for r in range(args.runs):
        row, n = slowdown_run(args, r, work)
        rows.append(row)
        print(f"run {r + 1}/{args.runs}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()), file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    summary = {k: {"first": rows[0][k], "median": statistics.median(r[k] for r in rows)} for k in rows[0]}
    machine = {"cores": os.cpu_count(), "load_start": load0, "load_end": load1, "seconds": time.time() - t0}
    if args.json:
        print(json.dumps({"np": args.np, "n": n, "mib": args.mib, "runs": args.runs, "interval": args.interval,
                          "blocks_with": args.blocks, "machine": machine, "results": summary}, indent=2))
        return
    print(f"mpirun -np {args.np} crest-heat-mpi -n {n} ({args.mib} MiB of grid in all) under crest run: "
          f"{args.blocks} blocks with one checkpoint (about every {args.interval:g} s), {args.blocks + 1} without, "
          f"alternating; {args.runs} runs, each a fresh job")
    print(f"machine: {machine['cores']} cores; load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} at the "
          f"start, {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end ({machine['seconds']:.0f} s); "
          f"the job's {args.np} ranks share those cores with the checkpointer and with whatever else runs")
    labels = [
        ("sweeps_per_block", "sweeps per block", "{:.0f}"),
        ("block_without_s", "block without, s", "{:.2f}"),
        ("block_with_s", "block with a checkpoint, s", "{:.2f}"),
        ("slowdown_pct", "slowdown, % (median)", "{:.2f}"),
        ("slowdown_min_pct", "slowdown, % (lowest)", "{:.2f}"),
        ("slowdown_max_pct", "slowdown, % (highest)", "{:.2f}"),
        ("ckpt_frozen_ms", "checkpoint frozen, ms", "{:.0f}"),
        ("ckpt_total_ms", "checkpoint total, ms", "{:.0f}"),
        ("ckpt_stored_mib", "checkpoint stored, MiB", "{:.0f}"),
        ("ckpt_cpu_s", "checkpointer CPU, s", "{:.1f}"),
        ("frozen_share_pct", "frozen, % of its block", "{:.2f}"),
        ("ckpts_late", "committed after the block", "{:.0f}"),
        ("first_full_frozen_ms", "first (full) frozen, ms", "{:.0f}"),
    ]
    print(f"{'':30}{'first':>12}{'median':>12}")
    for k, label, fmt in labels:
        print(f"{label:30}{fmt.format(summary[k]['first']):>12}{fmt.format(summary[k]['median']):>12}")
    verdict = "ok" if summary["slowdown_pct"]["median"] <= 1.0 else "MISSED"
    print(f"target: slowdown <= 1% with a checkpoint every 30 s: {summary['slowdown_pct']['median']:.2f}% "
          f"(interval {args.interval:g} s): {verdict}")


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
    ap.add_argument("--slowdown", action="store_true",
                    help="measure the job's slowdown with periodic checkpoints instead (alternating blocks)")
    ap.add_argument("--interval", type=float, default=30.0,
                    help="--slowdown: seconds between checkpoints, the length of a block")
    ap.add_argument("--blocks", type=int, default=2,
                    help="--slowdown: blocks with a checkpoint per run (each between two without)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mpi_bench: crest dump and restore of a tree need root here")
    work = tempfile.mkdtemp(prefix="crest-mpi-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    if args.slowdown:
        try:
            slowdown(args, work)
        finally:
            if not args.keep:
                subprocess.run(["rm", "-rf", work, SHM_BASE])
        return
    rows = []
    for r in range(args.runs):
        row, n = one_run(args, r, work)
        rows.append(row)
        print(f"run {r + 1}/{args.runs}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()), file=sys.stderr)
    if not args.keep:
        subprocess.run(["rm", "-rf", work, SHM_BASE])
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
