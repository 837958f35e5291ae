#!/usr/bin/env bash
# The benchmark: orapush against the node.js baselines, in one run.
# Builds orapush in release mode, copies shared/baselines/* to a temporary
# folder (shared/ is read-only) and npm-installs them there, then runs
# benches/bridge.rs. Extra arguments go to the bench (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
# The Oracle figures need Docker, not the node.js baselines:
# `scripts/bench.sh --oracle` runs tests/compose/bench.sh (the compose
# database and orapush, and the bench in the contract-tests image).
# (Its knobs are environment variables, listed at its head.)
if [ "${1:-}" = "--oracle" ]; then
  exec tests/compose/bench.sh
fi
shared="${ORAPUSH_SHARED:-../shared}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for baseline in seed-node node-ws; do
  cp -r "$shared/baselines/$baseline" "$work/$baseline"
  chmod -R u+w "$work/$baseline"
  (cd "$work/$baseline" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
done
# `--quick` (the CI run: small sizes, no thresholds) only checks that the
# bench still works, so it uses the debug builds the tests already made
# instead of compiling everything again in release mode.
if [[ " $* " == *" --quick "* ]]; then
  cargo build --locked --bin orapush
  cargo test --locked --bench bridge -- \
    --orapush target/debug/orapush --seed "$work/seed-node" --node-ws "$work/node-ws" "$@"
  exit
fi
cargo build --release --locked --bin orapush
cargo bench --locked --bench bridge -- \
  --orapush target/release/orapush --seed "$work/seed-node" --node-ws "$work/node-ws" "$@"
