# The program the snapshot tests take snapshots of with crest snapshot (cron's command line) and
# restore: a real python3 process, nothing of crest's inside it.
#
#   python3 snapshot_job.py DIR MIB
#
# Holds MIB MiB in a bytearray of 1 MiB slices. Step k (every 50 ms) rewrites slice k % MIB with
# the byte k & 255, then writes k to DIR/progress (a new file each time, renamed in place). When
# DIR/check exists it checks its own memory against its counter from inside — every slice must
# hold the byte of the last step that wrote it, all through — writes "PASS step=K" or
# "FAIL step=K: why" to DIR/verdict and removes DIR/check. So a restored copy proves it came back
# with its counter and its memory in step with each other, at the step it was snapshotted.
import os
import sys
import time

out = sys.argv[1]
mib = int(sys.argv[2])
SLICE = 1 << 20
data = bytearray(mib * SLICE)
step = 0


def put(name, text):
    tmp = os.path.join(out, "." + name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(out, name))


def verify():
    for j in range(mib):
        # The last step <= step that wrote slice j (0 when none has: the slice is still zero).
        last = step - ((step - j) % mib)
        want = bytes([last & 255 if last > 0 else 0])
        piece = data[j * SLICE:(j + 1) * SLICE]
        if piece.count(want) != SLICE:
            return "FAIL step=%d: slice %d does not hold byte %d throughout" % (step, j, want[0])
    return "PASS step=%d" % step


put("pid", str(os.getpid()))
while True:
    step += 1
    j = step % mib
    data[j * SLICE:(j + 1) * SLICE] = bytes([step & 255]) * SLICE
    put("progress", str(step))
    if os.path.exists(os.path.join(out, "check")):
        put("verdict", verify())
        os.unlink(os.path.join(out, "check"))
    time.sleep(0.05)
