#!/usr/bin/env bash
# Make sure a headless browser is present for the HTML report's test (tests/test_report.py opens
# the page in it): Debian's `chromium`. Installs it with apt-get when missing. Where there is no
# apt-get it says so loudly and exits 0: the report test then FAILS, naming this script, rather
# than passing without having looked at the page.
# Usage: ensure-chromium.sh
set -euo pipefail
find_browser() {
  local b
  for b in "${PGCLEAVE_CHROMIUM:-}" chromium chromium-browser; do
    [ -n "$b" ] && command -v "$b" >/dev/null 2>&1 && { command -v "$b"; return 0; }
  done
  return 1
}
if b="$(find_browser)"; then
  echo "Headless browser: $b ($("$b" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "!!! No chromium and no apt-get here: tests/test_report.py WILL FAIL." >&2
  echo "!!! Install Chromium by hand, or set PGCLEAVE_CHROMIUM to a Chromium binary." >&2
  exit 0
fi
echo "Installing Debian's chromium (the HTML report's test opens the page in it)." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
b="$(find_browser)" || { echo "chromium still not found after apt-get install" >&2; exit 1; }
echo "Headless browser: $b ($("$b" --version 2>/dev/null || echo 'version unknown'))"
