#!/usr/bin/env bash
# Starts the whole hub on this machine with embedded defaults: a local tansu broker,
# SQLite under ./data, the reference world (every department, schema, key and connector)
# with a generated population, ingest and the HTTP API; prints a walkthrough. Ctrl-C stops it; running it
# again keeps everything stored.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-tansu.sh
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p datarun-cli
exec ./target/release/datarun up "$@"
