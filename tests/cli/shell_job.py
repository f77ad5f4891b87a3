#!/usr/bin/python3
# crest dump/restore --shell-job, on real terminals (pseudo-terminals made here).
#
# A "shell" S leads a session on terminal T1 and runs a job J (python3, its own process group,
# T1's foreground, stdio on T1). Then:
#   1. crest dump of J without --shell-job is refused naming the terminal; J runs on;
#   2. crest dump --shell-job takes it (J is killed);
#   3. crest restore without --shell-job is refused;
#   4. a second shell S2 on terminal T2 runs `crest restore --shell-job -d`: J comes back in S2's
#      session with T2 as its controlling terminal, in T2's foreground (TIOCGPGRP of T2's master);
#   5. on SIGTERM J checks from inside: its stdio is T2 (ttyname), tty_nr in /proc/self/stat is
#      T2, its group is T2's foreground, its session is S2's; it writes PASS or what differs.
# Usage: shell_job.py SCRATCH_DIR (CREST_BIN_DIR: where crest is).
import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

CREST = os.path.join(os.environ.get("CREST_BIN_DIR", "build/bin"), "crest")
JOB = r'''
import os, signal, sys, time, fcntl, termios, struct
term = False
def on_term(s, f):
    global term
    term = True
signal.signal(signal.SIGTERM, on_term)
with open(sys.argv[1] + ".ready", "w") as f:
    f.write("ready")
while not term:
    time.sleep(0.1)
why = []
st = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
rdev = os.fstat(0).st_rdev
nr = (os.minor(rdev) & 0xff) | (os.major(rdev) << 8) | ((os.minor(rdev) & ~0xff) << 12)
if int(st[4]) != nr: why.append("tty_nr %s, stdin is %d" % (st[4], nr))
if os.tcgetpgrp(0) != os.getpgrp(): why.append("foreground %d, our group %d" % (os.tcgetpgrp(0), os.getpgrp()))
if int(st[5]) != os.getpgrp(): why.append("tpgid %s" % st[5])
sid = struct.unpack("i", fcntl.ioctl(0, 0x5429, b"\0" * 4))[0]  # TIOCGSID
if sid != os.getsid(0): why.append("terminal session %d, ours %d" % (sid, os.getsid(0)))
with open(sys.argv[1] + ".result", "w") as f:
    f.write("%s %s %d" % ("PASS" if not why else "FAIL: " + "; ".join(why), os.ttyname(0), os.getsid(0)))
'''


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def session_on(slave_name, argv):
    """Forks a session leader with slave_name as controlling terminal and stdio, running argv."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fd = os.open(slave_name, os.O_RDWR)  # becomes our controlling terminal
            fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
            for i in range(3):
                os.dup2(fd, i)
            os.closerange(3, 1024)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid


def wait_file(path, secs=10):
    t0 = time.monotonic()
    while time.monotonic() - t0 < secs:
        if os.path.exists(path):
            return True
        time.sleep(0.05)
    return False


def drain(master):
    try:
        while os.read(master, 4096):
            pass
    except OSError:
        pass


def main():
    d = sys.argv[1]
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tag = os.path.join(d, "job")
    img = os.path.join(d, "img")
    m1, s1 = pty.openpty()
    os.set_blocking(m1, False)
    name1 = os.ttyname(s1)
    # S: a shell leading T1's session, running J in the foreground.
    shell = '''import os, sys
j = os.fork()
if j == 0:
    os.setpgid(0, 0)
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], sys.argv[2]])
os.setpgid(j, j)
os.tcsetpgrp(0, j)
with open(sys.argv[2] + ".pid", "w") as f:
    f.write(str(j))
os.waitpid(j, 0)
'''
    s = session_on(name1, [sys.executable, "-c", shell, JOB, tag])
    if not wait_file(tag + ".ready"):
        fail("the job did not start")
    j = int(open(tag + ".pid").read())
    drain(m1)

    run = lambda *a: subprocess.run([CREST] + list(a), capture_output=True, text=True,
                                    stdin=subprocess.DEVNULL, timeout=60)
    r = run("dump", "-t", str(j), "-D", img)
    if r.returncode == 0 or "--shell-job" not in r.stderr or name1 not in r.stderr:
        fail("dump without --shell-job: exit %d, stderr %r" % (r.returncode, r.stderr[-500:]))
    try:
        os.kill(j, 0)
    except ProcessLookupError:
        fail("the refused dump killed the job")
    r = run("dump", "-t", str(j), "-D", img, "--shell-job")
    if r.returncode != 0:
        fail("dump --shell-job: %r" % r.stderr[-1000:])
    os.waitpid(s, 0)
    r = run("restore", "-D", img, "-d")
    if r.returncode == 0 or "--shell-job" not in r.stderr:
        fail("restore without --shell-job: exit %d, stderr %r" % (r.returncode, r.stderr[-500:]))
    r = run("restore", "-D", img, "-d", "--shell-job")
    if r.returncode == 0 or "terminal" not in r.stderr:
        fail("restore --shell-job without a terminal: exit %d, %r" % (r.returncode, r.stderr[-500:]))

    m2, s2 = pty.openpty()
    os.set_blocking(m2, False)
    name2 = os.ttyname(s2)
    os.close(s1)
    # S2: a shell on T2 running crest restore as its foreground job, then staying (a session
    # leader that exits hangs its terminal up). The child takes the foreground itself before it
    # runs crest, as shells do: were the shell to do it after the fork, crest could already have
    # handed the foreground to the job, and the shell, then in the background, would be stopped
    # by SIGTTOU (and the job lose the foreground).
    shell2 = '''import os, signal, sys, time
c = os.fork()
if c == 0:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.argv[2], sys.argv[2:])
os.setpgid(c, c)
_, st = os.waitpid(c, 0)
with open(sys.argv[1] + "/restore.status", "w") as f:
    f.write(str(st))
time.sleep(60)
'''
    r2 = session_on(name2, [sys.executable, "-c", shell2, d, CREST, "restore", "-D", img, "-d",
                            "--shell-job"])
    if not wait_file(os.path.join(d, "restore.status"), 60):
        fail("crest restore --shell-job did not end")
    time.sleep(0.1)
    st = int(open(os.path.join(d, "restore.status")).read())
    out = b""
    try:
        out = os.read(m2, 65536)
    except OSError:
        pass
    if st != 0:
        os.kill(r2, signal.SIGKILL)
        fail("crest restore --shell-job on %s: status %d: %r" % (name2, st, out[-1500:]))
    fg = struct.unpack("i", fcntl.ioctl(m2, termios.TIOCGPGRP, b"\0" * 4))[0]
    if fg != j:
        fail("the foreground group of %s is %d, not the job's %d" % (name2, fg, j))
    os.kill(j, signal.SIGTERM)
    if not wait_file(tag + ".result"):
        time.sleep(0.2)
        try:
            out = os.read(m2, 65536)
        except OSError:
            out = b""
        fail("the restored job did not answer; its terminal shows %r" % out[-1500:])
    text = open(tag + ".result").read()
    os.kill(r2, signal.SIGKILL)
    os.waitpid(r2, 0)
    if not text.startswith("PASS"):
        fail("the restored job says: " + text)
    tty, sid = text.rsplit(" ", 2)[1:]
    if tty != name2 or int(sid) != r2:
        fail("the restored job is on %s in session %s, expected %s in %d" % (tty, sid, name2, r2))
    print("PASS", flush=True)


main()
