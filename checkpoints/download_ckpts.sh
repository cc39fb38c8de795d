#!/usr/bin/env bash
# Download the SAM 2.1 checkpoints (Apache-2.0) next to this script, with progress,
# and check each file's size so a truncated download is never used.
#
#   checkpoints/download_ckpts.sh            # all four
#   checkpoints/download_ckpts.sh tiny small # some of them
#
# Same files and sizes as live/checkpoints.py (`live fetch sam2 --model X`).
# Set LIVE_CHECKPOINT_DIR to download somewhere else.
set -euo pipefail

BASE_URL="https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
DEST="${LIVE_CHECKPOINT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"

declare -A FILE=(
  [tiny]=sam2.1_hiera_tiny.pt
  [small]=sam2.1_hiera_small.pt
  [base_plus]=sam2.1_hiera_base_plus.pt
  [large]=sam2.1_hiera_large.pt
)
declare -A SIZE=(
  [tiny]=156008466
  [small]=184416285
  [base_plus]=323606802
  [large]=898083611
)

if command -v curl >/dev/null; then
  fetch() { curl -fL --retry 3 --progress-bar -o "$2" "$1"; }
elif command -v wget >/dev/null; then
  fetch() { wget --tries=3 --show-progress -q -O "$2" "$1"; }
else
  echo "error: need curl or wget" >&2
  exit 1
fi

file_size() { stat -c %s "$1" 2>/dev/null || stat -f %z "$1"; }

models=("$@")
[ ${#models[@]} -eq 0 ] && models=(tiny small base_plus large)
mkdir -p "$DEST"
status=0
for m in "${models[@]}"; do
  if [ -z "${FILE[$m]:-}" ]; then
    echo "error: unknown model '$m' (expected: tiny small base_plus large)" >&2
    exit 2
  fi
  name="${FILE[$m]}"; want="${SIZE[$m]}"; out="$DEST/$name"
  if [ -f "$out" ] && [ "$(file_size "$out")" = "$want" ]; then
    echo "$out already present ($want bytes)"
    continue
  fi
  echo "downloading ${BASE_URL}${name} -> $out"
  if ! fetch "${BASE_URL}${name}" "$out.part"; then
    echo "error: download of $name failed" >&2
    rm -f "$out.part"; status=1; continue
  fi
  got="$(file_size "$out.part")"
  if [ "$got" != "$want" ]; then
    echo "error: $name has $got bytes, expected $want; try again" >&2
    rm -f "$out.part"; status=1; continue
  fi
  mv "$out.part" "$out"
  echo "ok: $out ($got bytes)"
done
exit $status
