#!/usr/bin/env bash
# The whole test suite with the extension built under AddressSanitizer (the
# server preloads the sanitizer's runtime); any report fails the run.
# Arguments are passed to test/run.sh.
export M3TER_ASAN=1
exec "$(dirname "$0")/run.sh" "$@"
