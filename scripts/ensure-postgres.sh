#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl) and contrib (postgres_fdw, dblink) are
# present. Looks where pgcleave looks: $PGCLEAVE_PG_BIN, `pg_config --bindir`, then
# /usr/lib/postgresql/*/bin. Installs Debian's postgresql packages when nothing is found.
set -euo pipefail

has_server() {
  local dir
  for dir in "${PGCLEAVE_PG_BIN:-}" "$(pg_config --bindir 2>/dev/null || true)" \
             $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -n "$dir" ] || continue
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      local share
      share="$("$dir/pg_config" --sharedir 2>/dev/null || echo "$(dirname "$dir" | sed 's#/lib/#/share/#')")"
      if [ -f "$share/extension/postgres_fdw.control" ] && [ -f "$share/extension/dblink.control" ]; then
        echo "PostgreSQL server binaries: $dir"
        return 0
      fi
    fi
  done
  return 1
}

if has_server; then exit 0; fi

echo "No PostgreSQL server binaries with contrib found; installing Debian's postgresql packages." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q postgresql postgresql-contrib
has_server || { echo "PostgreSQL installed but initdb/pg_ctl or contrib still not found" >&2; exit 1; }
