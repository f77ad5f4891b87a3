#!/usr/bin/env python3
"""A job whose work takes wall-clock time rather than CPU (so that tests against Slurm's time
limits do not depend on the machine's load): STEPS steps, each a deterministic bit of hashing
followed by DELAY seconds of sleep, with one progress line per step and the answer at the end.

    steps.py STEPS DELAY

The answer depends only on STEPS: a run checkpointed and restored any number of times prints
the same one as a run with DELAY 0."""
import hashlib
import sys
import time

steps, delay = int(sys.argv[1]), float(sys.argv[2])
state = hashlib.sha256(b"crest").digest()
print(f"steps: {steps}", flush=True)
for i in range(1, steps + 1):
    for _ in range(5000):
        state = hashlib.sha256(state + i.to_bytes(4, "little")).digest()
    print(f"step {i}/{steps} {state.hex()[:16]}", flush=True)
    time.sleep(delay)
print(f"answer: {state.hex()}", flush=True)
