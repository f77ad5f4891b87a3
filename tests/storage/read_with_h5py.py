#!/usr/bin/env python3
"""Reads a crest image with stock h5py (and the system LZ4 filter plugin, id 32004; the shuffle
filter is HDF5's own). /pages/data rows are a page each, as 512 little-endian u64.

  read_with_h5py.py FILE EXPECTED   compare rows of /pages/data with EXPECTED, a file of records
                                    (little-endian u64 row, then the row's 4096 bytes)
  read_with_h5py.py --write FILE    write /lz4 with the plugin's own LZ4 encoder (small blocks,
                                    so several per chunk) for crest to decode: bytes i*7 % 251

Exits 0 when everything matches; prints what differs otherwise.
"""
import sys

import h5py
import numpy as np

PAGE = 4096


def check(path, expected_path):
    with open(expected_path, "rb") as f:
        blob = f.read()
    record = 8 + PAGE
    if len(blob) % record:
        print("expected file has a partial record")
        return 1
    with h5py.File(path, "r") as f:
        data = f["pages/data"]
        filters = data._filters
        if "32004" not in filters and 32004 not in filters:
            print("no LZ4 filter (32004) on /pages/data: %r" % (filters,))
            return 1
        if not data.shuffle:
            print("no shuffle filter on /pages/data: %r" % (filters,))
            return 1
        if data.shape[1] * data.dtype.itemsize != PAGE:
            print("unexpected shape %r of %r" % (data.shape, data.dtype))
            return 1
        if int(f.attrs["complete"]) != 1 or f.attrs["format"] != "crest-checkpoint":
            print("root attributes wrong")
            return 1
        bad = 0
        n = len(blob) // record
        for i in range(n):
            off = i * record
            row = int.from_bytes(blob[off:off + 8], "little")
            want = np.frombuffer(blob[off + 8:off + record], dtype=np.uint8)
            got = data[row].astype("<u8").view(np.uint8)
            if not np.array_equal(got, want):
                bad += 1
                if bad <= 5:
                    print("row %d differs" % row)
        print("%d rows compared, %d differ" % (n, bad))
        return 1 if bad else 0


def write(path):
    data = (np.arange(3 * 256 * PAGE, dtype=np.uint64) * 7 % 251).astype(np.uint8)
    data = data.reshape(3 * 256, PAGE)
    with h5py.File(path, "w") as f:
        f.create_dataset("lz4", data=data, chunks=(256, PAGE), compression=32004,
                         compression_opts=(65536,))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        sys.exit(write(sys.argv[2]))
    if len(sys.argv) == 3:
        sys.exit(check(sys.argv[1], sys.argv[2]))
    print(__doc__)
    sys.exit(2)
