#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker (0.6.0) under ~/.cargo/bin, once.
# The end-to-end suite and `scripts/run-hub.sh` start it as a real broker process.
# --locked: without it a dependency drift breaks the build.
# The storage features: without one the broker refuses to start.
set -euo pipefail
want="0.6.0"
bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$want"; then
  exit 0
fi
echo "installing tansu $want (first run only, about 15 minutes on 2 cores)..." >&2
cargo install tansu --version "$want" --locked --features dynostore,libsql,postgres -j "${CARGO_BUILD_JOBS:-2}"
