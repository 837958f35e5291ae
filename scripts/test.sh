#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then runs
# every Rust unit and integration test (real sockets, SQLite files, headless
# Chromium), the browser client's unit tests (node's test runner), and the
# benchmark at small sizes (`scripts/bench.sh --quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --locked "$@"
node --test tests/js/
# The benchmark at small sizes, with no thresholds: a change that breaks it
# fails here (the figures come from a full `scripts/bench.sh` run).
scripts/bench.sh --quick --redis redis://127.0.0.1:6379/0
