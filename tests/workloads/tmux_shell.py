#!/usr/bin/python3
# A real terminal program: Debian's tmux, its server run in the foreground (tmux -D) as a child
# of this script, with a shell (sh) in a pane: the server holds the pty's master, the shell leads
# its own session with the slave as controlling terminal (and /dev/tty open, as dash keeps it)
# and runs `cat`, the terminal's foreground process group. Same protocol as the C workloads (workload.h): DIR as
# the argument, ready byte on fd 3, SIGTERM asks for the check, one verdict line on stdout.
#
# Check, from outside the pane, through tmux's own client on the server's socket: the pane's
# foreground job is still cat (tmux finds it through the terminal's foreground process group); a
# line typed with send-keys reaches cat through the terminal and cat's copy reaches tmux; ^C sent
# with send-keys reaches the foreground group and ends cat; a command typed then runs in the same
# shell and its output reaches tmux (capture-pane shows "RESULT 42" and the tty the shell sees,
# the pane's tty as tmux knows it); the pane's shell still leads its session with the terminal
# as its controlling terminal; the pane keeps its size; kill-server ends the server cleanly.
import os
import signal
import subprocess
import sys
import time

failures = []
term = False


def note(msg):
    os.write(2, ("# tmux_shell: %s\n" % msg).encode())


def expect(cond, why):
    if not cond:
        failures.append(why)
        note("check failed: " + why)
    return cond


def proc_pid(pid):
    """The pid /proc knows `pid` by (the tree may run in a pid namespace of its own while /proc is
    the host's): the "Pid:" line of a pidfd's fdinfo."""
    fd = os.pidfd_open(pid)
    try:
        with open("/proc/self/fdinfo/%d" % fd) as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    return pid


def on_term(sig, frame):
    global term
    term = True


def main():
    d = sys.argv[1]
    os.closerange(4, 1024)
    try:
        os.setsid()
    except OSError:
        pass
    signal.signal(signal.SIGTERM, on_term)
    sock = os.path.join(d, "tmux.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env["TERM"] = "xterm"
    env["ENV"] = ""  # no startup file for the pane's sh
    env["PS1"] = "$ "
    devnull = subprocess.DEVNULL
    server = subprocess.Popen(["/usr/bin/tmux", "-D", "-S", sock, "-f", "/dev/null"],
                              stdin=devnull, stdout=devnull, stderr=devnull, env=env, cwd=d)

    def tmux(*args, check=True):
        r = subprocess.run(["/usr/bin/tmux", "-S", sock] + list(args), stdin=devnull,
                           capture_output=True, text=True, env=env, timeout=10, cwd=d)
        if check and r.returncode != 0:
            raise RuntimeError("tmux %s: %s" % (" ".join(args), r.stderr.strip()))
        return r.stdout

    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.02)
    tmux("new-session", "-d", "-x", "100", "-y", "30", "-c", d, "sh")
    # The pane's foreground job: cat, reading the terminal (its own process group).
    tmux("send-keys", "cat", "Enter")

    def current():
        return tmux("display", "-p", "#{pane_current_command}").strip()

    def wait_for(pred, secs=5):
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs:
            if pred():
                return True
            time.sleep(0.05)
        return pred()

    if not wait_for(lambda: current() == "cat", 10):
        print("FAIL: cat did not start in the pane (%r)" % current(), flush=True)
        sys.exit(1)
    os.write(3, b"R")
    os.close(3)
    while not term:
        time.sleep(0.2)

    try:
        # tmux finds the foreground job through the terminal's foreground process group, and its
        # name in /proc: not when the tree runs in a pid namespace of its own while /proc is the
        # host's (then "RESULT 42" below shows that ^C ended cat: cat would have copied the line).
        same_proc = proc_pid(os.getpid()) == os.getpid()
        expect(not same_proc or current() == "cat",
               "the pane's foreground job is %r, not cat" % current())
        pane = tmux("display", "-p", "#{pane_tty} #{pane_pid} #{pane_width}x#{pane_height}").split()
        expect(len(pane) == 3 and pane[2] == "100x30", "pane: %s" % pane)
        # A line typed into the terminal reaches cat, and cat's output reaches tmux (the line
        # twice: the terminal's echo, then cat's copy).
        tmux("send-keys", "typed-after-restore", "Enter")
        expect(wait_for(lambda: tmux("capture-pane", "-p").count("typed-after-restore") >= 2),
               "cat's copy of a typed line did not reach the pane: %r" % tmux("capture-pane", "-p")[-300:])
        # ^C through the terminal: SIGINT to the foreground group ends cat, the shell is back.
        tmux("send-keys", "C-c")
        expect(not same_proc or wait_for(lambda: current() == "sh"),
               "^C did not end cat (foreground %r)" % current())
        # Type the command only once the shell shows its prompt again: a line typed while cat is
        # still dying may be read by cat or dropped by the shell (the same happens at a real
        # keyboard without crest), and in a pid namespace of its own `current()` cannot tell.
        def prompt_back():
            lines = [l for l in tmux("capture-pane", "-p").split("\n") if l.strip()]
            return bool(lines) and lines[-1].strip() in ("$", "#")
        expect(wait_for(prompt_back), "no prompt after ^C: %r" % tmux("capture-pane", "-p")[-300:])
        tmux("send-keys", "echo RESULT $((6*7)) $(tty)", "Enter")
        want = "RESULT 42 %s" % pane[0]
        expect(wait_for(lambda: want in tmux("capture-pane", "-p")),
               "the pane does not show %r: %r" % (want, tmux("capture-pane", "-p")[-300:]))
        pid = proc_pid(int(pane[1]))
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        sid, tty_nr = int(fields[3]), int(fields[4])
        rdev = os.stat(pane[0]).st_rdev
        want_nr = (os.minor(rdev) & 0xff) | (os.major(rdev) << 8) | ((os.minor(rdev) & ~0xff) << 12)
        expect(sid == pid, "the pane's shell %d is in session %d" % (pid, sid))
        expect(tty_nr == want_nr, "the pane's shell has tty_nr %d, its tty is %d" % (tty_nr, want_nr))
    except Exception as e:  # noqa: BLE001 - any error is a failure of the check
        expect(False, "check raised %r" % e)
    tmux("kill-server", check=False)
    try:
        rc = server.wait(timeout=10)
        expect(rc == 0, "the tmux server ended with %d" % rc)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        expect(False, "the tmux server did not end after kill-server")
    if failures:
        print("FAIL: " + failures[0], flush=True)
        sys.exit(1)
    print("PASS", flush=True)
    sys.exit(0)


main()
