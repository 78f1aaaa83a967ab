#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end suite on SQLite and PostgreSQL,
# against librdkafka's mock cluster and a real tansu broker process.
# Installs what the tests need on first run (tansu under ~/.cargo, Python clients).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tansu.sh
bash scripts/ensure-python.sh
bash scripts/ensure-postgres.sh
bash scripts/clean-test-leftovers.sh

bash scripts/check-deps.sh

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo test --workspace --locked "$@"
