#!/usr/bin/env bash
# The SQL-level suites with every server process under valgrind memcheck; any
# report raised in (or directly under) the extension's code fails the run.
# AddressSanitizer cannot be used here: with its runtime preloaded, this
# PostgreSQL build deadlocks in glibc's gettext lock at postmaster start.
# The suites that restart the server (reliability) would leave valgrind, so
# the default is: test/valgrind.sh regress pgtap e2e
export M3TER_VALGRIND=1
exec "$(dirname "$0")/run.sh" "${@:-regress pgtap e2e}"
