# test/lib.sh -- shared by test/run.sh, test/demo.sh and bench/run.sh.
#
# Installs what is missing (Debian packages), builds and installs the extension,
# starts the local m3ter stand-in on 127.0.0.1 and a throwaway PostgreSQL
# cluster in a temporary directory, and removes both on exit.
#
# After m3ter_start:  M3TER_TMP (work dir), PGHOST/PGPORT/PGUSER (exported),
# STANDIN_URL (http://127.0.0.1:port), and the functions below.

set -euo pipefail

M3TER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=test/pg_source.sh
source "$M3TER_ROOT/test/pg_source.sh"
# M3TER_PG_VERSION: the PostgreSQL major to test on.  Debian 12 packages 15; another
# major is built from Debian's source package (test/pg_source.sh).
M3TER_PG_VERSION=${M3TER_PG_VERSION:-15}
M3TER_PG_DEBIAN_MAJOR=15
# M3TER_PG_ROOT: a directory holding a private copy of the PostgreSQL installation
# (usr/lib/postgresql, usr/share/postgresql, usr/include/postgresql), made on first
# use; PostgreSQL finds its files relative to its binaries, so the extension is
# built and installed there and nothing under the system's PostgreSQL directories
# changes, and two checkouts can test side by side.  Default: .pgroot in the checkout
# for Debian's major, .pgroot-<major> for another (a copy of the build kept in
# M3TER_PG_CACHE); set to the empty string for the system's own directories
# (test/package.sh does).
if [ "$M3TER_PG_VERSION" = "$M3TER_PG_DEBIAN_MAJOR" ]; then
    M3TER_PG_ROOT=${M3TER_PG_ROOT-$M3TER_ROOT/.pgroot}
    M3TER_PG_PACKAGES="postgresql-$M3TER_PG_VERSION postgresql-server-dev-$M3TER_PG_VERSION"
    M3TER_PG_CRON_PACKAGES="postgresql-$M3TER_PG_VERSION-cron"
    M3TER_PG_PGTAP_PACKAGES="postgresql-$M3TER_PG_VERSION-pgtap"
else
    # another major is built from source with pgTAP and pg_cron (test/pg_source.sh)
    M3TER_PG_ROOT=${M3TER_PG_ROOT-$M3TER_ROOT/.pgroot-$M3TER_PG_VERSION}
    M3TER_PG_PACKAGES=""
    M3TER_PG_CRON_PACKAGES=""
    M3TER_PG_PGTAP_PACKAGES=""
fi
export M3TER_PG_ROOT M3TER_PG_VERSION
# What the main job needs (test/demo.sh): PostgreSQL and its headers, the build
# tools, libcurl and cJSON, python3 for the stand-in, curl to ask it.  A script
# that needs more adds to it before m3ter_start (test/run.sh: M3TER_TEST_PACKAGES,
# and Patroni, etcd and Prometheus for the tests that start them)
M3TER_PACKAGES="$M3TER_PG_PACKAGES libcurl4-openssl-dev libcjson-dev python3 curl make gcc"
M3TER_TEST_PACKAGES="$M3TER_PG_CRON_PACKAGES $M3TER_PG_PGTAP_PACKAGES \
libtap-parser-sourcehandler-pgtap-perl openssl"
M3TER_ORG_ID=5f3b8c2e-1d4a-4e6b-9c7d-0a1b2c3d4e5f
M3TER_ACCESS_KEY_ID=standin-access-key
M3TER_API_SECRET=standin-api-secret

log() { printf '==> %s\n' "$*" >&2; }

# Install the Debian packages that are not there yet, starting and enabling none
# of the services they ship: the tests start what they need themselves, on loopback
m3ter_install_deps() {
    local missing=() p before
    for p in $M3TER_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} (no service started or enabled)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    before=$(m3ter_installed_packages)
    # a subshell, so that its trap leaves the caller's EXIT trap alone
    (
        # Debian's way to keep maintainer scripts from starting services
        # (invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d; 101:
        # action forbidden); one already there is left as it is
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
            printf '#!/bin/sh\n# m3ter test/lib.sh: no service starts while it installs packages\nexit 101\n' |
                $sudo tee /usr/sbin/policy-rc.d >/dev/null && $sudo chmod 755 /usr/sbin/policy-rc.d || exit 1
        fi
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ) || return 1
    # policy-rc.d does not stop the maintainer scripts from enabling services
    # (deb-systemd-helper, update-rc.d) to start at boot: disable what the
    # packages new to the machine ship
    comm -13 <(echo "$before") <(m3ter_installed_packages) |
        while read -r p; do m3ter_disable_services "$p"; done
}

# The names of the installed packages, sorted
m3ter_installed_packages() {
    dpkg-query -W -f='${db:Status-Status} ${Package}\n' | awk '$1 == "installed" { print $2 }' | sort
}

# Disable the services package $1 ships (systemd units, SysV scripts), and keep
# the PostgreSQL clusters its maintainer scripts created from starting at boot
m3ter_disable_services() {
    local sudo="" f unit
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    dpkg-query -L "$1" 2>/dev/null | while read -r f; do
        case $f in
        /lib/systemd/system/*@.* | /usr/lib/systemd/system/*@.*) ;;  # templates: enabled by instance
        /lib/systemd/system/*.service | /lib/systemd/system/*.socket | /lib/systemd/system/*.timer | \
            /usr/lib/systemd/system/*.service | /usr/lib/systemd/system/*.socket | /usr/lib/systemd/system/*.timer)
            unit=${f##*/}
            if command -v systemctl >/dev/null; then
                $sudo systemctl disable --quiet "$unit" 2>/dev/null || true
            else
                $sudo deb-systemd-helper disable "$unit" 2>/dev/null || true
            fi
            ;;
        /etc/init.d/*)
            command -v systemctl >/dev/null || $sudo update-rc.d "${f##*/}" disable >/dev/null 2>&1 || true
            ;;
        esac
    done
    # postgresql-NN creates the cluster NN/main, started at boot (start.conf "auto")
    case $1 in
    postgresql-[0-9]*)
        for f in /etc/postgresql/"${1#postgresql-}"/*/start.conf; do
            [ -f "$f" ] && $sudo sed -i 's/^[[:space:]]*auto[[:space:]]*$/manual/' "$f"
        done
        ;;
    esac
    return 0
}

m3ter_pg_bindir() { "$(m3ter_pg_config)" --bindir; }
m3ter_pg_config() { echo "$M3TER_PG_ROOT/usr/lib/postgresql/$M3TER_PG_VERSION/bin/pg_config"; }

# Make the private copy of the installation that M3TER_PG_ROOT names, once (for
# a major Debian 12 lacks: build it from Debian's source package)
m3ter_make_pg_root() {
    [ -n "$M3TER_PG_ROOT" ] || return 0
    [ -x "$(m3ter_pg_config)" ] && return 0
    if [ "$M3TER_PG_VERSION" != "$M3TER_PG_DEBIAN_MAJOR" ]; then
        # built once into the cache; each checkout installs into a copy of its own
        m3ter_build_pg_source "$M3TER_PG_VERSION"
        [ "$M3TER_PG_ROOT" -ef "$M3TER_PG_CACHE/$M3TER_PG_VERSION" ] && return
        log "copying PostgreSQL $M3TER_PG_VERSION into $M3TER_PG_ROOT"
        mkdir -p "$M3TER_PG_ROOT"
        cp -a "$M3TER_PG_CACHE/$M3TER_PG_VERSION/usr" "$M3TER_PG_ROOT/"
        return
    fi
    log "copying the PostgreSQL installation into $M3TER_PG_ROOT"
    mkdir -p "$M3TER_PG_ROOT/usr/lib" "$M3TER_PG_ROOT/usr/share" "$M3TER_PG_ROOT/usr/include"
    cp -a /usr/lib/postgresql "$M3TER_PG_ROOT/usr/lib/"
    cp -a /usr/share/postgresql "$M3TER_PG_ROOT/usr/share/"
    cp -a /usr/include/postgresql "$M3TER_PG_ROOT/usr/include/"
}

# Build and install the extension: warnings are errors, and the test hooks are in
# (m3ter.test_fault_uid; builds for users have none)
M3TER_COPT="-Werror -DM3TER_TEST_HOOKS"
m3ter_build() {
    log "building and installing the extension"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    # objects built for another major, or with other flags, are built again
    if [ "$(cat "$M3TER_ROOT/.built-for" 2>/dev/null)" != "$(m3ter_pg_config) $M3TER_COPT" ]; then
        make -C "$M3TER_ROOT" -s PG_CONFIG="$(m3ter_pg_config)" clean >/dev/null
    fi
    make -C "$M3TER_ROOT" -s PG_CONFIG="$(m3ter_pg_config)" COPT="$M3TER_COPT" >/dev/null
    echo "$(m3ter_pg_config) $M3TER_COPT" >"$M3TER_ROOT/.built-for"
    $sudo make -C "$M3TER_ROOT" -s PG_CONFIG="$(m3ter_pg_config)" COPT="$M3TER_COPT" install >/dev/null
}

# Run a command as the cluster's OS user (PostgreSQL refuses to run as root)
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

m3ter_cleanup() {
    set +e
    if [ -n "${M3TER_TMP:-}" ]; then
        for d in "$M3TER_TMP"/*/PG_VERSION; do
            [ -f "$d" ] && as_pg "$(m3ter_pg_bindir)/pg_ctl" -D "$(dirname "$d")" -m immediate stop >/dev/null 2>&1
        done
    fi
    # the stand-in, also when a test restarted it under another pid
    # (SIGTERM makes it save its state file: wait for it to end before removing the directory)
    if [ -n "${M3TER_TMP:-}" ]; then
        pkill -f "m3ter_standin.py --port-file $M3TER_TMP/" 2>/dev/null
        for _ in $(seq 100); do
            pgrep -f "m3ter_standin.py --port-file $M3TER_TMP/" >/dev/null 2>&1 || break
            sleep 0.1
        done
    fi
    [ -n "${M3TER_TMP:-}" ] && [ -z "${M3TER_KEEP:-}" ] && rm -rf "$M3TER_TMP"
}

# Start the stand-in; extra arguments go to it.  M3TER_STANDIN_ARGS lets a test
# restart it (on the port in standin.port) with what it accepted so far.  With
# M3TER_STANDIN_DETACH set it runs in a session of its own and outlives the script.
m3ter_start_standin() {
    M3TER_STANDIN_ARGS="$M3TER_ROOT/test/m3ter_standin.py --port-file $M3TER_TMP/standin.port \
--state-file $M3TER_TMP/standin.state --org-id $M3TER_ORG_ID \
--access-key-id $M3TER_ACCESS_KEY_ID --api-secret $M3TER_API_SECRET"
    export M3TER_STANDIN_ARGS M3TER_ORG_ID M3TER_ACCESS_KEY_ID M3TER_API_SECRET
    local detach=()
    [ -n "${M3TER_STANDIN_DETACH:-}" ] && detach=(setsid nohup)
    # shellcheck disable=SC2086
    "${detach[@]}" python3 $M3TER_STANDIN_ARGS "$@" >"$M3TER_TMP/standin.log" 2>&1 </dev/null &
    STANDIN_PID=$!
    for _ in $(seq 100); do
        [ -s "$M3TER_TMP/standin.port" ] && break
        sleep 0.1
    done
    STANDIN_URL="http://127.0.0.1:$(cat "$M3TER_TMP/standin.port")"
    export STANDIN_URL
    log "m3ter stand-in at $STANDIN_URL"
}

# The credentials lines of postgresql.conf (none when M3TER_NO_CREDENTIALS is set:
# the sandbox leaves setting them to its user)
m3ter_credential_lines() {
    [ -n "${M3TER_NO_CREDENTIALS:-}" ] && return 0
    printf "m3ter.org_id = '%s'\nm3ter.access_key_id = '%s'\nm3ter.api_secret = '%s'\n" \
        "$M3TER_ORG_ID" "$M3TER_ACCESS_KEY_ID" "$M3TER_API_SECRET"
}

# Start a throwaway cluster; $1: extra lines for postgresql.conf, $2: its
# shared_preload_libraries (default m3ter,pg_cron), $3: its name (default data:
# the directory $M3TER_TMP/<name>, the log $M3TER_TMP/postgres.log, or
# $M3TER_TMP/postgres-<name>.log for another name)
m3ter_start_cluster() {
    local bindir extra preload name datadir logfile
    bindir=$(m3ter_pg_bindir)
    extra=${1:-}
    preload=${2-m3ter,pg_cron}
    name=${3:-data}
    datadir="$M3TER_TMP/$name"
    logfile="$M3TER_TMP/postgres.log"
    [ "$name" = data ] || logfile="$M3TER_TMP/postgres-$name.log"
    PGPORT=$(free_port)
    mkdir -p "$datadir"
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$M3TER_TMP"
    as_pg "$bindir/initdb" -D "$datadir" -U postgres -A trust --no-sync >/dev/null
    as_pg tee -a "$datadir/postgresql.conf" >/dev/null <<EOF
port = $PGPORT
listen_addresses = ''
unix_socket_directories = '$M3TER_TMP'
shared_preload_libraries = '$preload'
cron.database_name = 'postgres'
cron.host = '$M3TER_TMP'
max_connections = 60
fsync = off
logging_collector = off
$(m3ter_credential_lines)
m3ter.api_url = '$STANDIN_URL'
m3ter.ingest_url = '$STANDIN_URL'
# the suite sends thousands of requests within minutes to a stand-in that enforces no
# limit unless told to; m3ter's 5-minute budget would otherwise pace later tests
m3ter.max_requests_per_5min = 0
# a worker per database that has the extension, but not in pg_regress's database,
# whose tests look at rows right after inserting them (test/e2e/40_databases.py
# resets this to test every database; the sandbox keeps the default, every database)
$([ -n "${M3TER_EVERY_DATABASE:-}" ] || echo "m3ter.database = 'postgres'")
max_worker_processes = 16
$extra
EOF
    # a postmaster setting, known only when the library is preloaded
    if [[ ",$preload," == *",m3ter,"* ]] && [ -z "${M3TER_EVERY_DATABASE:-}" ]; then
        echo "m3ter.database = 'postgres'" | as_pg tee -a "$datadir/postgresql.conf" >/dev/null
    fi
    if [ -n "${M3TER_VALGRIND:-}" ]; then
        # every server process under memcheck, one log per process in $M3TER_TMP/valgrind.*
        log "starting the server under valgrind"
        as_pg valgrind --quiet --trace-children=yes --leak-check=no --num-callers=20 \
            --log-file="$M3TER_TMP/valgrind.%p" "$bindir/postgres" -D "$datadir" \
            >"$logfile" 2>&1 &
        for _ in $(seq 120); do
            "$bindir/pg_isready" -q -h "$M3TER_TMP" -p "$PGPORT" && break
            sleep 0.5
        done
    else
        as_pg "$bindir/pg_ctl" -D "$datadir" -l "$logfile" -w start >/dev/null
    fi
    export PGHOST="$M3TER_TMP" PGPORT PGUSER=postgres PGDATABASE=postgres
    log "PostgreSQL $M3TER_PG_VERSION on socket $PGHOST port $PGPORT"
}

# Everything up to a running cluster and stand-in; $1: extra postgresql.conf lines,
# $2: its shared_preload_libraries (default m3ter,pg_cron)
m3ter_start() {
    m3ter_install_deps
    m3ter_make_pg_root
    m3ter_build
    M3TER_TMP=$(mktemp -d /tmp/m3ter.XXXXXX)
    chmod 755 "$M3TER_TMP"
    export M3TER_TMP
    trap m3ter_cleanup EXIT
    m3ter_start_standin
    m3ter_start_cluster "${1:-}" ${2+"$2"}
}

# psql on the throwaway cluster, stopping at the first error
q() { "$(m3ter_pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

# Call the stand-in's control API: standin METHOD PATH [JSON]
standin() {
    if [ $# -ge 3 ]; then
        curl -fsS -X "$1" -H 'Content-Type: application/json' -d "$3" "$STANDIN_URL$2"
    else
        curl -fsS -X "$1" "$STANDIN_URL$2"
    fi
}
