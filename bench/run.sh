#!/usr/bin/env bash
# The benchmarks, from nothing: installs what is missing, builds, starts a
# throwaway cluster and the m3ter stand-in (in its fast mode) and runs the named
# parts (all of them by default), each printing its table and writing JSON to
# bench/results/:
#
#   bench/run.sh                 suite network dbcost reconcile
#   bench/run.sh suite           bench/bench.py: drains, fullness, INSERT cost, latency, limits
#   bench/run.sh network         bench/network.py: latencies x burst and drain under m3ter's
#                                limits, the Python relay, two clusters in one organization,
#                                token requests (starts a second cluster for it)
#   bench/run.sh dbcost          bench/dbcost.py: the database side at two table sizes
#   bench/run.sh insert          bench/insert.py: pgbench's single-row INSERTs into the outbox
#                                (worker on) against a plain table with the same columns
#   bench/run.sh reconcile       bench/reconcile.py: m3ter_reconcile() over a month of a
#                                million rows (the stand-in stores them: not its fast mode)
#
# Sizes are environment variables, see each script's header; BENCH_PG_CONF adds
# postgresql.conf lines to the clusters.
source "$(dirname "$0")/../test/lib.sh"
parts=${*:-suite network dbcost reconcile}
M3TER_PACKAGES="$M3TER_PACKAGES $M3TER_PG_CRON_PACKAGES python3-psycopg2"
# BENCH_PG_CONF: more postgresql.conf lines (later lines win), e.g. shared_buffers = 2GB
PG_CONF="shared_buffers = 512MB
max_wal_size = 4GB
checkpoint_timeout = 30min
${BENCH_PG_CONF:-}"
m3ter_start "$PG_CONF"
export M3TER_ORG_ID M3TER_ACCESS_KEY_ID M3TER_API_SECRET
q -c "CREATE EXTENSION m3ter"
wants() { [[ " $parts " == *" $1 "* ]]; }

# A second throwaway cluster for the two-clusters case: its own directory, the
# same stand-in on a port of its own (a second source address for m3ter's limits)
start_second_cluster() {
    local main_tmp=$M3TER_TMP main_port=$PGPORT main_url=$STANDIN_URL port
    port=$(standin POST /_control/listen '{}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["port"])')
    M3TER_TMP=$main_tmp/second
    STANDIN_URL=http://127.0.0.1:$port
    m3ter_start_cluster "shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min"
    q -c "CREATE EXTENSION m3ter"
    export BENCH_SECOND_PGHOST=$PGHOST BENCH_SECOND_PGPORT=$PGPORT BENCH_SECOND_STANDIN_URL=$STANDIN_URL
    M3TER_TMP=$main_tmp PGHOST=$main_tmp PGPORT=$main_port STANDIN_URL=$main_url
    export M3TER_TMP PGHOST PGPORT STANDIN_URL
}
stop_second_cluster() {
    [ -d "$M3TER_TMP/second/data" ] &&
        as_pg "$(m3ter_pg_bindir)/pg_ctl" -D "$M3TER_TMP/second/data" -m immediate stop >/dev/null 2>&1
    m3ter_cleanup
}
trap stop_second_cluster EXIT

if wants suite; then
    python3 "$M3TER_ROOT/bench/bench.py"
fi
if wants network; then
    start_second_cluster
    python3 "$M3TER_ROOT/bench/network.py"
fi
if wants dbcost; then
    python3 "$M3TER_ROOT/bench/dbcost.py"
fi
if wants insert; then
    python3 "$M3TER_ROOT/bench/insert.py"
fi
if wants reconcile; then
    python3 "$M3TER_ROOT/bench/reconcile.py"
fi
