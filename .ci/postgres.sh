#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for the distributed-tuning test and print
# its SQLAlchemy URL. Installs Debian's postgresql package when no server binaries are found.
# Usage: export STEERL_TEST_POSTGRES_URL=$(bash .ci/postgres.sh)
set -euo pipefail
PORT="${STEERL_PG_PORT:-55432}"
DATA="${STEERL_PG_DATA:-/tmp/steerl-pg}"
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(bindir)" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
    >/tmp/steerl-ci-pg-apt.log 2>&1 || { echo "postgresql install failed" >&2; exit 1; }
fi
BIN="$(bindir)"
# the server refuses to run as root: run it as the package's postgres user when we are root
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then useradd -r postgres; fi
if [ -f "$DATA/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DATA" stop -m fast >/dev/null 2>&1 || true; fi
rm -rf "$DATA"; mkdir -p "$DATA"
[ "$(id -u)" = 0 ] && chown postgres "$DATA"
as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust >/tmp/steerl-pg-init.log 2>&1
as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" start >/dev/null
as_pg "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres steerl_test
echo "postgresql+psycopg2://postgres@127.0.0.1:$PORT/steerl_test"
