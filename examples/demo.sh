#!/usr/bin/env bash
# The README's main job: what crest does today, end to end, with local-directory storage and no
# services.
#
# Today crest has its image store and the first CLI verbs, so the demo writes a chain of
# checkpoints of a synthetic 64 MiB job (one full, two incremental), then describes and verifies
# it with `crest show` and `crest verify`, and reads it with stock HDF5 tools. When the checkpoint
# engine lands, this script becomes: run a solver under crest, kill it, watch it come back.
#
#   examples/demo.sh [IMAGES_DIR]
#
# IMAGES_DIR defaults to ./demo-images. Binaries come from $CREST_BIN_DIR, else <repo>/build/bin
# (built by .ci/setup).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CREST_BIN_DIR:-$root/build/bin}"
images="${1:-demo-images}"

die() { echo "demo: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

for tool in crest crest-demo-images; do
  [[ -x "$bin/$tool" ]] || die "$bin/$tool is missing: run .ci/setup first"
done

# Start from an empty images directory, but never delete anything that is not a crest image.
if [[ -e "$images" ]]; then
  [[ -d "$images" ]] || die "$images exists and is not a directory"
  for f in "$images"/* "$images"/.[!.]*; do
    [[ -e "$f" || -L "$f" ]] || continue
    case "${f##*/}" in
      ckpt-*.h5 | ckpt-*.h5.tmp | latest | .latest.tmp | .lock) rm -f -- "$f" ;;
      *) die "$images holds ${f##*/}, which is not part of an images directory; pick another directory" ;;
    esac
  done
fi

step "write 3 checkpoints (1 full, 2 incremental) of a synthetic 64 MiB job into $images"
"$bin/crest-demo-images" "$images" --mib 64 --checkpoints 3

step "crest show $images   (every checkpoint, then the newest in detail)"
"$bin/crest" show "$images"

step "crest verify $images   (every chunk checksum of the newest chain)"
"$bin/crest" verify "$images"

if command -v h5ls >/dev/null; then
  step "h5ls -r $images/latest   (the same file, read by stock HDF5 tools)"
  h5ls -r "$images/latest"
fi

# Debian's python3 has h5py (python3-h5py); a python3 earlier on PATH (pyenv, a venv) may not.
python=/usr/bin/python3
if [[ -x $python ]] && $python -c 'import h5py' 2>/dev/null; then
  step "h5py reads the first page of the full checkpoint (LZ4 filter from hdf5-filter-plugin)"
  HDF5_PLUGIN_PATH="${HDF5_PLUGIN_PATH:-/usr/lib/x86_64-linux-gnu/hdf5/serial/plugins}" \
    $python - "$images/ckpt-000001.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    index = f["pages/index"][:]
    run = index[(index["kind"] == 0) & (index["depth"] == 0)][0]  # first run stored in this file
    page = f["pages/data"][run["pos"]]
    print(f"owner {run['owner']} address {run['addr']:#x}: first bytes {bytes(page[:8]).hex()}, "
          f"{np.count_nonzero(page)} of 4096 bytes non-zero")
PY
fi

step "done: images in $images"
