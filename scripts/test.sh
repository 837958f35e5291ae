#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then runs
# every Rust unit and integration test (real sockets, SQLite files, headless
# Chromium) and the browser client's unit tests (node's test runner).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --locked "$@"
node --test tests/js/
