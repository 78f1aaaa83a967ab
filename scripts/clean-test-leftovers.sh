#!/usr/bin/env bash
# Drops what earlier test and benchmark runs left behind: PostgreSQL databases and temp
# folders named datarun_[<word>_…]<unix seconds or milliseconds>_… (datarun_bench_…,
# datarun_upgrade_…), older than an hour.
set -uo pipefail
cutoff=$(( $(date +%s) - 3600 ))
admin="${DATARUN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if command -v psql >/dev/null; then
  psql "$admin" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'datarun\_%'" 2>/dev/null |
    while read -r name; do
      seconds=$(printf '%s' "$name" | sed -E 's/^datarun_([a-z]+_)*([0-9]+)_.*/\2/')
      # A name without a time is not ours to drop.
      [[ "$seconds" =~ ^[0-9]+$ ]] || continue
      # Benchmark names carry milliseconds.
      [ "${#seconds}" -gt 11 ] && seconds=$(( seconds / 1000 ))
      if [ "$seconds" -lt "$cutoff" ]; then
        psql "$admin" -qc "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
      fi
    done
fi
# Hub and broker processes of a test run that was killed before it could stop them
# (their working or data directory is a test folder): none may outlive its run.
pkill -f 'target/debug/datarun-under-test' 2>/dev/null
for pid in $(pgrep -f 'tansu broker' 2>/dev/null); do
  case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in
    "${TMPDIR:-/tmp}"/datarun_*) kill -9 "$pid" 2>/dev/null ;;
  esac
done
# The fault suite's private PostgreSQL servers (datarun_pg_…), if a killed run left one up.
for data in "${TMPDIR:-/tmp}"/datarun_pg_*/data; do
  if [ -f "$data/postmaster.pid" ] && [ -n "$(find "$data/.." -maxdepth 0 -mmin +60)" ]; then
    bindir=$(pg_config --bindir 2>/dev/null) || continue
    if [ "$(id -u)" = 0 ]; then
      runuser -u postgres -- "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    else
      "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    fi
  fi
done
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'datarun_*' -mmin +60 -exec rm -rf {} + 2>/dev/null
exit 0
