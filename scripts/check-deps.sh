#!/usr/bin/env bash
# Enforces docs/ARCHITECTURE.md's invariants on the dependency graph:
# one crate per outside system, and a domain crate with no I/O dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
owner() { # external crate, the only workspace crate allowed to depend on it directly
  local users
  users=$(grep -l -E "^$1(\.workspace)? *=|^$1 *= *\{" crates/*/Cargo.toml | xargs -n1 dirname | xargs -n1 basename | sort | tr '\n' ' ')
  if [ "$users" != "$2 " ]; then
    echo "dependency rule broken: only $2 may depend on $1, found: $users" >&2
    fail=1
  fi
}
owner rdkafka datarun-kafka
owner sqlx datarun-store
owner axum datarun-api
owner apache-avro datarun-schema
domain_tree=$(cargo tree -p datarun-domain -e normal --prefix none --offline 2>/dev/null || cargo tree -p datarun-domain -e normal --prefix none)
for forbidden in tokio rdkafka sqlx axum apache-avro hyper; do
  if printf '%s\n' "$domain_tree" | grep -qE "^$forbidden v"; then
    echo "dependency rule broken: datarun-domain depends on $forbidden" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "dependency rules hold"
exit "$fail"
