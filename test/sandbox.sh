#!/usr/bin/env bash
# A sandbox to try the extension by hand: a throwaway PostgreSQL cluster that
# preloads m3ter, and the local m3ter stand-in, left running in /tmp/m3ter-sandbox
# until you stop them.  The credentials are not set: the README's "Getting started"
# sets them, word for word, from the credentials file written here.
#
#   test/sandbox.sh start     installs what is missing, builds, starts both, prints the psql line
#   test/sandbox.sh stop      stops both and removes /tmp/m3ter-sandbox
#
# It changes nothing outside /tmp/m3ter-sandbox and the private installation (.pgroot);
# M3TER_SANDBOX_DIR names another directory.
source "$(dirname "$0")/lib.sh"

SANDBOX=${M3TER_SANDBOX_DIR:-/tmp/m3ter-sandbox}

sandbox_stop() {
    if [ -f "$SANDBOX/data/postmaster.pid" ]; then
        as_pg "$(m3ter_pg_bindir)/pg_ctl" -D "$SANDBOX/data" -m fast stop >/dev/null 2>&1 || true
    fi
    pkill -f "m3ter_standin.py --port-file $SANDBOX/" 2>/dev/null || true
    for _ in $(seq 50); do
        pgrep -f "m3ter_standin.py --port-file $SANDBOX/" >/dev/null || break
        sleep 0.1
    done
    rm -rf "$SANDBOX"
}

case "${1:-}" in
start)
    if [ -f "$SANDBOX/data/postmaster.pid" ]; then
        echo "a sandbox is running in $SANDBOX: test/sandbox.sh stop first" >&2
        exit 1
    fi
    sandbox_stop
    # Getting started schedules CALL m3ter.flush() with pg_cron
    M3TER_PACKAGES="$M3TER_PACKAGES $M3TER_PG_CRON_PACKAGES" m3ter_install_deps
    m3ter_make_pg_root
    m3ter_build
    M3TER_TMP=$SANDBOX
    export M3TER_TMP
    mkdir -p "$M3TER_TMP"
    chmod 755 "$M3TER_TMP"
    # the stand-in outlives this script: a session of its own
    M3TER_STANDIN_DETACH=1 m3ter_start_standin
    M3TER_EVERY_DATABASE=1 M3TER_NO_CREDENTIALS=1 m3ter_start_cluster "m3ter.worker_idle_naptime = '1s'"
    # what an m3ter Service User's credentials file looks like (the stand-in's)
    as_pg tee "$SANDBOX/m3ter.credentials" >/dev/null <<EOF
# m3ter Service User
access_key_id = '$M3TER_ACCESS_KEY_ID'
api_secret = '$M3TER_API_SECRET'
EOF
    as_pg chmod 0600 "$SANDBOX/m3ter.credentials"
    # the roles that Getting started grants to, as an application's would be
    q -c "CREATE ROLE app; CREATE ROLE ops; CREATE ROLE reporting" >/dev/null
    where=""
    [ "$SANDBOX" = /tmp/m3ter-sandbox ] ||
        where="
(this sandbox is in $SANDBOX: read /tmp/m3ter-sandbox there as $SANDBOX)"
    cat <<EOF

The sandbox is running: PostgreSQL $M3TER_PG_VERSION with m3ter preloaded, and the m3ter stand-in
at $STANDIN_URL (Organization $M3TER_ORG_ID), both on this machine only.

Connect, then follow the README's "Getting started" word for word:$where

    $(m3ter_pg_bindir)/psql "host=$SANDBOX port=$PGPORT user=postgres dbname=postgres"

What the stand-in received:   curl -s $STANDIN_URL/_control/summary
Stop both and remove them:    test/sandbox.sh stop
EOF
    ;;
stop)
    sandbox_stop
    echo "the sandbox is stopped and $SANDBOX removed"
    ;;
*)
    echo "usage: test/sandbox.sh start|stop" >&2
    exit 2
    ;;
esac
