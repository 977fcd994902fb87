#!/usr/bin/env bash
# The whole test suite, from nothing: installs what is missing, builds and
# installs the extension, starts the m3ter stand-in and a throwaway cluster,
# then runs pg_regress (sql/), pgTAP (test/pgtap/) and the end-to-end outbox
# tests (test/e2e/).  Exits non-zero if any test fails.
source "$(dirname "$0")/lib.sh"

m3ter_start

passed=0
failed=0
count() { passed=$((passed + $1)); failed=$((failed + $2)); }
# how many tests a TAP run failed (at least 1: it is only asked when the run failed)
tap_failures() {
    local n
    n=$(grep -cE '^not ok' "$1" || true)
    [ "${n:-0}" -gt 0 ] && echo "$n" || echo 1
}

log "pg_regress: the SQL surface and its errors"
cd "$M3TER_ROOT"
if make -s PG_CONFIG="$(m3ter_pg_config)" installcheck >"$M3TER_TMP/regress.out" 2>&1; then
    n=$(grep -cE '^(ok|test) ' "$M3TER_TMP/regress.out" || true)
    count "$n" 0
    cat "$M3TER_TMP/regress.out"
else
    cat "$M3TER_TMP/regress.out"
    [ -f regression.diffs ] && cat regression.diffs
    n_fail=$(grep -cE 'FAILED' "$M3TER_TMP/regress.out" || true)
    [ "${n_fail:-0}" -gt 0 ] || n_fail=1
    count 0 "$n_fail"
fi

log "pgTAP: calls against the stand-in"
q -c "CREATE DATABASE m3ter_test"
q -d m3ter_test -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION m3ter" -f test/helpers.sql
if pg_prove -d m3ter_test --ext .sql -r test/pgtap >"$M3TER_TMP/pgtap.out" 2>&1; then ok=1; else ok=0; fi
cat "$M3TER_TMP/pgtap.out"
tests=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+).*/\1/p' "$M3TER_TMP/pgtap.out")
if [ "$ok" = 1 ] && [ "${tests:-0}" -gt 0 ]; then count "$tests" 0; else count 0 "$(tap_failures "$M3TER_TMP/pgtap.out")"; fi

log "end-to-end: outbox, worker, pg_cron, crashes"
q -c "CREATE EXTENSION m3ter" -c "CREATE EXTENSION pg_cron"
if prove -e python3 test/e2e/*.py >"$M3TER_TMP/e2e.out" 2>&1; then ok=1; else ok=0; fi
cat "$M3TER_TMP/e2e.out"
tests=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+).*/\1/p' "$M3TER_TMP/e2e.out")
if [ "$ok" = 1 ] && [ "${tests:-0}" -gt 0 ]; then count "$tests" 0; else count 0 "$(tap_failures "$M3TER_TMP/e2e.out")"; fi

[ "$passed" -gt 0 ] || count 0 1
if [ "$failed" -ne 0 ]; then
    log "server log tail:"
    tail -50 "$M3TER_TMP/postgres.log" >&2
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
