#!/usr/bin/env bash
# Fuzzes the WebSocket client-frame parser for a bounded time with
# proptest (cargo-fuzz needs a nightly toolchain; this runs on stable).
#   scripts/fuzz.sh            # 200,000 cases per property, at most 10 minutes
#   CASES=1000000 SECONDS_MAX=1800 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${CASES:-200000}"
limit="${SECONDS_MAX:-600}"
PROPTEST_CASES="$cases" timeout "$limit" cargo test --release --locked --test protocol_props
