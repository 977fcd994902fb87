#!/usr/bin/env bash
# The whole test suite, from nothing: installs what is missing, builds and
# installs the extension, starts the m3ter stand-in and a throwaway cluster,
# then runs pg_regress (sql/), pgTAP (test/pgtap/), both again with pg_cron on a
# second cluster that does not preload m3ter (nopreload), the end-to-end outbox tests
# (test/e2e/) and the reliability suite (test/reliability/: faults, crashes,
# hostile input, secrets, load), and prints the reliability summary; then the
# package suite (test/package.sh: builds, installs, runs and purges the Debian
# package in the system's PostgreSQL directories); last, the other majors
# (M3TER_OTHER_MAJORS, default 18, built from Debian's source package by
# test/pg_source.sh): every suite again (the package one builds and runs
# postgresql-<major>-m3ter: test/package_major.sh), and PostgreSQL's own
# regression suite (core) against a server that preloads m3ter.
#
#   test/run.sh                    everything
#   test/run.sh reliability        only the named suites (layers regress pgtap nopreload e2e
#                                  reliability package majors; core on a built major)
#   M3TER_PG_VERSION=18 test/run.sh e2e   the suites on another major
#   test/run.sh test/e2e/60_upgrade.py   only these files of the e2e and reliability suites
#
# Exits non-zero if any test fails.  test/valgrind.sh runs suites with the server under valgrind.
source "$(dirname "$0")/lib.sh"

# package after the others: it installs into and removes from the system's
# PostgreSQL directories; the other majors in runs of their own
suites=${*:-layers regress pgtap nopreload e2e reliability package majors}
M3TER_OTHER_MAJORS=${M3TER_OTHER_MAJORS-18}
# files named on the command line run alone, in their suite
files=""
for a in $suites; do
    case $a in test/e2e/*) suites+=" e2e"; files+=" $a" ;; test/reliability/*) suites+=" reliability"; files+=" $a" ;; esac
done
# the files of suite $1 to run: those named, or all
suite_files() {
    local f picked=""
    for f in $files; do
        if [[ $f == test/$1/* ]]; then picked+=" $f"; fi
    done
    if [ -n "$picked" ]; then echo $picked; else ls test/"$1"/*.py; fi
}
wants() { [[ " $suites " == *" $1 "* ]]; }
# does the e2e suite run test/e2e/$1 (all its files, or $1 named)?
wants_e2e() {
    wants e2e || return 1
    [[ " $files " == *" test/e2e/"* ]] || return 0
    [[ " $files " == *" test/e2e/$1 "* ]]
}
# Beside the main job's packages: pgTAP, pg_cron, pg_prove, openssl; Debian's
# Patroni and etcd, Prometheus and its postgres_exporter only for the tests that
# start them (on loopback; their packages' services stay stopped and disabled)
M3TER_PACKAGES="$M3TER_PACKAGES $M3TER_TEST_PACKAGES"
if wants_e2e 58_patroni.py; then M3TER_PACKAGES+=" patroni etcd-server"; fi
if wants_e2e 80_exporter.py; then M3TER_PACKAGES+=" prometheus prometheus-postgres-exporter"; fi
m3ter_start

passed=0
failed=0
count() { passed=$((passed + $1)); failed=$((failed + $2)); }

# Run a TAP suite with prove and add up its result
tap_suite() {
    local out="$M3TER_TMP/$1.out" tests ok=0 n
    shift
    if "$@" >"$out" 2>&1; then ok=1; fi
    cat "$out"
    tests=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+).*/\1/p' "$out")
    if [ "$ok" = 1 ] && [ "${tests:-0}" -gt 0 ]; then
        count "$tests" 0
    else
        # prove's summary counts each file's failed tests; a file that died counts one at least
        n=$(sed -nE 's/.*Tests: [0-9]+ Failed: ([0-9]+)\)$/\1/p' "$out" | awk '{ s += $1 } END { print s + 0 }')
        [ "${n:-0}" -gt 0 ] || n=1
        count "$(( ${tests:-0} > n ? tests - n : 0 ))" "$n"
    fi
}

# pg_regress on the current cluster, every suite, those that need the stand-in
# included (see REGRESS_STANDIN in the Makefile); $1 names the output file
regress_suite() {
    local out="$M3TER_TMP/$1.out" n
    if make -s PG_CONFIG="$(m3ter_pg_config)" installcheck REGRESS='$(REGRESS_ALL)' >"$out" 2>&1; then
        cat "$out"
        count "$(grep -cE '^(ok|test) ' "$out" || true)" 0
    else
        cat "$out"
        [ -f regression.diffs ] && cat regression.diffs
        n=$(grep -cE 'FAILED' "$out" || true)
        [ "${n:-0}" -gt 0 ] || n=1
        count 0 "$n"
    fi
}

# pgTAP on the current cluster, in a new database m3ter_test; $1 names the output
pgtap_suite() {
    q -c "CREATE DATABASE m3ter_test"
    q -d m3ter_test -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION m3ter" -f test/helpers.sql
    tap_suite "$1" pg_prove -d m3ter_test --ext .sql -r test/pgtap
}

cd "$M3TER_ROOT"
if wants regress; then
    log "pg_regress: the SQL surface and its errors"
    regress_suite regress
fi

if wants layers; then
    log "layers: no file of src/ calls a layer above it or forms a circle"
    tap_suite layers prove --comments -e python3 test/layers.py
fi

if wants pgtap; then
    log "pgTAP: calls against the stand-in"
    pgtap_suite pgtap
fi

# The SQL-level suites again on a second cluster that preloads only pg_cron:
# CREATE EXTENSION, every function, the outbox and m3ter_flush() from pg_cron
if wants nopreload; then
    log "without shared_preload_libraries: pg_regress, pgTAP, pg_cron"
    main_port=$PGPORT
    m3ter_start_cluster "" pg_cron nopreload
    regress_suite regress-nopreload
    pgtap_suite pgtap-nopreload
    q -c "CREATE EXTENSION m3ter" -c "CREATE EXTENSION pg_cron"
    M3TER_DATA_DIR="$M3TER_TMP/nopreload" M3TER_LOG_FILE="$M3TER_TMP/postgres-nopreload.log" \
        tap_suite nopreload-cron prove --comments --timer -e python3 test/nopreload/*.py
    as_pg "$(m3ter_pg_bindir)/pg_ctl" -D "$M3TER_TMP/nopreload" -m fast stop >/dev/null
    PGPORT=$main_port
    export PGPORT
fi

if wants e2e || wants reliability; then
    q -c "CREATE EXTENSION m3ter" -c "CREATE EXTENSION pg_cron"
fi
if wants e2e; then
    log "end-to-end: outbox, worker, pg_cron"
    tap_suite e2e prove --comments --timer -e python3 $(suite_files e2e)
fi
if wants reliability; then
    log "reliability: faults, crashes, hostile input, secrets, load"
    tap_suite reliability prove --comments --timer -e python3 $(suite_files reliability)
    python3 test/reliability_summary.py "$M3TER_TMP/reliability.jsonl"
fi

if wants package; then
    if [ "$M3TER_PG_VERSION" = "$M3TER_PG_DEBIAN_MAJOR" ]; then
        log "package: the Debian package built, installed, run and purged; META.json"
        tap_suite package prove --comments -e bash test/package.sh
    else
        log "package: postgresql-$M3TER_PG_VERSION-m3ter built and run"
        tap_suite package prove --comments -e bash test/package_major.sh
    fi
fi

# PostgreSQL's own regression suite, from the built source tree of this major,
# against the cluster: m3ter preloaded, the extension installed, its worker running
if wants core; then
    log "PostgreSQL $M3TER_PG_VERSION's own regression suite with m3ter preloaded"
    tree=$(m3ter_pg_source_tree "$M3TER_PG_VERSION")
    q -c "CREATE EXTENSION IF NOT EXISTS m3ter" -c "ALTER SYSTEM RESET ALL" -c "SELECT pg_reload_conf()"
    out="$M3TER_TMP/core.out"
    chown -R postgres: "$tree/src/test/regress" 2>/dev/null || true
    as_pg make -s -C "$tree/src/test/regress" installcheck-parallel PGHOST="$PGHOST" \
        PGPORT="$PGPORT" PGUSER=postgres >"$out" 2>&1
    cat "$out"
    state=$(q -Atc "SELECT state FROM m3ter_worker_status() WHERE running")
    echo "# the m3ter worker ran through it: ${state:-not running}"
    [[ "$state" == idle || "$state" == delivering ]] || count 0 1
    [ -f "$tree/src/test/regress/regression.diffs" ] && head -100 "$tree/src/test/regress/regression.diffs"
    count "$(grep -cE '^ok ' "$out" || true)" "$(grep -cE '^not ok ' "$out" || true)"
    grep -qE '^ok ' "$out" || count 0 1
fi

# The other majors, each in a run of their own, core included: every suite, or
# those named after a colon (17:regress,pgtap names suites and test files)
if wants majors; then
    for spec in $M3TER_OTHER_MAJORS; do
        major=${spec%%:*}
        [ "$major" = "$M3TER_PG_VERSION" ] && continue
        major_suites="regress pgtap nopreload e2e reliability core package"
        [[ $spec == *:* ]] && major_suites=${spec#*:} && major_suites=${major_suites//,/ }
        log "PostgreSQL $major: $major_suites"
        out="$M3TER_TMP/major-$major.out"
        # shellcheck disable=SC2086
        env -u M3TER_PG_ROOT M3TER_PG_VERSION="$major" M3TER_OTHER_MAJORS= \
            "$M3TER_ROOT/test/run.sh" $major_suites 2>&1 | tee "$out" || true   # counted below
        n=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$out" | tail -1)
        # shellcheck disable=SC2086
        if [ -n "$n" ]; then count $n; else count 0 1; fi
    done
fi

if [ -n "${M3TER_VALGRIND:-}" ]; then
    log "valgrind: reports raised in or just under the extension's code"
    n=$(python3 test/valgrind_reports.py "$M3TER_TMP"/valgrind.*)
    count 0 "$n"
fi

[ "$passed" -gt 0 ] || count 0 1
if [ "$failed" -ne 0 ]; then
    log "server log tail:"
    tail -50 "$M3TER_TMP/postgres.log" >&2
    # last, where a truncated log still shows them: what failed, suite by suite
    echo "==> failed:"
    for f in "$M3TER_TMP"/*.out; do
        { grep -hE '^(not ok|test .*FAILED)|^test/.*\(Wstat|^ +Failed tests?:' "$f" || true; } |
            sed "s|^|FAILED $(basename "$f" .out): |"
        grep -h '^FAILED ' "$f" || true
    done | head -40 || true
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
