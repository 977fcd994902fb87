#!/usr/bin/env bash
# The whole suite with every server process under valgrind memcheck; any report
# raised in (or just under) the extension's code fails the run.  The reliability
# scenarios run at smaller sizes (valgrind slows the server down many times).
# AddressSanitizer cannot be used here: with its runtime preloaded, this
# PostgreSQL build deadlocks in glibc's gettext lock at postmaster start.
# Arguments are suite names, as for test/run.sh.
export M3TER_VALGRIND=1
export RELIABILITY_ROWS=${RELIABILITY_ROWS:-300}
export RELIABILITY_CRASH_ROWS=${RELIABILITY_CRASH_ROWS:-20000}
export RELIABILITY_KILLS=${RELIABILITY_KILLS:-5}
export RELIABILITY_LOAD_SECONDS=${RELIABILITY_LOAD_SECONDS:-30}
export RELIABILITY_LOAD_RATE=${RELIABILITY_LOAD_RATE:-100}
exec "$(dirname "$0")/run.sh" "$@"
