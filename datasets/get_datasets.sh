#!/usr/bin/env bash
# Download the official CINIC-10 archive (~700 MB), check it, unpack it into datasets/cinic-10/,
# and build ece662's uint8 cache.  Resumable: run it again after an interruption.
# Windows (or no curl): python -m ece662.data.download
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
URL="${CINIC10_URL:-https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz}"
DEST="${CINIC10_DEST:-$HERE}"
mkdir -p "$DEST"
ARCHIVE="$DEST/CINIC-10.tar.gz"
TARGET="$DEST/cinic-10"
# this repository's ece662, also when it is not installed
export PYTHONPATH="$(dirname "$HERE")${PYTHONPATH:+:$PYTHONPATH}"

if [ ! -d "$TARGET" ] && [ ! -f "$ARCHIVE" ]; then
  echo "downloading $URL"
  if ! curl -fL --retry 3 -C - -o "$ARCHIVE.part" "$URL"; then
    echo "get_datasets: the download failed (offline?). Run this again to resume, or put the" >&2
    echo "archive at $ARCHIVE yourself, or point ECE662_DATA at data you already have." >&2
    exit 1
  fi
  mv "$ARCHIVE.part" "$ARCHIVE"
fi
# check and unpack (the Python twin's checks: safe members, all 30 class folders), then build the
# cache; a refused archive is one line on stderr and exit status 1
exec python -m ece662.data.download --dest "$DEST"
