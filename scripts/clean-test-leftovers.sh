#!/usr/bin/env bash
# Drops what earlier test and benchmark runs left behind: PostgreSQL databases and temp
# folders named datarun_<unix seconds>_… or datarun_bench_…, older than an hour.
set -uo pipefail
cutoff=$(( $(date +%s) - 3600 ))
admin="${DATARUN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if command -v psql >/dev/null; then
  psql "$admin" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'datarun\_%'" 2>/dev/null |
    while read -r name; do
      seconds=$(printf '%s' "$name" | sed -E 's/^datarun_(bench_)?([0-9]+)_.*/\2/')
      # Benchmark names carry milliseconds.
      [ "${#seconds}" -gt 11 ] && seconds=$(( seconds / 1000 ))
      if [[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -lt "$cutoff" ]; then
        psql "$admin" -qc "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
      fi
    done
fi
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'datarun_*' -mmin +60 -exec rm -rf {} + 2>/dev/null
exit 0
