#!/usr/bin/env bash
# The two tiers of `make test`, side by side: the whole suite on PostgreSQL $1 (its output
# shown as it runs) and the version-sensitive files on $2 (its output shown once it is done).
# The tests wait on servers more than they compute, so the tiers overlap well on 2 cores.
# Usage: run-tests.sh PYTEST FULL NEW NEW_TESTS...
set -uo pipefail
PYTEST="$1"; FULL="$2"; NEW="$3"; shift 3
log="$(mktemp -t pgcleave-test-pg$NEW.XXXXXX.log)"
echo "=== make test: version-sensitive tests on PostgreSQL $NEW (in the background: $log) ==="
PGCLEAVE_TEST_PG=$NEW $PYTEST -m "not nodb" "$@" >"$log" 2>&1 &
bg=$!
echo "=== make test: the whole suite on PostgreSQL $FULL ==="
PGCLEAVE_TEST_PG=$FULL $PYTEST; full=$?
wait "$bg"; new=$?
echo "=== make test: version-sensitive tests on PostgreSQL $NEW ==="
cat "$log"
rm -f "$log"
echo "=== make test: PostgreSQL $FULL exit $full, PostgreSQL $NEW exit $new ==="
[ "$full" -eq 0 ] && [ "$new" -eq 0 ]
