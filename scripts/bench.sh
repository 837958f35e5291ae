#!/usr/bin/env bash
# The benchmark: orapush against the node.js baselines, in one run.
# Builds orapush in release mode, copies shared/baselines/* to a temporary
# folder (shared/ is read-only) and npm-installs them there, then runs
# benches/bridge.rs. Extra arguments go to the bench (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${ORAPUSH_SHARED:-../shared}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for baseline in seed-node node-ws; do
  cp -r "$shared/baselines/$baseline" "$work/$baseline"
  chmod -R u+w "$work/$baseline"
  (cd "$work/$baseline" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
done
cargo build --release --locked --bin orapush
cargo bench --locked --bench bridge -- \
  --orapush target/release/orapush --seed "$work/seed-node" --node-ws "$work/node-ws" "$@"
