#!/usr/bin/env python3
"""Checkpoint latency with node-local staging vs direct writes to throttled shared storage.

  sudo bench/staging_bench.py --build BUILD [--mib 512] [--runs 4] [--mbps 200]

"Shared storage" is an ext4 file system on a loop device whose writes the block layer throttles
to --mbps MB/s (cgroup v1 blkio.throttle.write_bps_device in the root group, or io.max on a
cgroup v2 machine's root... v1 only here: the root group's limit applies to all writes to the
device, writeback included). Each run is a fresh job (crest-agent-testjob with --mib MiB of
incompressible memory), registered with a crestd, checkpointed once (full), then forgotten with
its images. For each mode the first run is printed beside the median of the others:

  direct   crestd writes the checkpoint into the throttled file system: committed = safe.
  staged   crestd with --storage-local on tmpfs (/dev/shm) and --flush-bandwidth --mbps MB/s:
           "committed" when the checkpoint request is answered (local commit), "safe" when
           crestd reports it copied and verified on the throttled file system.

Root only (loop device, mount, blkio). Everything it makes is removed at the end.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


class Crestd:
    def __init__(self, build, work, extra):
        os.makedirs(work, exist_ok=True)
        self.sock = os.path.join(work, "crestd.sock")
        conf = os.path.join(work, "crestd.toml")
        open(conf, "w").close()
        self.log = os.path.join(work, "crestd.log")
        argv = [os.path.join(build, "bin", "crestd"), "--config", conf, "--socket", self.sock,
                "--storage-root", os.path.join(work, "images"), "--state-file",
                os.path.join(work, "state.json"), "--log", self.log, "--metrics-file", ""] + extra
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for _ in range(500):
            try:
                if self.call({"op": "hello"}).get("ok"):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("crestd did not start; see " + self.log)

    def call(self, req):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.sock)
            s.sendall((json.dumps(req) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def one_run(build, d, images, mib):
    job = subprocess.Popen([os.path.join(build, "bin", "crest-agent-testjob"), "-n",
                            "100000000", "-m", "100", "-M", str(mib), "-z"],
                           stdout=subprocess.PIPE, text=True)
    try:
        while "step 1" not in job.stdout.readline():
            pass
        jid = d.call({"op": "register", "pid": job.pid, "every": "never", "dir": images})["job"]["id"]
        t0 = time.monotonic()
        r = d.call({"op": "checkpoint", "job": jid})
        committed = time.monotonic() - t0
        if not r.get("ok"):
            raise RuntimeError(json.dumps(r))
        while True:
            st = d.call({"op": "status", "job": jid})["job"]
            if st["last_checkpoint"].get("safe"):
                break
            if st.get("staging", {}).get("flush_error"):
                raise RuntimeError(st["staging"]["flush_error"])
            time.sleep(0.005)
        safe = time.monotonic() - t0
        frozen = st["last_checkpoint"]["frozen_ns"] / 1e9
        size = r["stats"].get("bytes_stored", 0)
        flush = st.get("staging", {}).get("last_flush_ms", 0) / 1e3  # copy + verification
        d.call({"op": "forget", "job": jid, "remove_images": True})
        return committed, safe, frozen, size, flush
    finally:
        job.kill()
        job.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--mbps", type=int, default=200)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("staging_bench: needs root (loop device, mount, blkio throttle)")
    blkio = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device"
    if not os.path.exists(blkio):
        sys.exit("staging_bench: no cgroup v1 blkio controller to throttle the shared side with")
    work = tempfile.mkdtemp(prefix="crest-staging-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    img, mnt = os.path.join(work, "shared.img"), os.path.join(work, "shared")
    local = tempfile.mkdtemp(prefix="crest-staging-bench-", dir="/dev/shm")
    os.mkdir(mnt)
    loop = None
    devno = None
    try:
        with open(img, "wb") as f:
            f.truncate((a.mib * 3 + 512) << 20)
        loop = sh("losetup", "-f", "--show", img)
        sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
        sh("mount", loop, mnt)
        st = os.stat(loop)
        devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        with open(blkio, "w") as f:
            f.write(f"{devno} {a.mbps * 1000 * 1000}\n")
        print(f"shared: ext4 on {loop}, writes throttled to {a.mbps} MB/s; local: tmpfs {local}; "
              f"job: {a.mib} MiB incompressible; {a.runs} runs per mode (fresh job each); "
              f"load average {os.getloadavg()[0]:.2f}")
        results = {}
        for mode in ("direct", "staged"):
            extra = [] if mode == "direct" else ["--storage-local", local, "--flush-bandwidth",
                                                 f"{a.mbps}MB/s"]
            d = Crestd(a.build, os.path.join(work, mode), extra)
            try:
                rows = [one_run(a.build, d, os.path.join(mnt, mode), a.mib) for _ in range(a.runs)]
            finally:
                d.stop()
            results[mode] = rows
        print(f"{'mode':8} {'':6} {'frozen s':>9} {'committed s':>12} {'safe s':>8} "
              f"{'copy+verify s':>14} {'MiB':>6}")
        for mode, rows in results.items():
            first, rest = rows[0], rows[1:] or rows[:1]
            med = [statistics.median(r[i] for r in rest) for i in range(5)]
            for label, r in (("first", first), ("median", med)):
                print(f"{mode:8} {label:6} {r[2]:9.3f} {r[0]:12.3f} {r[1]:8.3f} {r[4]:14.3f} "
                      f"{r[3] / 2**20:6.0f}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if devno:
            with open(blkio, "w") as f:
                f.write(f"{devno} 0\n")
        subprocess.run(["umount", mnt], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        subprocess.run(["rm", "-rf", work, local], capture_output=True)


if __name__ == "__main__":
    main()
