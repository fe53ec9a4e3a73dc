#!/usr/bin/env bash
# Download the official CINIC-10 archive (~700 MB), check it, unpack it into datasets/cinic-10/,
# and build ece662's uint8 cache.  Resumable: run it again after an interruption.
# Windows (or no curl): python -m ece662.download
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
URL="${CINIC10_URL:-https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz}"
DEST="${CINIC10_DEST:-$HERE}"
mkdir -p "$DEST"
ARCHIVE="$DEST/CINIC-10.tar.gz"
TARGET="$DEST/cinic-10"

if [ ! -d "$TARGET" ]; then
  if [ ! -f "$ARCHIVE" ]; then
    echo "downloading $URL"
    if ! curl -fL --retry 3 -C - -o "$ARCHIVE.part" "$URL"; then
      echo "get_datasets: the download failed (offline?). Run this again to resume, or put the" >&2
      echo "archive at $ARCHIVE yourself, or point ECE662_DATA at data you already have." >&2
      exit 1
    fi
    mv "$ARCHIVE.part" "$ARCHIVE"
  fi
  # check and unpack with the same checks as the Python twin (safe members, all 30 class folders)
  python -c "import sys; from ece662.download import unpack; unpack(sys.argv[1], sys.argv[2])" "$ARCHIVE" "$TARGET"
fi
python -c "import sys; from ece662.download import main; raise SystemExit(main(['--dest', sys.argv[1]]))" "$DEST"
