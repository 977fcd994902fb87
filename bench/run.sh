#!/usr/bin/env bash
# The benchmark suite, from nothing: installs what is missing, builds, starts a
# throwaway cluster and the m3ter stand-in (in its fast mode), runs every case
# of bench/bench.py in one run and prints the table and a JSON summary.
# Sizes are environment variables, see bench/bench.py.
source "$(dirname "$0")/../test/lib.sh"
M3TER_PACKAGES="$M3TER_PACKAGES python3-psycopg2"
m3ter_start "shared_buffers = 512MB
max_wal_size = 4GB
checkpoint_timeout = 30min"
export M3TER_ORG_ID M3TER_ACCESS_KEY_ID M3TER_API_SECRET
q -c "CREATE EXTENSION m3ter"
python3 "$M3TER_ROOT/bench/bench.py"
