#!/usr/bin/env bash
# A PNG of a page in headless Chromium (Debian's `chromium`), for the README's figures:
#   scripts/screenshot.sh file:///abs/out/quickstart/report.html docs/quickstart-report.png
#   tensorboard --logdir out/quickstart --port 6006 &
#   scripts/screenshot.sh "http://localhost:6006/?darkMode=false#timeseries" docs/tensorboard.png
set -euo pipefail
url=$1 out=$2 size=${3:-1400,1000}
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size="$size" \
  --virtual-time-budget=20000 --screenshot="$out" "$url" 2>/dev/null
rm -rf "$profile"
echo "$out"
