#!/usr/bin/python3
# Real programs' file locks: an SQLite database in an exclusive transaction (SQLite takes POSIX
# record locks on the database file) and an HDF5 file open for writing through h5py (HDF5 takes
# a flock() on it). Nothing here is crest's: the locks are taken by the sqlite3 and HDF5
# libraries as any job's would be. Same protocol as the C workloads (workload.h): DIR as the
# argument, ready byte on fd 3, SIGTERM asks for the check, one verdict line on stdout.
#
# Check, after any number of checkpoints and restores: a fresh process (started at check time,
# not part of any checkpoint) finds the database locked and the HDF5 file locked; once this
# process commits and closes, the same contender reads both and sees the data.
import os
import signal
import sqlite3
import subprocess
import sys

import h5py

DIR = sys.argv[1]
DB = os.path.join(DIR, "jobs.sqlite")
H5 = os.path.join(DIR, "results.h5")
term = False
failures = []


def on_term(sig, frame):
    global term
    term = True


def expect(cond, why):
    if not cond:
        failures.append(why)
        os.write(2, ("# py_locks: check failed: %s\n" % why).encode())


def contender(code):
    """Runs `code` in a fresh Python process; returns (exit code, its stderr)."""
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stderr.strip().splitlines()[-1:] if r.stderr else []


READ_DB = ("import sqlite3, sys\n"
           "db = sqlite3.connect(%r, timeout=0.2)\n"
           "try:\n"
           "    print(db.execute('select x from t').fetchall())\n"
           "except sqlite3.OperationalError as e:\n"
           "    sys.exit('locked: %%s' %% e)\n" % DB)
READ_H5 = ("import h5py, sys\n"
           "try:\n"
           "    f = h5py.File(%r, 'r')\n"
           "except OSError as e:\n"
           "    sys.exit('locked: %%s' %% e)\n"
           "assert list(f['x'][:]) == list(range(10)), 'data'\n" % H5)

os.setsid()
signal.signal(signal.SIGTERM, on_term)

db = sqlite3.connect(DB, isolation_level=None)
db.execute("create table t(x)")
db.execute("insert into t values (1)")
db.execute("BEGIN EXCLUSIVE")  # the database is locked for every other connection
db.execute("insert into t values (42)")
h5 = h5py.File(H5, "w")  # HDF5 locks the file for this writer
h5["x"] = list(range(10))
h5.flush()

os.write(3, b"R")
os.close(3)
while not term:
    signal.pause()

code, err = contender(READ_DB)
expect(code != 0 and err and "locked" in err[-1], "another process could read the database "
       "while this one held an exclusive transaction (exit %s, %s)" % (code, err))
code, err = contender(READ_H5)
expect(code != 0 and err and "locked" in err[-1], "another process could open the HDF5 file "
       "while this one had it open for writing (exit %s, %s)" % (code, err))

db.execute("COMMIT")
h5.close()
code, err = contender(READ_DB)
expect(code == 0, "after COMMIT the database still could not be read (%s)" % err)
code, err = contender(READ_H5)
expect(code == 0, "after close the HDF5 file still could not be read (%s)" % err)
rows = [r[0] for r in sqlite3.connect(DB).execute("select x from t order by x")]
expect(rows == [1, 42], "the database holds %s, expected [1, 42]" % rows)

print("PASS" if not failures else "FAIL: " + failures[0], flush=True)
sys.exit(0 if not failures else 1)
